"""Typed request/response and bidirectional streaming RPC over any byte stream.

One libp2p protocol id per service; a service has named methods. On a stream the client sends a
request frame ``{"m": method, "a": args, "d": seconds_left}``; the server answers with
``{"r": result}`` or ``{"e": [code, message]}``; streaming methods exchange ``{"s": item}`` frames
in both directions and ``{"end": true}`` closes a direction. A stream carries one call at a time
and is reused for the next (the client keeps a small pool per peer and protocol). Cancelling a
call on the client resets its stream; the server's reader sees that and cancels the handler.

Each server stream has exactly one reader task that keeps reading while the handler computes
(yamux resets a stream whose receiver stops reading for 5 s); handlers that use the CPU must run
it in ``trio.to_thread.run_sync``. Limits: frame sizes (``frames.Limits``), open streams per peer,
concurrent calls per peer and in total; a peer that breaks them gets an error frame or a reset,
and everyone else keeps being served.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any, Awaitable, Callable, Protocol

import trio

from swarmlm.errors import SwarmError
from swarmlm.net.frames import DEFAULT_LIMITS, PREFIX_BYTES, FrameError, Limits, _LEN, decode_body, encode_frame

log = logging.getLogger("swarmlm.rpc")

# error codes carried in error frames
BAD_REQUEST = "bad_request"
NOT_FOUND = "not_found"
INTERNAL = "internal"
BUSY = "busy"
DEADLINE = "deadline"
LIMIT = "limit"
UNAVAILABLE = "unavailable"


class RpcError(SwarmError):
    """An error answered by the remote side (``code``) or a failure to reach it."""

    def __init__(self, code: str, message: str, peer: str | None = None) -> None:
        super().__init__(f"{code}: {message}" + (f" (peer {peer})" if peer else ""))
        self.code = code
        self.message = message
        self.peer = peer


class FrameTimeout(FrameError):
    """A frame that did not arrive within its read deadline (a peer trickling bytes)."""


OFFLOAD_HEADER_BYTES = 64 * 1024
_DECODE_LIMITER: trio.lowlevel.RunVar = trio.lowlevel.RunVar("swarmlm_decode_limiter")


def _decode_limiter() -> trio.CapacityLimiter:
    """One large-header decode at a time per trio run (each holds the GIL while msgpack works)."""
    try:
        return _DECODE_LIMITER.get()
    except LookupError:
        lim = trio.CapacityLimiter(1)
        _DECODE_LIMITER.set(lim)
        return lim


class StreamClosedError(RpcError):
    def __init__(self, message: str = "stream closed by the other side", peer: str | None = None) -> None:
        super().__init__(UNAVAILABLE, message, peer)


class ByteStream(Protocol):
    async def read(self, n: int) -> bytes: ...
    async def write(self, data: bytes) -> None: ...
    async def close(self) -> None: ...
    async def reset(self) -> None: ...


class FrameStream:
    """Frames over a byte stream: ``send(value)`` / ``recv() -> value``; EOF -> StreamClosedError."""

    # py-libp2p streams raise their own EOF/reset types; map them without importing libp2p here
    _CLOSED_NAMES = {"StreamEOF", "StreamReset", "StreamClosed", "StreamError", "MuxedStreamEOF",
                     "MuxedStreamReset", "MuxedStreamError", "EndOfChannel", "ClosedResourceError",
                     "BrokenResourceError", "RawConnError", "IOException", "ConnectionClosedError"}

    def __init__(self, stream: ByteStream, limits: Limits = DEFAULT_LIMITS, peer: str | None = None) -> None:
        self.stream = stream
        self.limits = limits
        self.peer = peer
        self.bytes_in = 0
        self.bytes_out = 0
        # fewer copies where the stream offers them (net.transport's yamux streams, also under a
        # py-libp2p NetStream): scatter writes, and reads straight into a frame-sized buffer
        inner = getattr(stream, "muxed_stream", stream)
        self._write_parts = getattr(inner, "write_parts", None)
        self._readinto = getattr(inner, "readinto", None)

    def _closed(self, exc: BaseException) -> bool:
        return isinstance(exc, (EOFError, ConnectionError, trio.BrokenResourceError,
                                trio.ClosedResourceError)) or type(exc).__name__ in self._CLOSED_NAMES

    async def send(self, value: Any) -> None:
        """Write one frame; a peer that does not take it within the write deadline (it stopped
        reading) gets ``StreamClosedError`` -- the caller resets the stream."""
        chunks = encode_frame(value, self.limits)
        size = sum(memoryview(c).nbytes for c in chunks)
        # small frames: one write (one muxer frame, one encrypted record); large: no join copy
        data = b"".join(chunks) if size <= 256 * 1024 and self._write_parts is None else None
        with trio.move_on_after(self.limits.io_deadline(size, self.limits.write_timeout_s)) as late:
            try:
                if data is not None:
                    await self.stream.write(data)
                elif self._write_parts is not None:
                    await self._write_parts(chunks)
                else:
                    for c in chunks:
                        if memoryview(c).nbytes:
                            await self.stream.write(c)
            except Exception as exc:
                if self._closed(exc):
                    raise StreamClosedError(f"send failed: {type(exc).__name__}", self.peer) from None
                raise
        if late.cancelled_caught:
            raise StreamClosedError("the peer stopped reading (write deadline passed)", self.peer)
        self.bytes_out += size

    async def _read_exact(self, n: int, into: bytearray) -> None:
        while len(into) < n:
            try:
                chunk = await self.stream.read(n - len(into))
            except Exception as exc:
                if self._closed(exc):
                    raise StreamClosedError(peer=self.peer) from None
                raise
            if not chunk:
                raise StreamClosedError(peer=self.peer)
            into += chunk

    async def _fill(self, buf: Any) -> None:
        """Fill ``buf`` completely through ``readinto`` (no intermediate chunks)."""
        with memoryview(buf) as view:
            got, n = 0, len(buf)
            while got < n:
                try:
                    k = await self._readinto(view[got:])
                except Exception as exc:
                    if self._closed(exc):
                        raise StreamClosedError(peer=self.peer) from None
                    raise
                if not k:
                    raise StreamClosedError(peer=self.peer)
                got += k

    async def recv_prefix(self) -> tuple[int, int]:
        """Wait for the next frame's length prefix: (total, header length), checked."""
        prefix = bytearray(PREFIX_BYTES) if self._readinto is not None else bytearray()
        if self._readinto is not None:
            await self._fill(prefix)
        else:
            await self._read_exact(PREFIX_BYTES, prefix)
        total, header_len = _LEN.unpack(prefix)
        if total > self.limits.max_frame_bytes:
            raise FrameError(f"frame of {total} bytes exceeds the {self.limits.max_frame_bytes} byte limit")
        if header_len > total:
            raise FrameError("frame header is longer than the frame")
        return total, header_len

    async def recv_body(self, total: int, header_len: int, max_containers: int | None = None) -> Any:
        """The frame after its prefix: it must arrive within the read deadline (a frame that
        trickles in is a ``FrameTimeout``); a large header is decoded in a worker thread.
        ``max_containers``: at most this many lists and maps in the header (``decode_body``)."""
        with trio.move_on_after(self.limits.io_deadline(total, self.limits.read_timeout_s)) as late:
            if self._readinto is not None:
                body = _uninitialized(total)  # every byte is written by _fill: skip zeroing it first
                await self._fill(body)
            else:
                body = bytearray()
                await self._read_exact(total, body)
        if late.cancelled_caught:
            raise FrameTimeout(f"a frame of {total} bytes did not arrive within the read deadline")
        self.bytes_in += PREFIX_BYTES + total
        if header_len > OFFLOAD_HEADER_BYTES:  # hostile headers cost CPU: keep the event loop free
            return await trio.to_thread.run_sync(decode_body, body, header_len, self.limits, max_containers,
                                                 limiter=_decode_limiter())
        return decode_body(body, header_len, self.limits, max_containers)

    async def recv(self) -> Any:
        total, header_len = await self.recv_prefix()
        return await self.recv_body(total, header_len)


