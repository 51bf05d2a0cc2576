"""The server side of our RPC: dispatches incoming streams of registered protocols to handlers.

Wire format and the client are in ``net/rpc.py``. Each server stream has exactly one reader task
that keeps reading while the handler computes (yamux resets a stream whose receiver stops reading
for 5 s); handlers that use the CPU must run it in ``trio.to_thread.run_sync``. Limits, each per
peer and in total (``ServerLimits``): open streams, concurrent calls, bytes of received frames not
yet taken by a handler (with room reserved for ``trusted`` peers), header bytes per second (the
CPU a peer can make us spend decoding), an idle deadline on streams without a call, and the
read/write deadlines of ``FrameStream``. A peer that breaks a limit gets an error frame or a reset
and a strike; enough strikes refuse it for a while (``net.limits.Penalties``); everyone else keeps
being served. A peer without standing that sends a frame no honest encoder writes (``HostileFrame``:
a header that does not decode, or builds more containers than its cap) is refused at once. A refused peer's open
streams are cancelled, and ``refusing(peer)`` lets the muxer reset its new ones at the first frame,
before protocol negotiation.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable

import trio

from swarmlm.errors import SwarmError
from swarmlm.net.frames import DEFAULT_LIMITS, PREFIX_BYTES, FrameError, HostileFrame, Limits
from swarmlm.net.limits import ByteBudget, Penalties, RateTable, TokenBucket
from swarmlm.net.rpc import (BAD_REQUEST, BUSY, DEADLINE, INTERNAL, NOT_FOUND, ByteStream, FrameStream,
                             RpcError, StreamClosedError, _reset_quietly)

log = logging.getLogger("swarmlm.rpc")


@dataclass
class CallContext:
    """What a handler knows about its call."""

    peer: str
    protocol: str
    method: str
    deadline: float  # trio clock


class ServerCall:
    """The server side of a streaming call: receive the client's items, send items back."""

    def __init__(self, fs: FrameStream, inbox: trio.MemoryReceiveChannel, ctx: CallContext,
                 budget: ByteBudget | None = None) -> None:
        self._fs = fs
        self._inbox = inbox
        self._budget = budget
        self.ctx = ctx

    async def send(self, item: Any) -> None:
        await self._fs.send({"s": item})

    async def _next(self) -> Any:
        got = await self._inbox.receive()
        if got is None:
            return None
        item, size = got
        if self._budget is not None:  # the handler holds it now: no longer a buffered frame
            self._budget.release(self.ctx.peer, size)
        return (item,)

    async def recv(self) -> Any:
        """Next item from the client; raises StreamClosedError when the client ended its side."""
        got = await self._next()
        if got is None:
            raise StreamClosedError("client ended the stream", self.ctx.peer)
        return got[0]

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[Any]:
        while True:
            got = await self._next()
            if got is None:
                return
            yield got[0]


UnaryHandler = Callable[[CallContext, Any], Awaitable[Any]]
StreamHandler = Callable[[ServerCall, Any], Awaitable[Any]]


@dataclass
class ServerLimits:
    max_streams_per_peer: int = 64
    max_streams_total: int = 2048
    max_calls_per_peer: int = 32
    max_calls_total: int = 256
    max_deadline_s: float = 600.0
    default_deadline_s: float = 60.0
    idle_timeout_s: float = 300.0  # a stream with no call open is closed after this long without a frame
    max_buffered_per_peer: int = 80 << 20  # received item frames a handler has not taken yet (>= 1 max frame)
    max_buffered_total: int = 256 << 20
    reserved_buffered: int = 96 << 20  # of the total, only for trusted peers
    # Decoding a msgpack header holds the GIL ~0.2 us per value and a hostile header is one value
    # per byte (tensors and bytes over 16 KiB travel out of band and cost nothing to decode). So an
    # untrusted peer's header is at most 32 KiB (a ~6 ms stall) and its header bytes are paced.
    untrusted_header_bytes: int = 32 << 10
    # ... and builds at most this many lists and maps: a header of one empty list per byte keeps
    # tens of thousands of containers alive, and each survivor of a young collection is walked
    # again by every full one (0.3-0.5 s stalls every few seconds under a 256-identity bomb)
    untrusted_header_containers: int = 4096
    hostile_frame_strikes: int = 8  # for a ``HostileFrame`` from a peer without standing: all of Penalties.strikes
    header_rate_bps: float = 64 << 10  # per untrusted peer
    header_burst: float = 256 << 10
    # all untrusted peers together: the costliest capped header (4000 lists) decodes at ~50 ms per MiB: <= 5% of a core
    header_rate_total_bps: float = 1 << 20
    header_burst_total: float = 1 << 20


