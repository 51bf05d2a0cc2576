"""Serving layers of a model: the ``/swarmlm/shard/1`` service of a node that hosts a shard.

- ``info`` (unary): what this node hosts and how fast it is (model, layer range, ms per layer,
  free cache tokens, load).
- ``session`` (stream, client -> this server): opens a KV-cache session for layers
  ``[start, end)`` (any sub-range of the hosted range; ``wire.SessionOpen``), admitted against the
  free cache tokens (``busy`` with a retry hint when full). Its items feed inputs
  (``wire.StepItem``); ``node/server/session.py`` has them computed by the step scheduler (all
  sessions' ready steps as one batch, prompts in chunks: ``node/server/scheduler.py`` and
  ``batcher.py``) and sends results on (to the next server over a ``relay`` stream, or back to the
  client). The hop holding the LM head samples the
  next token, seeded per position (``wire.step_seed``), so a replay after failover samples the same
  token.
- ``relay`` (stream, previous server -> this server): inputs for a session the client opened here;
  only the peer the client named as ``prev`` may feed it.
- ``progress`` (unary): steps computed in a session (the client's stall diagnosis).
- ``loop`` (stream, a route's head -> its first hop): the server token loop's tokens
  (``node/server/token_loop.py``).
- ``files`` (unary): the tokenizer files of the model (never weights).
- ``check`` (stream): a reference session for a client's verification (``node/server/check.py``).
- ``report`` (unary): a client's evidence that a peer computed our layers wrongly (``node/server/verify.py``).

Hosting decisions (what to load, auto placement, rebalancing) are in ``node/server/hosting.py``; the
advertised speed and load (``hosted_fields``) come from the served batches (``node/server/speed.py``).
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from contextlib import AsyncExitStack
from typing import Any, Callable

import trio

from swarmlm.models.errors import CacheBudgetExceeded, ModelError
from swarmlm.net.rpc import BAD_REQUEST, BUSY, UNAVAILABLE, RpcError
from swarmlm.net.rpc_server import CallContext, ServerCall
from swarmlm.node.directory import throughput_from
from swarmlm.node.server.batcher import Batcher
from swarmlm.node.server.check import CheckLimits, handle_check
from swarmlm.node.server.faults import Fault
from swarmlm.node.server.hosting import announce, load_hosted_shard, maybe_rebalance
from swarmlm.node.server.scheduler import DEFAULT_PREFILL_CHUNK, BatchQueue, Piece
from swarmlm.node.server.session import ServerSession
from swarmlm.node.server.speed import SpeedModel, default_batch_tokens
from swarmlm.node.server.token_loop import TokenLoops
from swarmlm.node.server.verify import handle_report
from swarmlm.node.wire import CHECK_METHOD, SHARD_PROTOCOL, TOKENIZER_FILES, SessionOpen, WireError, busy_message

log = logging.getLogger("swarmlm.shard")
SERVED_KEPT = 32

RELAY_WAIT_S = 10.0  # a relay may arrive just before the client's session open: wait this long for it
RELAY_WAITS_PER_PEER = 8  # relays one peer may have waiting for a session (each holds a call)
RELAY_WAITS_TOTAL = 64
PEER_RESERVE = 8  # one peer may not take the last 1/PEER_RESERVE of a server's sessions


class ShardService:
    """Hosts a shard of one model and serves inference sessions on it.

    Built from the node config: ``start`` resolves the model (converting it once if needed),
    picks the layer range (``--layers auto``: the range the swarm serves worst, see
    ``node/server/placement.py``), loads only those tensors, measures ms per layer, and only then reports
    started, so the ready file means "serving".
    """

    name = "shard"

    def __init__(self, model_spec: str, *, layers: str = "auto", max_layers: int = 0, dtype: str = "fp32",
                 max_cache_tokens: int = 8192, max_sessions: int = 64, peer_max_sessions: int = 0, fault: str = "",
                 rebalance_s: float = 30.0, max_batch_tokens: int = 0,
                 prefill_chunk: int = DEFAULT_PREFILL_CHUNK) -> None:
        self.model_id = model_spec
        self.layers_spec = layers
        self.max_layers = max_layers
        self.dtype = dtype
        self.max_cache_tokens = max_cache_tokens
        self.max_sessions = max_sessions
        self.peer_max_sessions = peer_max_sessions  # 0: all but max_sessions // PEER_RESERVE
        self.fault = fault
        self.faults = Fault.parse(fault)
        self.checks = CheckLimits()
        self.rebalance_s = rebalance_s
        self.max_batch_tokens = max_batch_tokens  # 0: from the measured speed (speed.default_batch_tokens)
        self.prefill_chunk = prefill_chunk
        self.max_layers_effective = 0
        self.moves = 0
        self.shard: Any = None
        self.cache: Any = None
        self.speed: SpeedModel | None = None
        self.queue: BatchQueue | None = None
        self.batcher: Batcher | None = None
        self.sessions: dict[str, ServerSession] = {}
        self._session_events: dict[str, trio.Event] = {}
        self._relay_waits: dict[str, int] = {}  # peer -> relay calls waiting for their session to open
        self.compute_limiter = trio.CapacityLimiter(1)  # one computation at a time: the CPU is the bottleneck
        self._views: dict[tuple[int, int], Any] = {}
        self.node: Any = None
        self.tokens_computed = 0
        self.steps_served = 0
        self.step_listeners: list[Callable[[float, bool], None]] = []  # (seconds, sampled a token): metrics
        self.served: deque[dict[str, Any]] = deque(maxlen=SERVED_KEPT)  # recent sessions: the health page's routes
        self.loops = TokenLoops(self)  # the server token loop (node/server/token_loop.py)

    async def start(self, node: Any, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        if self.shard is None:
            self.shard, self.cache, self.speed = await load_hosted_shard(self, node)
            self.faults.prepare(self.shard)
        self._start_batching()
        node.on_hosting_changed()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.batcher.run)
            task_status.started()
            await self.run(node)

    def _start_batching(self) -> None:
        budget = self.max_batch_tokens or default_batch_tokens(self.speed.token_ms)
        self.queue = BatchQueue(budget, self.prefill_chunk)
        self.batcher = Batcher(self.queue, self.compute, self.compute_limiter, self._on_batch)
        log.info("step scheduler: up to %d tokens per batch, prompts in chunks of %d", budget, self.prefill_chunk)

    @property
    def ms_per_layer(self) -> float:
        """Live: one decode token at batch 1, per hosted layer (ms), from the steps served."""
        return self.speed.ms_per_layer if self.speed is not None else 0.0

    # -- wiring -----------------------------------------------------------------------------
    def register(self, node: Any) -> None:
        self.node = node
        rpc = node.host.rpc_server
        # every session relayed to us from one upstream server is one call and one stream of that peer:
        # the per-peer limits must leave room for max_sessions of them (plus state sync and a few calls)
        lim = rpc.limits
        lim.max_calls_per_peer = max(lim.max_calls_per_peer, self.max_sessions + 16)
        lim.max_streams_per_peer = max(lim.max_streams_per_peer, 2 * self.max_sessions + 16)
        lim.max_calls_total = max(lim.max_calls_total, 4 * self.max_sessions + 64)
        rpc.add_unary(SHARD_PROTOCOL, "info", self._info)
        rpc.add_stream(SHARD_PROTOCOL, "session", self._session)
        rpc.add_stream(SHARD_PROTOCOL, "relay", self._relay)
        rpc.add_unary(SHARD_PROTOCOL, "progress", self._progress)
        rpc.add_unary(SHARD_PROTOCOL, "files", self._files)
        rpc.add_unary(SHARD_PROTOCOL, "report", self._report)
        rpc.add_stream(SHARD_PROTOCOL, CHECK_METHOD, self._check)
        self.loops.register(rpc)

    async def run(self, node: Any) -> None:
        """Housekeeping: expire idle sessions, re-announce, and (auto placement) rebalance."""
        last_announce = -1e9
        waited = 0
        while True:
            if trio.current_time() - last_announce > 600:
                await announce(self, node)
                last_announce = trio.current_time()
            await trio.sleep(self.rebalance_s * random.uniform(0.8, 1.2))
            self.expire_idle()
            if self.layers_spec == "auto":
                moved, waited = await maybe_rebalance(self, node, waited)
                if moved:
                    last_announce = -1e9

    async def close(self, node: Any) -> None:
        self.cache.close_all()

    def expire_idle(self, now: float | None = None) -> list[str]:
        """End the sessions whose cache saw no step for the cache's idle timeout (they free it)."""
        now = time.monotonic() if now is None else now
        idle = [sid for sid, s in self.sessions.items() if now - s.cache.last_used > self.cache.idle_timeout_s]
        for sid in idle:
            log.info("session %s expired (idle)", sid[:8])
            self.sessions[sid].scope.cancel()
        return idle

    def load_fields(self) -> dict[str, Any]:
        """Live load: active sessions, queued steps, token positions served per second, capacity."""
        now = time.monotonic()
        sp = self.speed
        return {"sessions": len(self.sessions), "queue": self.queue.queued if self.queue is not None else 0,
                "served": round(sp.served_tok_s(now), 2) if sp is not None else 0.0,
                "capacity": round(sp.capacity_tok_s(min(self.max_sessions, self.queue.max_batch_tokens)), 2)
                if sp is not None and self.queue is not None else 0.0}

    def hosted_fields(self) -> dict[str, Any]:
        """Our part of the swarm-state heartbeat."""
        if self.shard is None:
            return {}
        sh = self.shard
        return {"hosted": [{"model": self.model_id, "start": sh.start, "end": sh.end}],
                "throughput": throughput_from(self.ms_per_layer, sh.end - sh.start),
                "free_kv": self.cache.free_tokens, "load": len(self.sessions) / max(1, self.max_sessions),
                **self.load_fields()}

    def info(self) -> dict[str, Any]:
        sh = self.shard
        if sh is None:
            raise RpcError(UNAVAILABLE, "still loading the model")
        return {"peer_id": self.node.peer_id if self.node else None, "model": self.model_id,
                "start": sh.start, "end": sh.end, "n_layers": sh.num_layers_total, "dtype": sh.dtype_name,
                "ms_per_layer": self.ms_per_layer, "free_cache_tokens": self.cache.free_tokens,
                "max_sessions": self.max_sessions, "load": len(self.sessions) / max(1, self.max_sessions),
                "max_batch_tokens": self.queue.max_batch_tokens if self.queue is not None else 0,
                **self.load_fields()}

    async def _info(self, ctx: CallContext, args: Any) -> Any:
        return self.info()

    async def _progress(self, ctx: CallContext, args: Any) -> Any:
        sid = args.get("session_id") if isinstance(args, dict) else None
        sess = self.sessions.get(sid) if isinstance(sid, str) else None
        if sess is None:
            raise RpcError(UNAVAILABLE, "no such session")
        return {"steps": sess.steps}

    async def _files(self, ctx: CallContext, args: Any) -> Any:
        """The small files a client needs to tokenize for this model (never weights)."""
        out = {}
        d = self.shard.model_dir
        for name in TOKENIZER_FILES:
            p = d / name if d is not None else None
            if p is not None and p.is_file() and p.stat().st_size <= 16 * 1024 * 1024:
                out[name] = p.read_bytes()
        return out

    def replace_shard(self, shard: Any, cache: Any, speed: SpeedModel) -> None:
        """Serve ``shard`` from now on (rebalancing); sessions already open keep the old weights."""
        self.shard, self.cache, self.speed = shard, cache, speed
        self.faults.prepare(shard)
        self._views.clear()
        self.moves += 1

    def compute(self, pieces: list[Piece]) -> list[Any]:
        """One batch: the pieces' positions through their (common) view, as one ``forward_batch``
        (blocking: the batcher runs it in a worker thread)."""
        view = pieces[0].work.group
        entries = [(p.work.session, p.work.x[:, p.offset:p.offset + p.n], p.work.pos + p.offset) for p in pieces]
        outs = view.forward_batch(entries, last_only=[p.work.last_only for p in pieces])
        return [self.faults.apply(view, x, out) for (_, x, _), out in zip(entries, outs)]

    def _on_batch(self, pieces: list[Piece], seconds: float) -> None:
        self.speed.observe(sum(p.n for p in pieces), seconds, time.monotonic())

    def forward(self, sess: Any, x: Any, pos: int, last_only: bool | None = None) -> Any:
        """One step of a check or report session (its ``view`` and ``cache``) through its layers, alone
        (blocking: run it in a worker thread); sessions' steps go through the batcher (``compute``).
        The head answers its last position unless ``last_only`` is False. Test faults act here too."""
        view = sess.view
        out = view.forward(x, sess.cache, pos, last_only=view.has_head if last_only is None else last_only)
        return self.faults.apply(view, x, out)

    def count_step(self, tokens: int) -> None:
        self.steps_served += 1
        self.tokens_computed += tokens

    def _on_step(self, seconds: float, sampled: bool) -> None:
        for listener in self.step_listeners:
            listener(seconds, sampled)

    def retry_hint_s(self) -> float:
        """When a session may end and free its cache: the soonest any open session can reach its
        max length at the current step time (a hint for ``busy`` answers)."""
        step_s = (self.speed.predict_ms(len(self.sessions)) / 1000.0) if self.speed is not None else 0.1
        left = [max(1, s.cache.max_length - s.cache.length) for s in self.sessions.values() if not s.cache.closed]
        return min(left, default=1) * step_s

    def peer_session_cap(self) -> int:
        """Sessions one peer may hold: ``peer_max_sessions`` if set, else all but an eighth of
        ``max_sessions`` (kept for other peers)."""
        if self.peer_max_sessions > 0:
            return max(1, min(self.max_sessions, self.peer_max_sessions))
        return max(1, self.max_sessions - self.max_sessions // PEER_RESERVE)

    def view(self, start: int, end: int) -> Any:
        """The shard restricted to layers ``[start, end)`` (cached per range)."""
        key = (start, end)
        if key not in self._views:
            self._views[key] = self.shard.view(start, end)
        return self._views[key]

    # -- the session a client opens -----------------------------------------------------------
    def _parse_open(self, args: Any) -> SessionOpen:
        if self.shard is None:
            raise RpcError(UNAVAILABLE, "still loading the model")
        try:
            o = SessionOpen.parse(args)
        except WireError as exc:
            raise RpcError(BAD_REQUEST, str(exc)) from None
        sh = self.shard
        if o.model != self.model_id:
            raise RpcError(BAD_REQUEST, f"this node serves {self.model_id}, not {o.model!r}")
        if not sh.start <= o.start < o.end <= sh.end:
            raise RpcError(BAD_REQUEST, f"layers [{o.start}, {o.end}) are not within hosted [{sh.start}, {sh.end})")
        return o

    async def _session(self, call: ServerCall, args: Any) -> Any:
        o = self._parse_open(args)
        sid = o.session_id
        if sid in self.sessions:
            raise RpcError(BAD_REQUEST, f"session {sid[:8]} already open")
        if len(self.sessions) >= self.max_sessions:
            raise RpcError(BUSY, busy_message(f"node has {len(self.sessions)} sessions open (max {self.max_sessions}); "
                                              "route elsewhere", self.retry_hint_s()))
        mine = sum(1 for s in self.sessions.values() if s.client == call.ctx.peer)
        if mine >= self.peer_session_cap():
            raise RpcError(BUSY, busy_message(f"you have {mine} sessions open here (at most {self.peer_session_cap()} "
                                              "per peer: the rest is kept for others)", self.retry_hint_s()))
        loop = self.loops.check_open(o, call.ctx.peer)
        view = self.view(o.start, o.end)
        try:
            view._check_window(o.max_length)
            cache = self.cache.open(sid, o.max_length, layout=view.cache_layout())
        except CacheBudgetExceeded as exc:
            raise RpcError(BUSY, busy_message(str(exc), self.retry_hint_s())) from None
        except ModelError as exc:
            raise RpcError(BAD_REQUEST, str(exc)) from None
        sess = ServerSession.open(o, call.ctx.peer, view, cache)
        self.sessions[sid] = sess
        self._session_events.setdefault(sid, trio.Event()).set()
        log.debug("session %s open: layers [%d, %d) for %s", sid[:8], o.start, o.end, call.ctx.peer[-8:])
        runner = self.loops.runner(call, sess, loop)
        try:
            with sess.scope:
                async with AsyncExitStack() as stack, trio.open_nursery() as nursery:
                    nursery.start_soon(runner.pump_client)
                    await runner.process(stack, nursery, self._on_step)
                    nursery.cancel_scope.cancel()
        finally:
            self.sessions.pop(sid, None)
            self._session_events.pop(sid, None)
            await self.batcher.leave(sid)  # its step may be in the running batch: wait before freeing
            cache.free()
            self.cache.close(sid)
            self.served.append({"at": time.time(), "client": call.ctx.peer, "model": o.model, "steps": sess.steps,
                                "route": o.route or [[self.node.peer_id, o.start, o.end]]})
        return {"steps": sess.steps}

    async def _relay(self, call: ServerCall, args: Any) -> Any:
        sid = args.get("session_id") if isinstance(args, dict) else None
        if not isinstance(sid, str):
            raise RpcError(BAD_REQUEST, "relay: session_id missing")
        sess = self.sessions.get(sid)
        if sess is None:  # the client may still be opening it: wait, a bounded number of relays at a time
            peer = call.ctx.peer
            trusted = self.node is not None and self.node.host.rpc_server.trusted(peer)  # established: no cap
            if not trusted and (self._relay_waits.get(peer, 0) >= RELAY_WAITS_PER_PEER
                                or sum(self._relay_waits.values()) >= RELAY_WAITS_TOTAL):
                raise RpcError(BUSY, f"too many relays waiting for their session; retry (no session {sid[:8]} yet)")
            self._relay_waits[peer] = self._relay_waits.get(peer, 0) + 1
            try:
                ev = self._session_events.setdefault(sid, trio.Event())
                with trio.move_on_after(RELAY_WAIT_S):
                    await ev.wait()
            finally:
                self._relay_waits[peer] -= 1
                if not self._relay_waits[peer]:
                    del self._relay_waits[peer]
            sess = self.sessions.get(sid)
        log.debug("relay into session %s from %s: %s", sid[:8], call.ctx.peer[-8:], "found" if sess else "missing")
        if sess is None:
            self._session_events.pop(sid, None)
            raise RpcError(UNAVAILABLE, f"no session {sid[:8]} here")
        if sess.prev != call.ctx.peer:
            raise RpcError(BAD_REQUEST, "only the previous server of this session may relay into it")
        async for item in call:
            await sess.inbox_send.send(item)
        return {}

    # -- verification ---------------------------------------------------------------------------
    async def _check(self, call: ServerCall, args: Any) -> Any:
        """A reference session for a client's verification (see ``node/server/check.py``)."""
        return await handle_check(self, call, self._parse_open(args))

    async def _report(self, ctx: CallContext, args: Any) -> Any:
        """A client's evidence that a peer computed layers we host wrongly (see ``node/server/verify.py``)."""
        return await handle_report(self, ctx.peer, args)
