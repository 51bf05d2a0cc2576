"""The front ends' ``Generator``: ``mode="pipeline"`` goes to the ``SwarmClient``, ``mode="consensus"``
to a consensus coordinator (this node's own ``ConsensusService`` when it has one, else a node of
the swarm hosting the whole model, over ``/swarmlm/consensus/1`` ``ask``).

``Generator(pipeline, consensus)`` is what ``node.generator`` (HTTP API), the SDK and `swarmlm ask`
use. A consensus generation yields the winning answer as one chunk; its summary carries
``round_id`` and ``scores`` (one row per candidate: node, sampling, strength, winner, answer).
"""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from swarmlm.node.generation import (BadRequest, GenerationChunk, GenerationError, GenerationRequest,
                                     GenerationSummary, NoRouteError, UnknownModel)

log = logging.getLogger("swarmlm.generator")

ASK_TIMEOUT_S = 590.0


class ConsensusGeneration:
    """A finished consensus round as a ``Generation``: one chunk, then ``summary``."""

    def __init__(self, model: str, result: dict[str, Any]) -> None:
        self.result = result
        self.summary = GenerationSummary(
            model=model, prompt_tokens=int(result.get("prompt_tokens") or 0),
            completion_tokens=int(result.get("completion_tokens") or 0),
            finish_reason=str(result.get("finish_reason") or "stop"), text=str(result.get("text") or ""),
            round_id=result.get("round_id"), scores=list(result.get("scores") or []))
        self._done = False

    def __aiter__(self) -> "ConsensusGeneration":
        return self

    async def __anext__(self) -> GenerationChunk:
        if self._done or not self.summary.text:
            raise StopAsyncIteration
        self._done = True
        return GenerationChunk(self.summary.text)


class ConsensusClient:
    """Runs consensus rounds: on ``local`` (a ConsensusService) or through a coordinator peer."""

    def __init__(self, host: Any, state: Any, local: Any = None) -> None:
        self.host = host
        self.state_service = state
        self.local = local

    def coordinators(self, model: str) -> list[str]:
        from swarmlm.node.consensus_service import eligible_hosts

        return eligible_hosts(self.state_service.state, model, time.time())

    async def ask(self, request: GenerationRequest) -> dict[str, Any]:
        from swarmlm.consensus.records import ConsensusError
        from swarmlm.node.consensus_backend import task_text
        from swarmlm.node.consensus_service import MAX_K, PROTOCOL, ConsensusUnavailable
        from swarmlm.net.rpc import BAD_REQUEST, RpcError

        p = request.params
        p.validate()
        if request.consensus_k < 2:
            raise BadRequest(f"consensus k must be at least 2, got {request.consensus_k}")
        k = min(request.consensus_k, MAX_K)  # "up to k" nodes answer; a round record holds at most MAX_K
        if request.messages is None and not request.prompt:
            raise BadRequest("give a prompt or messages")
        if request.model not in self.state_service.state.models(time.time()):
            raise UnknownModel(f"no peer serves model {request.model!r}")
        try:
            if self.local is not None:
                text = task_text(request.model, request.prompt, request.messages, max(1, p.max_new_tokens), p.stop)
                return await self.local.run_round(text, k)
            # a node we are connected to first (a light client's bootstrap node), then the others
            peers = sorted(self.coordinators(request.model), key=lambda p: (not self.host.is_connected(p), p))
            if not peers:
                raise NoRouteError(f"no node hosts all of {request.model!r}: a consensus round needs such nodes")
            args = {"model": request.model, "prompt": request.prompt, "messages": request.messages,
                    "max_new_tokens": max(1, p.max_new_tokens), "stop": list(p.stop), "k": k}
            last: Exception | None = None
            for peer in peers[:3]:
                try:
                    await _ensure_connected(self.host, self.state_service.state, peer)
                    return await self.host.rpc.call(peer, PROTOCOL, "ask", args, timeout=ASK_TIMEOUT_S)
                except RpcError as exc:
                    if exc.code == BAD_REQUEST:
                        raise
                    last = exc
            raise NoRouteError(f"no coordinator could run the round: {last}")
        except ConsensusUnavailable as exc:
            raise NoRouteError(str(exc)) from None
        except RpcError as exc:
            raise (BadRequest if exc.code == BAD_REQUEST else GenerationError)(exc.message) from None
        except ConsensusError as exc:
            raise BadRequest(str(exc)) from None

    @asynccontextmanager
    async def generate(self, request: GenerationRequest) -> AsyncIterator[ConsensusGeneration]:
        result = await self.ask(request)
        yield ConsensusGeneration(request.model, result)


async def _ensure_connected(host: Any, state: Any, peer: str) -> None:
    if peer == host.peer_id or host.is_connected(peer):
        return
    entry = state.peer(peer)
    for addr in (entry.addrs if entry else ()):
        try:
            await host.connect(addr if "/p2p/" in addr else f"{addr}/p2p/{peer}")
            return
        except Exception as exc:
            log.debug("dial %s via %s failed: %s", peer[-6:], addr, exc)


class Generator:
    """Dispatches on ``request.mode``; everything else (``list_models``, ``plan``...) is the pipeline's."""

    def __init__(self, pipeline: Any, consensus: ConsensusClient) -> None:
        self.pipeline = pipeline
        self.consensus = consensus

    async def list_models(self) -> Any:
        return await self.pipeline.list_models()

    def generate(self, request: GenerationRequest) -> Any:
        if request.mode == "consensus":
            return self.consensus.generate(request)
        if request.mode != "pipeline":
            raise BadRequest(f"unknown mode {request.mode!r} (pipeline or consensus)")
        return self.pipeline.generate(request)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pipeline, name)


class NodeGenerator(Generator):
    """``node.generator``: the pipeline client is the one the HTTP service creates (made lazily)."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self._pipeline: Any = None
        self.consensus = ConsensusClient(node.host, _StateRef(node), node.service("consensus"))

    @property
    def pipeline(self) -> Any:  # type: ignore[override]
        if self._pipeline is None:
            client = getattr(self.node, "client", None)
            if client is None:
                from swarmlm.node.client import SwarmClient

                client = SwarmClient(self.node.host, self.node.state)
            self._pipeline = client
        return self._pipeline


class _StateRef:
    """``node.state`` read when used (the generator is built before the services run)."""

    def __init__(self, node: Any) -> None:
        self.node = node

    @property
    def state(self) -> Any:
        return self.node.state.state

