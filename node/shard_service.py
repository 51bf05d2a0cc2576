"""Serving layers of a model: inference sessions with KV caches, relayed server to server.

Protocol ``/swarmlm/shard/1``:

- ``info`` (unary): what this node hosts and how fast it is (model, layer range, ms per layer,
  free cache tokens, load).
- ``session`` (stream, client -> this server): opens a KV-cache session for layers
  ``[start, end)`` (any sub-range of the hosted range). Client items ``{"step", "pos", "x", "want"}``
  feed it inputs (token ids for the first hop, hidden states when the client relays). The server
  computes each input and sends the output to ``next`` over a ``relay`` stream (server to server);
  the hop holding the LM head samples the next token (seeded per position, so a replay after
  failover samples the same token) and answers the client ``{"step", "token", "timings"}``
  (or ``{"step", "logits"}`` when the client asked for logits). If the next server cannot be
  reached the output goes back to the client (``relay_failed``), which relays it itself.
- ``relay`` (stream, previous server -> this server): inputs for a session the client opened here;
  only the peer the client named as ``prev`` may feed it.

Compute runs in a worker thread (one at a time: the CPU is the bottleneck), so the stream readers
keep reading while torch works.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import trio

from swarmlm.net.rpc import BAD_REQUEST, BUSY, UNAVAILABLE, RpcError

from swarmlm.net.rpc_server import CallContext, ServerCall
from swarmlm.node.metrics import observe_step

log = logging.getLogger("swarmlm.shard")

SHARD_PROTOCOL = "/swarmlm/shard/1"
MAX_STEP_TOKENS = 4096
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "config.json", "generation_config.json",
                   "special_tokens_map.json", "chat_template.jinja")


def step_seed(seed: int, position: int) -> int:
    """The sampling seed for the token at ``position``: the same on any server, after any failover."""
    h = hashlib.blake2b(f"{seed}:{position}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") >> 1


@dataclass
class ServerSession:
    session_id: str
    client: str
    prev: str | None
    next: str | None
    next_session: str | None
    view: Any
    cache: Any
    sampling: dict | None
    want_logits: bool
    inbox_send: trio.MemorySendChannel
    inbox_recv: trio.MemoryReceiveChannel
    relay: Any = None
    relay_failed: bool = False
    tap: bool = False  # send the client a signed copy of each step's input and output (verification)
    wire: str | None = None  # "fp16"/"bf16": hidden states are down-cast before they travel
    steps: int = 0
    opened: float = field(default_factory=time.monotonic)


class ShardService:
    """Hosts a shard of one model and serves inference sessions on it.

    Built from the node config: ``start`` resolves the model (converting it once if needed),
    picks the layer range (``--layers auto``: the range the swarm serves worst, see
    ``node/placement.py``), loads only those tensors, measures ms per layer, and only then reports
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
        self.rebalance_s = rebalance_s
        self.max_layers_effective = 0
        self.moves = 0
        self.shard: Any = None
        self.cache: Any = None
        self.ms_per_layer = 0.0
        self.sessions: dict[str, ServerSession] = {}
        self._session_events: dict[str, trio.Event] = {}
        self._compute = trio.CapacityLimiter(1)
        self._views: dict[tuple[int, int], Any] = {}
        self.node: Any = None
        self.tokens_computed = 0
        self.steps_served = 0

    async def start(self, node: Any, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        from swarmlm.node.hosting import load_hosted_shard

        if self.shard is None:
            self.shard, self.cache, self.ms_per_layer = await load_hosted_shard(self, node)
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

    async def run(self, node: Any) -> None:
        """Housekeeping: expire idle sessions, re-announce, and (auto placement) rebalance."""
        from swarmlm.node.hosting import announce, maybe_rebalance

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
        from swarmlm.node.directory import throughput_from

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

    def _view(self, start: int, end: int) -> Any:
        key = (start, end)
        if key not in self._views:
            self._views[key] = self.shard.view(start, end)
        return self._views[key]

    # -- the session a client opens -----------------------------------------------------------
    def _parse_open(self, args: Any) -> dict[str, Any]:
        if self.shard is None:
            raise RpcError(UNAVAILABLE, "still loading the model")
        if not isinstance(args, dict):
            raise RpcError(BAD_REQUEST, "session: expected a map of arguments")
        sh = self.shard
        try:
            sid = str(args["session_id"])
            start, end, max_length = int(args["start"]), int(args["end"]), int(args["max_length"])
        except (KeyError, TypeError, ValueError) as exc:
            raise RpcError(BAD_REQUEST, f"session: missing or bad argument {exc}") from None
        if args.get("model") != self.model_id:
            raise RpcError(BAD_REQUEST, f"this node serves {self.model_id}, not {args.get('model')!r}")
        if not (sh.start <= start < end <= sh.end) or len(sid) > 128:
            raise RpcError(BAD_REQUEST, f"layers [{start}, {end}) are not within hosted [{sh.start}, {sh.end})")
        if not 0 < max_length <= 1 << 20:
            raise RpcError(BAD_REQUEST, f"max_length {max_length} out of range")
        nxt = args.get("next")
        if end < sh.num_layers_total and nxt is not None and not isinstance(nxt, str):
            raise RpcError(BAD_REQUEST, "next must be a peer id")
        sampling = args.get("sampling")
        if sampling is not None and not isinstance(sampling, dict):
            raise RpcError(BAD_REQUEST, "sampling must be a map")
        wire = args.get("wire")
        if wire not in (None, "fp16", "bf16"):
            raise RpcError(BAD_REQUEST, "wire must be fp16, bf16 or absent")
        return {"sid": sid, "start": start, "end": end, "max_length": max_length, "next": nxt,
                "next_session": args.get("next_session"), "prev": args.get("prev"), "sampling": sampling,
                "want_logits": bool(args.get("logits")), "tap": bool(args.get("tap")), "wire": wire}

    async def _session(self, call: ServerCall, args: Any) -> Any:
        from swarmlm.models.errors import CacheBudgetExceeded, ModelError

        o = self._parse_open(args)
        sid = o["sid"]
        if sid in self.sessions:
            raise RpcError(BAD_REQUEST, f"session {sid[:8]} already open")
        if len(self.sessions) >= self.max_sessions:
            raise RpcError(BUSY, f"node has {len(self.sessions)} sessions open (max {self.max_sessions}); route elsewhere")
        view = self._view(o["start"], o["end"])
        try:
            view._check_window(o["max_length"])
            cache = self.cache.open(sid, o["max_length"], layout=view.cache_layout())
        except CacheBudgetExceeded as exc:
            raise RpcError(BUSY, str(exc)) from None
        except ModelError as exc:
            raise RpcError(BAD_REQUEST, str(exc)) from None
        inbox_send, inbox_recv = trio.open_memory_channel[Any](64)
        sess = ServerSession(sid, call.ctx.peer, o["prev"], o["next"], o["next_session"], view, cache,
                             o["sampling"], o["want_logits"], inbox_send, inbox_recv, tap=o["tap"], wire=o["wire"])
        self.sessions[sid] = sess
        self._session_events.setdefault(sid, trio.Event()).set()
        log.debug("session %s open: layers [%d, %d) for %s", sid[:8], o["start"], o["end"], call.ctx.peer[-8:])
        try:
            async with AsyncExitStack() as stack, trio.open_nursery() as nursery:
                nursery.start_soon(self._pump_client, call, sess)
                await self._process(call, sess, stack, nursery)
                nursery.cancel_scope.cancel()
        finally:
            self.sessions.pop(sid, None)
            self._session_events.pop(sid, None)
            self.cache.close(sid)
        return {"steps": sess.steps}

    async def _pump_client(self, call: ServerCall, sess: ServerSession) -> None:
        async for item in call:
            await sess.inbox_send.send(item)
        await sess.inbox_send.send(None)  # the client ended the session

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

    # -- compute -------------------------------------------------------------------------------
    def _check_item(self, item: Any, sess: ServerSession) -> tuple[int, int, Any, bool, list]:
        import torch

        if not isinstance(item, dict):
            raise RpcError(BAD_REQUEST, "step: expected a map")
        step, pos, x = item.get("step"), item.get("pos"), item.get("x")
        if not isinstance(step, int) or not isinstance(pos, int) or not isinstance(x, torch.Tensor):
            raise RpcError(BAD_REQUEST, "step: needs int step, int pos and tensor x")
        if x.dim() < 2 or x.shape[0] != 1 or not 0 < x.shape[1] <= MAX_STEP_TOKENS:
            raise RpcError(BAD_REQUEST, f"step: bad input shape {tuple(x.shape)}")
        timings = item.get("timings") or []
        if not isinstance(timings, list) or len(timings) > 64:
            raise RpcError(BAD_REQUEST, "step: bad timings")
        return step, pos, x, bool(item.get("want", True)), timings

    def _forward(self, sess: ServerSession, x: Any, pos: int) -> Any:
        out = sess.view.forward(x, sess.cache, pos, last_only=sess.view.has_head)
        if self.fault == "wrong-activations" and not sess.view.has_head:
            import torch

            out = out + torch.randn_like(out) * out.abs().mean()
        return out

    def _sample(self, sess: ServerSession, logits: Any, pos: int) -> int:
        from swarmlm.models.sampling import Sampler, SamplingParams

        sp = dict(sess.sampling or {})
        seed = int(sp.get("seed") or 0)
        params = SamplingParams.from_dict({**sp, "seed": step_seed(seed, pos), "max_new_tokens": 1})
        return Sampler(params).sample(logits[0, -1])

    async def _send_tap(self, call: ServerCall, sess: ServerSession, step: int, pos: int, x_in: Any,
                        x_out: Any, token: int | None) -> None:
        from swarmlm.node.verify import tap_digest

        sig = self.node.identity.sign(tap_digest(sess.session_id, step, pos, x_in, x_out, token))
        await call.send({"step": step, "tap": True, "pos": pos, "in": x_in, "out": x_out, "token": token, "sig": sig})

    async def _report(self, ctx: CallContext, args: Any) -> Any:
        """A client's evidence that a peer computed layers we host wrongly (see ``node/verify.py``)."""
        from swarmlm.node.verify import handle_report

        return await handle_report(self, ctx.peer, args)

    async def _watch_relay(self, call: ServerCall, sess: ServerSession) -> None:
        """The next server answers a relay stream only when it ends or fails: tell the client."""
        reason, busy = "the next server closed the relay", False
        try:
            async for _ in sess.relay:
                pass
        except Exception as exc:
            reason, busy = f"{type(exc).__name__}: {exc}", getattr(exc, "code", None) == BUSY
        sess.relay_failed = True
        log.warning("session %s: relay to %s ended: %s", sess.session_id[:8], sess.next[-8:], reason)
        try:
            await call.send({"step": -1, "relay_failed": sess.next, "error": reason, "busy": busy})
        except Exception:
            pass

    async def _process(self, call: ServerCall, sess: ServerSession, stack: AsyncExitStack,
                       nursery: trio.Nursery) -> None:
        me = self.node.peer_id
        while True:
            item = await sess.inbox_recv.receive()
            if item is None:
                return
            step, pos, x, want, timings = self._check_item(item, sess)
            if self.fault == "drop":
                continue  # swallow the step: the client's deadline and failover must handle it
            if self.fault == "slow":
                await trio.sleep(2.0)
            t0 = time.perf_counter()
            try:
                out = await trio.to_thread.run_sync(self._forward, sess, x, pos, limiter=self._compute)
            except Exception as exc:  # bad positions, wrong hidden size...: the client's error
                from swarmlm.errors import SwarmError

                if isinstance(exc, SwarmError):
                    raise RpcError(BAD_REQUEST, str(exc)) from None
                raise
            ms = (time.perf_counter() - t0) * 1000.0
            observe_step(self.node, sess.view, ms / 1000.0, want)  # metrics: per-hop latency, tokens
            sess.steps += 1
            self.steps_served += 1
            self.tokens_computed += x.shape[1]
            timings = timings + [[me, sess.view.start, sess.view.end, round(ms, 3)]]
            if sess.view.has_head:
                tok = None
                if want and not (sess.want_logits or sess.sampling is None):
                    tok = await trio.to_thread.run_sync(self._sample, sess, out, pos)
                if sess.tap:
                    await self._send_tap(call, sess, step, pos, x, None, tok)
                if not want:
                    continue
                if tok is None:
                    await call.send({"step": step, "logits": out[0, -1].float(), "timings": timings})
                else:
                    await call.send({"step": step, "token": tok, "timings": timings})
                continue
            if sess.wire:  # before the tap: what verification sees is what the next hop gets
                import torch

                out = out.to(torch.float16 if sess.wire == "fp16" else torch.bfloat16)
            if sess.tap:
                await self._send_tap(call, sess, step, pos, x, out, None)
            msg = {"step": step, "pos": pos, "x": out, "want": want, "timings": timings}
            if sess.next and not sess.relay_failed:
                try:
                    if sess.relay is None:
                        log.debug("session %s: opening relay to %s", sess.session_id[:8], sess.next[-8:])
                        cm = self.node.host.rpc.stream(sess.next, SHARD_PROTOCOL, "relay",
                                                       {"session_id": sess.next_session})
                        sess.relay = await stack.enter_async_context(cm)
                        nursery.start_soon(self._watch_relay, call, sess)
                        log.debug("session %s: relay open", sess.session_id[:8])
                    await sess.relay.send(msg)
                    continue
                except Exception as exc:
                    log.warning("session %s: relay to %s failed (%s); the client relays from now on",
                                sess.session_id[:8], sess.next[-8:], exc)
                    sess.relay_failed = True
                    msg["relay_failed"] = sess.next
            await call.send(msg)
