"""Serving layers of a model: the ``/swarmlm/shard/1`` service of a node that hosts a shard.

- ``info`` (unary): what this node hosts and how fast it is (model, layer range, ms per layer,
  free cache tokens, load).
- ``session`` (stream, client -> this server): opens a KV-cache session for layers
  ``[start, end)`` (any sub-range of the hosted range; ``wire.SessionOpen``). Its items feed inputs
  (``wire.StepItem``); ``node/server/session.py`` computes them and sends results on (to the next
  server over a ``relay`` stream, or back to the client). The hop holding the LM head samples the
  next token, seeded per position (``wire.step_seed``), so a replay after failover samples the same
  token.
- ``relay`` (stream, previous server -> this server): inputs for a session the client opened here;
  only the peer the client named as ``prev`` may feed it.
- ``progress`` (unary): steps computed in a session (the client's stall diagnosis).
- ``files`` (unary): the tokenizer files of the model (never weights).
- ``check`` (stream): a reference session for a client's verification (``node/server/check.py``).
- ``report`` (unary): a client's evidence that a peer computed our layers wrongly (``node/server/verify.py``).

Hosting decisions (what to load, auto placement, rebalancing) are in ``node/server/hosting.py``.
"""

from __future__ import annotations

import logging
import random
from contextlib import AsyncExitStack
from typing import Any, Callable

import trio

from swarmlm.models.errors import CacheBudgetExceeded, ModelError
from swarmlm.net.rpc import BAD_REQUEST, BUSY, UNAVAILABLE, RpcError
from swarmlm.net.rpc_server import CallContext, ServerCall
from swarmlm.node.directory import throughput_from
from swarmlm.node.server.check import CheckLimits, handle_check
from swarmlm.node.server.faults import Fault
from swarmlm.node.server.hosting import announce, load_hosted_shard, maybe_rebalance
from swarmlm.node.server.session import ServerSession, SessionRunner
from swarmlm.node.server.verify import handle_report
from swarmlm.node.wire import CHECK_METHOD, SHARD_PROTOCOL, TOKENIZER_FILES, SessionOpen, WireError

log = logging.getLogger("swarmlm.shard")