def _uninitialized(n: int) -> Any:
    """A writable n-byte buffer without the memset of ``bytearray(n)`` (a sizeable share of the
    receive cost of a megabyte frame); tensors decoded from it share its memory."""
    if n < 65536:
        return bytearray(n)
    import numpy  # lazy: ~0.1 s to import, and only frames of 64 KiB or more need it

    return numpy.empty(n, dtype=numpy.uint8)


async def _reset_quietly(stream: ByteStream) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(1):
        try:
            await stream.reset()
        except Exception:
            pass


def _raise_for(msg: Any, peer: str | None) -> Any:
    if isinstance(msg, dict):
        if "r" in msg:
            return msg["r"]
        e = msg.get("e")
        if isinstance(e, list) and len(e) == 2:
            raise RpcError(str(e[0]), str(e[1]), peer)
    raise RpcError(BAD_REQUEST, "malformed response frame", peer)


class ClientCall:
    """The client side of a streaming call (see ``RpcClient.stream``)."""

    def __init__(self, fs: FrameStream, peer: str) -> None:
        self._fs = fs
        self.peer = peer
        self.result: Any = None
        self.done = False

    async def send(self, item: Any) -> None:
        await self._fs.send({"s": item})

    async def end(self) -> None:
        """Tell the server the client has no more items."""
        await self._fs.send({"end": True})

    async def recv(self) -> Any:
        """Next item from the server; raises ``StopAsyncIteration`` when it returned (see ``result``)."""
        if self.done:
            raise StopAsyncIteration
        msg = await self._fs.recv()
        if isinstance(msg, dict) and "s" in msg:
            return msg["s"]
        self.done = True
        self.result = _raise_for(msg, self.peer)
        raise StopAsyncIteration

    def __aiter__(self) -> "ClientCall":
        return self

    async def __anext__(self) -> Any:
        return await self.recv()


