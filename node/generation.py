"""What the front ends (HTTP API, CLI `ask`, SDK) ask of the swarm, as plain records.

A ``Generator`` turns a ``GenerationRequest`` into a stream of ``GenerationChunk``s and a final
``GenerationSummary``. Its implementations are in ``node/client/``: ``PipelineGenerator``,
``ConsensusGenerator`` and ``EncryptedGenerator``, chosen per request by ``AsyncClient``
(``node/client/engine.py``), which is a ``Generator`` itself; tests use fakes. Front ends never see
libp2p or torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, AsyncContextManager, AsyncIterator, Protocol

from swarmlm.errors import SwarmError
from swarmlm.models.sampling import SamplingParams

MODES = ("pipeline", "consensus")


@dataclass
class GenerationRequest:
    model: str
    prompt: str | None = None  # plain completion; or
    messages: list[dict[str, str]] | None = None  # chat: [{"role": ..., "content": ...}]
    params: SamplingParams = field(default_factory=SamplingParams)
    mode: str = "pipeline"
    consensus_k: int = 3
    check_fraction: float | None = None  # pipeline verification: None = the client's default, 0 = off


@dataclass
class GenerationChunk:
    text: str
    token_ids: list[int] = field(default_factory=list)


@dataclass
class HopTiming:
    peer_id: str
    start: int
    end: int
    ms: float


@dataclass
class GenerationSummary:
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "length"  # "stop" | "length"
    text: str = ""
    route: list[HopTiming] = field(default_factory=list)
    ttft_ms: float = 0.0
    tokens_per_s: float = 0.0
    failovers: int = 0
    # pipeline verification (docs/RELIABILITY.md): tokens every hop's check confirmed, tokens checked
    # while no replica could answer, and verification rounds; the rest of the tokens were not checked
    verified_tokens: int = 0
    unverifiable_steps: int = 0
    checks: int = 0
    # consensus mode
    round_id: str | None = None
    scores: list[dict[str, Any]] | None = None
    # speculative decoding: {"passes", "proposed", "accepted", "acceptance", "tokens_per_pass"}
    speculative: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ModelCard:
    id: str
    num_layers: int
    coverage: float  # share of layers served by at least one live peer
    peers: int


class Generation(Protocol):
    """A running generation: iterate chunks, then read ``summary``."""

    summary: GenerationSummary

    def __aiter__(self) -> AsyncIterator[GenerationChunk]: ...


class Generator(Protocol):
    """The one generation interface."""

    async def list_models(self) -> list[ModelCard]: ...

    def generate(self, request: GenerationRequest) -> AsyncContextManager[Generation]:
        """An async context manager yielding a ``Generation``; raises a SwarmError subclass
        (``GenerationError``, ``NoRouteError``, ``BusyError``, ``UnknownModel``) with a clear message."""
        ...


class GenerationError(SwarmError):
    """Base for failures a front end maps to an HTTP status (``status``) and an OpenAI error type."""

    status = 500
    type = "server_error"


class BadRequest(GenerationError):
    status = 400
    type = "invalid_request_error"


class UnknownModel(GenerationError):
    status = 404
    type = "invalid_request_error"


class NoRouteError(GenerationError):
    status = 503
    type = "service_unavailable"


class BusyError(GenerationError):
    status = 429
    type = "rate_limit_error"
