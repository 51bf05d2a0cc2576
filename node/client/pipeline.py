"""Pipeline generations through the swarm: the client's view of the servers, routes and tokenizers.

``PipelineGenerator`` is the ``Generator`` for ``mode="pipeline"``: it lists the models the swarm
serves, plans routes over the servers the swarm state lists (``node/client/routing.py``), counting
on each server at least the sessions this client itself has open there (the swarm state lags a
heartbeat behind, and concurrent requests through one gateway must spread over replicas), avoids
peers it banned, that verdicts weighted by standing convict (``node/trust.py``) or that this process
could not reach (``node/dial.py``), keeps the standing its own checks earned servers
(``node/client/standing.py``), fetches a model's tokenizer files from a server when the model is not
local, starts a ``PipelineGeneration`` (``node/client/pipeline_generation.py``: the token loop,
failover and verification) for each request, and witnesses the work of the servers that completed
one (``node/client/witness.py``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import random
import time
from collections import Counter
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

import trio

from swarmlm.models.registry import BUILTINS, cache_dir, resolve
from swarmlm.models.tokenizer import Tokenizer
from swarmlm.node.client.failover import Bans
from swarmlm.node.client.options import ClientOptions
from swarmlm.node.client.pipeline_generation import PipelineGeneration
from swarmlm.node.client.reference_pool import ReferencePool
from swarmlm.node.client.routing import Route, plan_route
from swarmlm.node.client.session import single_leaf
from swarmlm.node.client.standing import CombinedStanding, LocalStanding
from swarmlm.node.client.witness import WitnessLog
from swarmlm.node.dial import DOWN, ensure_connected, recheck
from swarmlm.node.directory import ServerView, coverage_gaps, servers_for
from swarmlm.node.generation import BadRequest, GenerationRequest, ModelCard, NoRouteError, UnknownModel
from swarmlm.node.trust import TrustView
from swarmlm.node.wire import SHARD_PROTOCOL, TOKENIZER_FILES

log = logging.getLogger("swarmlm.client")

MAX_PROMPT_TOKENS = 32768


class PipelineGenerator:
    """Plans routes from the swarm state and runs pipeline generations on a running ``SwarmHost``;
    ``state`` is its ``StateService`` (read-only use)."""

    def __init__(self, host: Any, state: Any, options: ClientOptions | None = None) -> None:
        self.host = host
        self.state_service = state
        self.options = options or ClientOptions()
        self.bans = Bans(self.options.ban_s)
        self.tokenizers: dict[str, Any] = {}
        self.recent_routes: list[dict[str, Any]] = []
        self.verify_stats: dict[str, Any] = {}
        self.standing = CombinedStanding(LocalStanding(threshold=self.options.standing_steps))
        self.rng = random.Random()
        self.open_sessions: Counter[str] = Counter()  # per peer: sessions of our generations on it now
        self.trust = TrustView.of(host, state)
        self.witness = WitnessLog(self.options.witness_s)
        self.references = ReferencePool()  # idle reference sessions, reused by later checks

    # -- swarm view -------------------------------------------------------------------------------
    @property
    def state(self) -> Any:
        return self.state_service.state

    async def list_models(self) -> list[ModelCard]:
        cards = []
        for model_id, info in sorted(self.state.models(time.time()).items()):
            servers = self.servers(model_id)
            if not servers:
                continue
            gaps = coverage_gaps(servers, info.layers)
            cards.append(ModelCard(model_id, info.layers, 1.0 - len(gaps) / max(1, info.layers),
                                   len({s.peer_id for s in servers})))
        return cards

    def servers(self, model: str) -> list[ServerView]:
        """Servers of ``model`` to plan over: not convicted, not found down by this process, and hosting
        ranges that fit the model's layer count (a peer claiming layers the model lacks is not routed to)."""
        bad = self.convicted() | DOWN.down_in(self.state)
        now = time.time()
        info = self.state.models(now).get(model)
        limit = info.layers if info is not None else None
        return [dataclasses.replace(s, sessions=max(s.sessions, self.open_sessions[s.peer_id]))
                for s in servers_for(self.state, model, now, self.host.peers)
                if s.peer_id not in bad and (limit is None or s.end <= limit)]

    def hold(self, gen: Any, route: Route | None) -> None:
        """``gen`` runs on ``route`` from now on (None: it ended): keeps ``open_sessions`` counted."""
        for peer in getattr(gen, "held", ()):
            self.open_sessions[peer] -= 1
            if self.open_sessions[peer] <= 0:
                del self.open_sessions[peer]
        gen.held = [] if route is None else [h.peer_id for h in route.hops]
        for peer in gen.held:
            self.open_sessions[peer] += 1

    def convicted(self) -> set[str]:
        """Peers that recent "fail" verdicts convict, each author weighted by its standing (one
        author without standing changes nothing; see ``consensus/verdicts.py``): routing avoids them.
        ``options.verdict_ban_s`` <= 0 turns swarm-wide avoidance off."""
        if self.options.verdict_ban_s <= 0:
            return set()
        return self.trust.convicted()

    def n_layers(self, model: str) -> int:
        info = self.state.models(time.time()).get(model)
        if info is None:
            known = sorted(self.state.models(time.time()))
            raise UnknownModel(f"no peer serves model {model!r}" + (f"; the swarm serves: {', '.join(known)}"
                                                                     if known else "; the swarm serves no models yet"))
        return info.layers

    def plan(self, model: str, need_tokens: int, prefer: tuple[str, ...] = ()) -> Route:
        return plan_route(self.servers(model), self.n_layers(model), need_cache_tokens=need_tokens,
                          banned=self.bans.active(), mode=self.options.route_mode, rng=self.rng,
                          prefer=prefer or self.options.prefer)

    async def ensure_connected(self, peer: str) -> bool:
        return await ensure_connected(self.host, self.state, peer)

    async def recheck(self, peer: str) -> None:
        """``peer`` failed mid-session: if it vanished, find out and tell every client here (``DOWN``)."""
        await recheck(self.host, self.state, peer)

    # -- tokenizer ----------------------------------------------------------------------------------
    async def tokenizer(self, model: str) -> Any:
        if model in self.tokenizers:
            return self.tokenizers[model]
        model_dir = await self._tokenizer_dir(model)
        tok = await trio.to_thread.run_sync(Tokenizer.from_dir, model_dir)
        self.tokenizers[model] = tok
        return tok

    async def _tokenizer_dir(self, model: str) -> Path:
        if model in BUILTINS or Path(model).expanduser().is_dir():
            return await trio.to_thread.run_sync(resolve, model)
        # a model only the swarm has: fetch its tokenizer files (never weights) from a server
        d = cache_dir() / "remote-tokenizers" / hashlib.sha256(model.encode()).hexdigest()[:16]
        if (d / "tokenizer.json").exists():
            return d
        for s in self.servers(model):
            try:
                await self.ensure_connected(s.peer_id)
                files = await self.host.rpc.call(s.peer_id, SHARD_PROTOCOL, "files", None, timeout=30)
            except Exception as exc:  # any failure of this server: ask the next one
                log.debug("tokenizer from %s: %s", s.peer_id[-8:], exc)
                continue
            if not isinstance(files, dict) or "tokenizer.json" not in files:
                continue
            d.mkdir(parents=True, exist_ok=True)
            for name, data in files.items():
                if name in TOKENIZER_FILES and isinstance(data, bytes):
                    (d / name).write_bytes(data)
            return d
        raise NoRouteError(f"no server of {model!r} could send its tokenizer")

    # -- generation ------------------------------------------------------------------------------------
    @asynccontextmanager
    async def generate(self, request: GenerationRequest) -> AsyncIterator[PipelineGeneration]:
        if request.mode != "pipeline":
            raise BadRequest(f"mode {request.mode!r} is not served by the pipeline")
        self.n_layers(request.model)  # unknown model -> clear error before anything else
        tok = await self.tokenizer(request.model)
        if request.messages is not None:
            prompt_ids = tok.encode_chat(request.messages)
        elif request.prompt is not None:
            prompt_ids = tok.encode(request.prompt, add_special_tokens=True)  # a BOS where the model wants one
        else:
            raise BadRequest("give a prompt or messages")
        if not prompt_ids:
            raise BadRequest("the prompt is empty")
        if len(prompt_ids) > MAX_PROMPT_TOKENS:
            raise BadRequest(f"the prompt has {len(prompt_ids)} tokens; at most {MAX_PROMPT_TOKENS} are allowed")
        request.params.validate()
        gen = PipelineGeneration(self, request, prompt_ids, tok)
        # plan now, so "no route" is an error before the first chunk (HTTP: a status, not a broken stream)
        gen.route = self.plan(request.model, len(prompt_ids) + max(1, request.params.max_new_tokens))
        self.hold(gen, gen.route)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(gen.produce)
                try:
                    yield gen
                finally:
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            leaf = single_leaf(group)
            if leaf is None:
                raise
            raise leaf from None
        finally:
            self.hold(gen, None)

    def record_route(self, route: dict[str, Any]) -> None:
        self.recent_routes = (self.recent_routes + [route])[-20:]
        now = time.time()
        self.witness.add([h.get("peer_id") for h in route.get("hops", []) if isinstance(h.get("peer_id"), str)],
                         int(route.get("tokens", 0)), now)
        if self.witness.due(now):
            self.witness.flush(self.state_service, now)
