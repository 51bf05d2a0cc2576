"""Consensus generations: the ``Generator`` for ``mode="consensus"``.

A round is run by a coordinator: this node's own ``ConsensusService`` when it has one (``local``),
else a node of the swarm hosting the whole model, over ``/swarmlm/consensus/1`` ``ask``. A consensus
generation yields the winning answer as one chunk; its summary carries ``round_id`` and ``scores``
(one row per candidate: node, sampling, strength, winner, answer).
"""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from swarmlm.consensus.records import ConsensusError, ConsensusUnavailable
from swarmlm.net.rpc import BAD_REQUEST, RpcError
from swarmlm.node.dial import ensure_connected
from swarmlm.node.directory import eligible_hosts
from swarmlm.node.generation import (BadRequest, GenerationChunk, GenerationError, GenerationRequest,
                                     GenerationSummary, ModelCard, NoRouteError, UnknownModel)
from swarmlm.node.wire import CONSENSUS_PROTOCOL, MAX_K, WireError, task_text

log = logging.getLogger("swarmlm.consensus")

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


class ConsensusGenerator:
    """Runs consensus rounds: on ``local`` (a ConsensusService) or through a coordinator peer."""

    def __init__(self, host: Any, state: Any, local: Any = None) -> None:
        self.host = host
        self.state_service = state
        self.local = local

    async def list_models(self) -> list[ModelCard]:
        """The models a round can run on: those some node hosts whole."""
        now, st = time.time(), self.state_service.state
        return [ModelCard(m, info.layers, 1.0, len(eligible_hosts(st, m, now)))
                for m, info in sorted(st.models(now).items()) if eligible_hosts(st, m, now)]

    def coordinators(self, model: str) -> list[str]:
        return eligible_hosts(self.state_service.state, model, time.time())

    async def ask(self, request: GenerationRequest) -> dict[str, Any]:
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
                    await ensure_connected(self.host, self.state_service.state, peer)
                    return await self.host.rpc.call(peer, CONSENSUS_PROTOCOL, "ask", args, timeout=ASK_TIMEOUT_S)
                except RpcError as exc:
                    if exc.code == BAD_REQUEST:
                        raise
                    last = exc
            raise NoRouteError(f"no coordinator could run the round: {last}")
        except ConsensusUnavailable as exc:
            raise NoRouteError(str(exc)) from None
        except RpcError as exc:
            raise (BadRequest if exc.code == BAD_REQUEST else GenerationError)(exc.message) from None
        except (ConsensusError, WireError) as exc:
            raise BadRequest(str(exc)) from None

    @asynccontextmanager
    async def generate(self, request: GenerationRequest) -> AsyncIterator[ConsensusGeneration]:
        result = await self.ask(request)
        yield ConsensusGeneration(request.model, result)
