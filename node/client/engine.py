"""``AsyncClient``: the one async client of the swarm, and the one place a request's way is chosen.

Every front end runs its generations through an ``AsyncClient``: the node's HTTP API, the SDK
(``swarmlm.Client`` wraps one on a background trio thread) and therefore `swarmlm ask`. It holds one
implementation of the ``Generator`` protocol (``node/generation.py``) per way to answer and picks
one per request (``generator_for``):

- ``mode="pipeline"``: ``PipelineGenerator`` (``node/client/pipeline.py``), or with an EE key the
  ``EncryptedGenerator`` around it (``node/client/encrypted.py``);
- ``mode="consensus"``: ``ConsensusGenerator`` (``node/client/consensus.py``) -- refused with an EE
  key, since the answering and judging nodes read the prompt as text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from swarmlm.node.client.consensus import ConsensusGenerator
from swarmlm.node.client.encrypted import EncryptedGenerator
from swarmlm.node.client.options import ClientOptions
from swarmlm.node.client.pipeline import PipelineGenerator
from swarmlm.node.generation import MODES, BadRequest, Generator, GenerationRequest, ModelCard, UnknownModel
from swarmlm.node.wire import EE_PREFIX


class AsyncClient:
    """Generations through the swarm for a running ``SwarmHost`` and its swarm state (``StateService``).

    ``ee_key``: a key file; pipeline prompts for base models are then encrypted (docs/EE.md).
    ``local_consensus``: this node's ``ConsensusService``, which then coordinates rounds itself."""

    def __init__(self, host: Any, state: Any, options: ClientOptions | None = None, *,
                 ee_key: str | Path | None = None, local_consensus: Any = None) -> None:
        self.pipeline = PipelineGenerator(host, state, options)
        self.consensus = ConsensusGenerator(host, state, local_consensus)
        self.encrypted = EncryptedGenerator(self.pipeline, ee_key) if ee_key else None

    @property
    def options(self) -> ClientOptions:
        return self.pipeline.options

    @property
    def recent_routes(self) -> list[dict[str, Any]]:
        """The latest pipeline routes with per-hop timings (newest last): the health page and metrics."""
        return self.pipeline.recent_routes

    def generator_for(self, request: GenerationRequest) -> Generator:
        if request.mode not in MODES:
            raise BadRequest(f"unknown mode {request.mode!r} (pipeline or consensus)")
        if request.model.startswith(EE_PREFIX) and self.encrypted is None:
            raise BadRequest(f"{request.model} is an encrypted variant: only a client holding its key can ask it "
                             "(--ee-key KEYFILE, or Client(ee_key=...)), with the base model as --model")
        if request.mode == "consensus":
            if self.encrypted is not None:
                raise BadRequest("consensus mode cannot keep a prompt private (the answering and judging nodes "
                                 "read it as text): ask in pipeline mode, or without the EE key")
            return self.consensus
        return self.encrypted or self.pipeline

    async def list_models(self) -> list[ModelCard]:
        return await (self.encrypted or self.pipeline).list_models()

    async def default_model(self) -> str:
        """The model a request without one goes to: the first the swarm serves fully (with an EE key:
        the base model of a fully served variant the key file records)."""
        cards = await self.list_models()
        if self.encrypted is not None:
            return self.encrypted.default_base(cards)
        plain = [c.id for c in cards if c.coverage >= 1.0 and not c.id.startswith(EE_PREFIX)]
        if not plain:
            raise UnknownModel("no model is fully served by the swarm yet" + (
                " (only encrypted variants, which need --ee-key)" if any(c.id.startswith(EE_PREFIX) for c in cards)
                else ""))
        return plain[0]

    def generate(self, request: GenerationRequest) -> Any:
        """An async context manager yielding a ``Generation`` (see ``node/generation.py``)."""
        return self.generator_for(request).generate(request)

    def plan(self, model: str, need_tokens: int) -> Any:
        """The route a pipeline generation of ``model`` would take now."""
        return (self.encrypted or self.pipeline).plan(model, need_tokens)