class ShardService:
    """Hosts a shard of one model and serves inference sessions on it.

    Built from the node config: ``start`` resolves the model (converting it once if needed),
    picks the layer range (``--layers auto``: the range the swarm serves worst, see
    ``node/server/placement.py``), loads only those tensors, measures ms per layer, and only then reports
    started, so the ready file means "serving".
    """

    name = "shard"

    def __init__(self, model_spec: str, *, layers: str = "auto", max_layers: int = 0, dtype: str = "fp32",
                 max_cache_tokens: int = 8192, max_sessions: int = 64, fault: str = "",
                 rebalance_s: float = 30.0) -> None:
        self.model_id = model_spec
        self.layers_spec = layers
        self.max_layers = max_layers
        self.dtype = dtype
        self.max_cache_tokens = max_cache_tokens
        self.max_sessions = max_sessions
        self.fault = fault
        self.faults = Fault.parse(fault)
        self.checks = CheckLimits()
        self.rebalance_s = rebalance_s
        self.max_layers_effective = 0
        self.moves = 0
        self.shard: Any = None
        self.cache: Any = None
        self.ms_per_layer = 0.0
        self.sessions: dict[str, ServerSession] = {}
        self._session_events: dict[str, trio.Event] = {}
        self.compute_limiter = trio.CapacityLimiter(1)  # one computation at a time: the CPU is the bottleneck
        self._views: dict[tuple[int, int], Any] = {}
        self.node: Any = None
        self.tokens_computed = 0
        self.steps_served = 0
        self.step_listeners: list[Callable[[float, bool], None]] = []  # (seconds, sampled a token): metrics

    async def start(self, node: Any, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        if self.shard is None:
            self.shard, self.cache, self.ms_per_layer = await load_hosted_shard(self, node)
            self.faults.prepare(self.shard)
        node.on_hosting_changed()
        task_status.started()
        await self.run(node)

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

    async def run(self, node: Any) -> None:
        """Housekeeping: expire idle sessions, re-announce, and (auto placement) rebalance."""
        last_announce = -1e9
        waited = 0
        while True:
            if trio.current_time() - last_announce > 600:
                await announce(self, node)
                last_announce = trio.current_time()
            await trio.sleep(self.rebalance_s * random.uniform(0.8, 1.2))
            for sid in self.cache.expire_idle():
                log.info("session %s expired (idle)", sid[:8])
            if self.layers_spec == "auto":
                moved, waited = await maybe_rebalance(self, node, waited)
                if moved:
                    last_announce = -1e9

    async def close(self, node: Any) -> None:
        self.cache.close_all()

    def hosted_fields(self) -> dict[str, Any]:
        """Our part of the swarm-state heartbeat."""
        if self.shard is None:
            return {}
        sh = self.shard
        return {"hosted": [{"model": self.model_id, "start": sh.start, "end": sh.end}],
                "throughput": throughput_from(self.ms_per_layer, sh.end - sh.start),
                "free_kv": self.cache.free_tokens, "load": len(self.sessions) / max(1, self.max_sessions)}

    def info(self) -> dict[str, Any]:
        sh = self.shard
        if sh is None:
            raise RpcError(UNAVAILABLE, "still loading the model")
        return {"peer_id": self.node.peer_id if self.node else None, "model": self.model_id,
                "start": sh.start, "end": sh.end, "n_layers": sh.num_layers_total, "dtype": sh.dtype_name,
                "ms_per_layer": self.ms_per_layer, "free_cache_tokens": self.cache.free_tokens,
                "sessions": len(self.sessions), "max_sessions": self.max_sessions,
                "load": len(self.sessions) / max(1, self.max_sessions)}

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

    def replace_shard(self, shard: Any, cache: Any, ms_per_layer: float) -> None:
        """Serve ``shard`` from now on (rebalancing); sessions already open keep the old weights."""
        self.shard, self.cache, self.ms_per_layer = shard, cache, ms_per_layer
        self.faults.prepare(shard)
        self._views.clear()
        self.moves += 1

    def forward(self, sess: Any, x: Any, pos: int, last_only: bool | None = None) -> Any:
        """One step of ``sess`` (a session or a check: its ``view`` and ``cache``) through its layers
        (blocking: run it in a worker thread). The head answers its last position unless ``last_only``
        is False. Test faults (``--fault``) act here."""
        view = sess.view
        out = view.forward(x, sess.cache, pos, last_only=view.has_head if last_only is None else last_only)
        return self.faults.apply(view, x, out)

    def count_step(self, tokens: int) -> None:
        self.steps_served += 1
        self.tokens_computed += tokens

    def _on_step(self, seconds: float, sampled: bool) -> None:
        for listener in self.step_listeners:
            listener(seconds, sampled)

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
            raise RpcError(BUSY, f"node has {len(self.sessions)} sessions open (max {self.max_sessions}); route elsewhere")
        view = self.view(o.start, o.end)
        try:
            view._check_window(o.max_length)
            cache = self.cache.open(sid, o.max_length, layout=view.cache_layout())
        except CacheBudgetExceeded as exc:
            raise RpcError(BUSY, str(exc)) from None
        except ModelError as exc:
            raise RpcError(BAD_REQUEST, str(exc)) from None
        sess = ServerSession.open(o, call.ctx.peer, view, cache)
        self.sessions[sid] = sess
        self._session_events.setdefault(sid, trio.Event()).set()
        log.debug("session %s open: layers [%d, %d) for %s", sid[:8], o.start, o.end, call.ctx.peer[-8:])
        runner = SessionRunner(self, call, sess)
        try:
            async with AsyncExitStack() as stack, trio.open_nursery() as nursery:
                nursery.start_soon(runner.pump_client)
                await runner.process(stack, nursery, self._on_step)
                nursery.cancel_scope.cancel()
        finally:
            self.sessions.pop(sid, None)
            self._session_events.pop(sid, None)
            self.cache.close(sid)
        return {"steps": sess.steps}

    async def _relay(self, call: ServerCall, args: Any) -> Any:
        sid = args.get("session_id") if isinstance(args, dict) else None
        if not isinstance(sid, str):
            raise RpcError(BAD_REQUEST, "relay: session_id missing")
        ev = self._session_events.setdefault(sid, trio.Event())
        with trio.move_on_after(15):
            await ev.wait()
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