Opener = Callable[[str, str], Awaitable[ByteStream]]


class RpcClient:
    """Calls methods on peers. ``opener(peer, protocol)`` opens a new byte stream to a peer."""

    def __init__(self, opener: Opener, frame_limits: Limits = DEFAULT_LIMITS, pool_size: int = 4) -> None:
        self._open = opener
        self.frame_limits = frame_limits
        self.pool_size = pool_size
        self._idle: dict[tuple[str, str], list[FrameStream]] = defaultdict(list)

    async def _take(self, peer: str, protocol: str) -> tuple[FrameStream, bool]:
        """A stream for one call: a pooled idle one (reused=True) or a new one."""
        idle = self._idle.get((peer, protocol))
        if idle:
            return idle.pop(), True
        try:
            stream = await self._open(peer, protocol)
        except RpcError:
            raise
        except trio.Cancelled:
            raise
        except Exception as exc:
            raise RpcError(UNAVAILABLE, f"cannot open {protocol}: {type(exc).__name__}: {exc}", peer) from None
        return FrameStream(stream, self.frame_limits, peer), False

    async def _give_back(self, peer: str, protocol: str, fs: FrameStream) -> None:
        idle = self._idle[(peer, protocol)]
        if len(idle) < self.pool_size:
            idle.append(fs)
        else:
            with trio.move_on_after(1):
                try:
                    await fs.stream.close()
                except Exception:
                    pass

    async def forget(self, peer: str) -> None:
        """Drop pooled streams to ``peer`` (after it disconnected or misbehaved)."""
        for key in [k for k in self._idle if k[0] == peer]:
            for fs in self._idle.pop(key):
                await _reset_quietly(fs.stream)

    async def call(self, peer: str, protocol: str, method: str, args: Any = None, timeout: float = 30.0) -> Any:
        """One request, one response. Raises RpcError (``code`` tells why) or trio.TooSlowError."""
        request = {"m": method, "a": args, "d": timeout}
        with trio.fail_after(timeout):
            for attempt in (0, 1):
                fs, reused = await self._take(peer, protocol)
                try:
                    await fs.send(request)
                    msg = await fs.recv()
                except StreamClosedError:
                    await _reset_quietly(fs.stream)
                    if reused and attempt == 0:  # a pooled stream the server had closed: once more, fresh
                        continue
                    raise
                except BaseException:  # cancelled, timed out, bad frame: reset so the server stops too
                    await _reset_quietly(fs.stream)
                    raise
                await self._give_back(peer, protocol, fs)
                return _raise_for(msg, peer)
        raise AssertionError("unreachable")

    def stream(self, peer: str, protocol: str, method: str, args: Any = None, timeout: float = 600.0):
        """``async with client.stream(...) as call:`` a bidirectional call; see ``ClientCall``."""
        return _StreamCall(self, peer, protocol, method, args, timeout)


class _StreamCall:
    def __init__(self, client: RpcClient, peer: str, protocol: str, method: str, args: Any, timeout: float) -> None:
        self.client, self.peer, self.protocol, self.method, self.args, self.timeout = (
            client, peer, protocol, method, args, timeout)
        self.fs: FrameStream | None = None
        self.call: ClientCall | None = None

    async def __aenter__(self) -> ClientCall:
        self.fs, _ = await self.client._take(self.peer, self.protocol)
        try:
            await self.fs.send({"m": self.method, "a": self.args, "d": self.timeout})
        except BaseException:
            await _reset_quietly(self.fs.stream)
            raise
        self.call = ClientCall(self.fs, self.peer)
        return self.call

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        assert self.fs is not None and self.call is not None
        if exc_type is None and self.call.done:
            await self.client._give_back(self.peer, self.protocol, self.fs)
        else:
            await _reset_quietly(self.fs.stream)