@dataclass
class ServerStats:
    calls: int = 0
    errors: int = 0
    rejected_frames: int = 0
    rejected_streams: int = 0
    throttled: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    by_code: dict[str, int] = field(default_factory=lambda: defaultdict(int))


class RpcServer:
    """Dispatches incoming streams of registered protocols to handlers."""

    def __init__(self, limits: ServerLimits | None = None, frame_limits: Limits = DEFAULT_LIMITS) -> None:
        self.limits = limits or ServerLimits()
        self.frame_limits = frame_limits
        self._unary: dict[tuple[str, str], UnaryHandler] = {}
        self._stream: dict[tuple[str, str], StreamHandler] = {}
        self._streams_per_peer: dict[str, int] = defaultdict(int)
        self._streams_total = 0
        self._calls_per_peer: dict[str, int] = defaultdict(int)
        self._calls_total = 0
        self.stats = ServerStats()
        self.trusted: Callable[[str], bool] = lambda peer: False  # the node sets it (standing, anchors)
        self.penalties = Penalties()
        lim = self.limits
        self.buffered = ByteBudget(lim.max_buffered_per_peer, lim.max_buffered_total, lim.reserved_buffered)
        self._header_rates = RateTable(lim.header_rate_bps, lim.header_burst)
        self._header_total = TokenBucket(lim.header_rate_total_bps, lim.header_burst_total)
        self._scopes: dict[str, set[trio.CancelScope]] = defaultdict(set)  # each peer's served streams
        self._refusals, self._refusal_logged = 0, -math.inf

    def _strike(self, peer: str, reason: str, weight: int = 1) -> None:
        now = trio.current_time()
        if self.penalties.strike(peer, now, reason, weight):
            self._refusals += 1
            if now - self._refusal_logged >= 60.0:  # one line a minute, however many identities an attacker has
                why = "it sent a frame no honest peer writes" if reason == "hostile_frame" else \
                    f"it broke the {reason} limit repeatedly"
                more = f" ({self._refusals - 1} more peers refused since the last report)" if self._refusals > 1 else ""
                log.warning("refusing peer %s for %.0f s: %s%s", peer[-8:], self.penalties.refuse_s, why, more)
                self._refusal_logged, self._refusals = now, 0
            for scope in self._scopes.get(peer, ()):  # what it has open ends now: relay holds, slow reads
                scope.cancel()

    def refusing(self, peer: str) -> bool:
        """Whether ``peer`` is refused now (the muxer asks before it accepts a stream of the peer)."""
        if self.penalties.refused(peer, trio.current_time()):
            self.stats.rejected_streams += 1
            return True
        return False

    def protocols(self) -> set[str]:
        return {p for p, _ in self._unary} | {p for p, _ in self._stream}

    def add_unary(self, protocol: str, method: str, handler: UnaryHandler) -> None:
        self._unary[(protocol, method)] = handler

    def add_stream(self, protocol: str, method: str, handler: StreamHandler) -> None:
        self._stream[(protocol, method)] = handler

    async def serve_stream(self, stream: ByteStream, protocol: str, peer: str) -> None:
        """Serve calls on one incoming stream until the client closes it. Never raises."""
        if self.refusing(peer):  # the fast path's muxer already resets its streams at the SYN
            await _reset_quietly(stream)
            return
        if (self._streams_per_peer.get(peer, 0) >= self.limits.max_streams_per_peer
                or self._streams_total >= self.limits.max_streams_total):
            self.stats.rejected_streams += 1
            if self._streams_per_peer.get(peer, 0) >= self.limits.max_streams_per_peer:
                log.warning("peer %s opened more than %d streams; resetting", peer[-8:], self.limits.max_streams_per_peer)
                self._strike(peer, "streams")
            await _reset_quietly(stream)
            return
        self._streams_per_peer[peer] += 1
        self._streams_total += 1
        fs = FrameStream(stream, self.frame_limits, peer)
        scope = trio.CancelScope()
        self._scopes[peer].add(scope)
        try:
            with scope:
                await self._serve(fs, protocol, peer)
        except StreamClosedError:
            pass
        except FrameError as exc:
            self.stats.rejected_frames += 1
            if isinstance(exc, HostileFrame) and not self.trusted(peer):
                self._strike(peer, "hostile_frame", self.limits.hostile_frame_strikes)
            else:
                self._strike(peer, "frame")
            log.info("bad frame from %s on %s: %s", peer[-8:], protocol, exc)
            with trio.move_on_after(1):
                try:
                    await fs.send({"e": [BAD_REQUEST, str(exc)]})
                except Exception:
                    pass
            await _reset_quietly(stream)
        except Exception:
            log.exception("RPC stream from %s on %s failed", peer[-8:], protocol)
            await _reset_quietly(stream)
        finally:
            self._scopes[peer].discard(scope)
            if not self._scopes[peer]:
                del self._scopes[peer]
            self._streams_total -= 1
            self._streams_per_peer[peer] -= 1
            if not self._streams_per_peer[peer]:
                del self._streams_per_peer[peer]
            self.stats.bytes_in += fs.bytes_in
            self.stats.bytes_out += fs.bytes_out
        if scope.cancelled_caught:  # refused while this stream was open: no goodbye
            await _reset_quietly(stream)
            return
        with trio.move_on_after(1):
            try:
                await stream.close()
            except Exception:
                pass

    async def _serve(self, fs: FrameStream, protocol: str, peer: str) -> None:
        # One reader per stream: frames go to `inbox`; it never waits for a handler to finish.
        send_ch, recv_ch = trio.open_memory_channel[Any](16)
        state: dict[str, Any] = {"scope": None, "items": None, "error": None, "idle": None}

        async def reader() -> None:
            try:
                while True:
                    msg, size = await self._read(fs, peer, state)
                    items = state["items"]
                    if isinstance(msg, dict) and items is not None and ("s" in msg or "end" in msg):
                        if "s" not in msg:
                            await items.send(None)
                            continue
                        if not self.buffered.try_acquire(peer, size, self.trusted(peer)):
                            self._strike(peer, "buffered_bytes")
                            raise FrameError("too many bytes waiting for the handler; slow down")
                        try:
                            await items.send((msg["s"], size))
                        except BaseException:
                            self.buffered.release(peer, size)
                            raise
                    elif isinstance(msg, dict) and msg.get("cancel") and state["scope"] is not None:
                        state["scope"].cancel()
                    else:
                        # a request: wait until its call is set up, so that the item frames the
                        # client streams right behind it reach the call and not the dispatcher
                        taken = trio.Event()
                        await send_ch.send((msg, taken))
                        msg = None
                        await taken.wait()
                    # hold no decoded frame while waiting for the next one: a peer that sends a large
                    # header and then reads our answer slowly (or never) must not pin it in memory
                    msg = None
            except (StreamClosedError, FrameError) as exc:
                if isinstance(exc, FrameError):
                    state["error"] = exc
                if state["scope"] is not None:  # the client went away or broke the protocol: stop its work
                    state["scope"].cancel()
            finally:
                send_ch.close()

        # errors are carried out of the nursery by hand: trio would wrap them in an ExceptionGroup
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            try:
                async for request in recv_ch:
                    msg, taken = request
                    request = None
                    state["taken"] = taken
                    try:
                        call = self._dispatch(fs, protocol, peer, msg, state)
                        msg = None  # the call holds the frame only as long as it needs it (``_dispatch``)
                        await call
                    finally:
                        taken.set()
            except (StreamClosedError, FrameError) as exc:
                state["error"] = state["error"] or exc
            nursery.cancel_scope.cancel()
        if state.get("error") is not None:
            raise state["error"]

    async def _read(self, fs: FrameStream, peer: str, state: dict) -> tuple[Any, int]:
        """The next frame and its size. Without an open call the stream may idle ``idle_timeout_s``;
        an untrusted peer's header bytes are paced by its rate (decoding them costs our CPU)."""
        with trio.CancelScope() as idle:
            state["idle"] = idle
            if state["scope"] is None:
                idle.deadline = trio.current_time() + self.limits.idle_timeout_s
            total, header_len = await fs.recv_prefix()
        state["idle"] = None
        if idle.cancelled_caught:
            raise StreamClosedError("stream idle without a call", peer)
        cap = None
        if not self.trusted(peer):
            cap = self.limits.untrusted_header_containers
            if header_len > self.limits.untrusted_header_bytes:
                raise FrameError(f"frame header of {header_len} bytes: peers without standing send at most "
                                 f"{self.limits.untrusted_header_bytes}")
            now = trio.current_time()
            wait = max(self._header_rates.bucket(peer).take(header_len, now), self._header_total.take(header_len, now))
            if wait > 0:
                self.stats.throttled += 1
                await trio.sleep(min(wait, 30.0))
        return await fs.recv_body(total, header_len, cap), PREFIX_BYTES + total

    def _call_ended(self, state: dict) -> None:
        idle = state.get("idle")
        if idle is not None:
            idle.deadline = trio.current_time() + self.limits.idle_timeout_s

    async def _dispatch(self, fs: FrameStream, protocol: str, peer: str, msg: Any, state: dict) -> None:
        if not (isinstance(msg, dict) and isinstance(msg.get("m"), str)):
            msg = None
            self.stats.rejected_frames += 1
            await fs.send({"e": [BAD_REQUEST, "expected a request frame {m, a, d}"]})
            return
        method, d, args = msg["m"], msg.get("d"), [msg.get("a")]
        msg = None  # the handler holds its arguments, we hold nothing of the frame (see ``_answer``)
        key = (protocol, method)
        unary, streaming = self._unary.get(key), self._stream.get(key)
        if unary is None and streaming is None:
            await self._error(fs, NOT_FOUND, f"no method {method!r} on {protocol}")
            return
        seconds = self.limits.default_deadline_s if not isinstance(d, (int, float)) or not math.isfinite(d) or d <= 0 \
            else min(float(d), self.limits.max_deadline_s)
        d = None
        if self._calls_per_peer[peer] >= self.limits.max_calls_per_peer or self._calls_total >= self.limits.max_calls_total:
            await self._error(fs, BUSY, "too many concurrent calls; retry later or use another peer")
            return
        ctx = CallContext(peer, protocol, method, trio.current_time() + seconds)
        self._calls_per_peer[peer] += 1
        self._calls_total += 1
        self.stats.calls += 1
        items_send, items_recv = trio.open_memory_channel[Any](64)
        try:
            reply = await self._answer(fs, ctx, seconds, args, unary, streaming, items_send, items_recv, state)
            try:
                await fs.send(reply)
            except (StreamClosedError, FrameError):
                raise
            except Exception as exc:  # a result that cannot be encoded: the caller still gets an answer
                log.exception("handler %s %s: its result could not be sent", protocol, method)
                await self._error(fs, INTERNAL, f"{type(exc).__name__}: {exc}")
        finally:
            state["scope"] = None
            state["items"] = None
            items_send.close()
            _release_queued(items_recv, self.buffered, peer)
            self._call_ended(state)
            self._calls_per_peer[peer] -= 1
            if not self._calls_per_peer[peer]:
                del self._calls_per_peer[peer]
            self._calls_total -= 1

    async def _answer(self, fs: FrameStream, ctx: CallContext, seconds: float, args: list, unary: Any,
                      streaming: Any, items_send: Any, items_recv: Any, state: dict) -> dict:
        """Run the handler on ``args.pop()``; the reply frame (a result or an error). By the time the
        reply goes out, neither the request's arguments nor a handler's exception (its traceback
        holds the handler's frame, so the arguments) are referenced any more: a peer that sends a
        header of 30k values and then reads our answer slowly pins nothing while it is sent."""
        method = ctx.method
        try:
            with trio.CancelScope(deadline=ctx.deadline) as scope:
                state["scope"] = scope
                if state.get("idle") is not None:
                    state["idle"].deadline = math.inf
                if streaming is not None:
                    state["items"] = items_send
                state["taken"].set()
                try:
                    if streaming is not None:
                        result = await streaming(ServerCall(fs, items_recv, ctx, self.buffered), args.pop())
                    else:
                        result = await unary(ctx, args.pop())
                except BaseExceptionGroup as group:  # a handler's nursery: answer for its one real error
                    leaf = _leaf(group)
                    if leaf is group:
                        raise
                    raise leaf from None
            if scope.cancelled_caught:
                return self._error_frame(DEADLINE, f"{method} did not finish within {seconds:.1f} s")
            return {"r": result}
        except RpcError as exc:
            return self._error_frame(exc.code, exc.message)
        except (StreamClosedError, FrameError):
            raise
        except SwarmError as exc:
            return self._error_frame(BAD_REQUEST, str(exc))
        except Exception as exc:
            log.exception("handler %s %s failed", ctx.protocol, method)
            return self._error_frame(INTERNAL, f"{type(exc).__name__}: {exc}")

    def _error_frame(self, code: str, message: str) -> dict:
        self.stats.errors += 1
        self.stats.by_code[code] += 1
        return {"e": [code, message]}

    async def _error(self, fs: FrameStream, code: str, message: str) -> None:
        await fs.send(self._error_frame(code, message))


def _leaf(group: BaseExceptionGroup) -> BaseException:
    """The one exception that matters in a handler's exception group: the first that is not a
    cancellation (an RpcError/SwarmError answers the caller with its own code); the group itself
    when there is none."""
    leaves: list[BaseException] = []

    def walk(g: BaseExceptionGroup) -> None:
        for e in g.exceptions:
            walk(e) if isinstance(e, BaseExceptionGroup) else leaves.append(e)

    walk(group)
    real = [e for e in leaves if not isinstance(e, trio.Cancelled)]
    for kind in (RpcError, SwarmError):
        for e in real:
            if isinstance(e, kind):
                return e
    return real[0] if len(real) == 1 else group


def _release_queued(items: trio.MemoryReceiveChannel, budget: ByteBudget, peer: str) -> None:
    """Give back the budget of item frames the handler never took."""
    while True:
        try:
            got = items.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            return
        if got is not None:
            budget.release(peer, got[1])
