"""A faster Yamux for py-libp2p 0.8.1 (protocol ``/yamux/1.0.0``, frames as in the spec).

Stock polls ``trio.sleep(0.01)`` while a stream's send window is zero (at 256 KiB per window that
caps one stream near 25 MiB/s), sends a WINDOW_UPDATE frame after *every* read (two extra encrypted
records per RPC), formats debug f-strings for every frame, and copies each chunk three times.
``FastYamuxStream`` wakes writers with a ``trio.Event`` when credit arrives, grants a ``window``-byte
receive window up front (in the SYN / ACK frame, as go-yamux does), returns credit in one update
once half of it is consumed, and writes all frames that the window allows for one write as a
single scatter write to the secured connection. ``FastYamux.handle_incoming`` is a lean frame loop
that appends decrypted bytes straight into the stream's buffer and treats a peer that overruns its
window or sends garbage as a protocol error, closing that one connection (GO_AWAY).

Everything else (stream close/reset, backlog, keep-alive pings, stale-stream sweeping) is inherited.
"""

from __future__ import annotations

import logging
import struct
from collections import deque
from typing import Any, Callable

import trio
from libp2p.exceptions import ParseError
from libp2p.io.utils import read_exactly
from libp2p.protocol_muxer.multiselect_client import MULTISELECT_PROTOCOL_ID as _MSS
from libp2p.stream_muxer.exceptions import MuxedStreamEOF, MuxedStreamError, MuxedStreamReset
from libp2p.stream_muxer.yamux import yamux as _y
from libp2p.utils import read_delim

from swarmlm.net.transport.buffers import ChunkBuffer
from swarmlm.net.transport.fastnoise import FastLock, FastNoiseSession
from swarmlm.net.transport.upstream import replaces

log = logging.getLogger("swarmlm.fastpath")

YAMUX_PROTOCOL_ID = _y.PROTOCOL_ID  # "/yamux/1.0.0": unchanged, so we interoperate
_HDR = struct.Struct(_y.YAMUX_HEADER_FORMAT)
_HEADER = _HDR.size
_INITIAL_WINDOW = _y.DEFAULT_WINDOW_SIZE  # 256 KiB, fixed by the yamux spec
replaces("libp2p.stream_muxer.yamux.yamux.PROTOCOL_ID", "f8df0e76746c860e")
replaces("libp2p.stream_muxer.yamux.yamux.YAMUX_HEADER_FORMAT", "cdc940955bc10554")
replaces("libp2p.stream_muxer.yamux.yamux.DEFAULT_WINDOW_SIZE", "54faea9b3eeffce2")


class YamuxProtocolError(Exception):
    """The peer broke the yamux protocol: its connection is closed."""


# py-libp2p 0.8.1 YamuxStream.write polls for credit and sends one frame per chunk; .read sends a
# window update after every read; send_window is a plain attribute (here a property that wakes writers).
@replaces("libp2p.stream_muxer.yamux.yamux.YamuxStream.__init__", "ab24c0709285d573")
@replaces("libp2p.stream_muxer.yamux.yamux.YamuxStream.write", "d87f74dfb53ab194")
@replaces("libp2p.stream_muxer.yamux.yamux.YamuxStream.read", "ca585f2199fd4e83")
class FastYamuxStream(_y.YamuxStream):
    """Event-driven send window, up-front receive window, batched credit and batched frames."""

    def __init__(self, stream_id: int, conn: "FastYamux", is_initiator: bool) -> None:
        self._credit = trio.Event()
        self._send_window = 0
        super().__init__(stream_id, conn, is_initiator)
        self.recv_window = conn.window  # we grant (window - 256 KiB) in the SYN / ACK frame
        self.target_recv_window = conn.window
        self._unreleased = 0
        self._writing = FastLock()

    @property  # type: ignore[override]
    def send_window(self) -> int:
        return self._send_window

    @send_window.setter
    def send_window(self, value: int) -> None:
        grew = value > self._send_window
        self._send_window = value
        if grew and value > 0:
            self._credit.set()

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        await self.write_parts([data])

    async def write_parts(self, parts: list[Any]) -> None:
        """Write the concatenation of ``parts`` (bytes-like) as DATA frames, without joining it."""
        queue = deque(v if v.format == "B" and v.ndim == 1 else v.cast("B")
                      for v in (p if isinstance(p, memoryview) else memoryview(p) for p in parts))
        total = sum(len(v) for v in queue)
        conn: FastYamux = self.conn  # type: ignore[assignment]
        frame_max = conn.max_frame
        sent = 0
        async with self._writing:  # one write stays contiguous on the stream
            while sent < total or not total:
                if self.send_closed or self.closed:
                    raise MuxedStreamError("Stream is closed for sending")
                if not total:
                    return
                if self._send_window <= 0:
                    await self._wait_credit()
                    continue
                budget = min(self._send_window, total - sent, conn.write_batch)
                self._send_window -= budget
                sent += budget
                out: list[Any] = []
                while budget:
                    n = min(budget, frame_max)
                    out.append(_HDR.pack(0, _y.TYPE_DATA, 0, self.stream_id, n))
                    budget -= n
                    while n:
                        head = queue[0]
                        if len(head) <= n:
                            out.append(queue.popleft())
                            n -= len(head)
                        else:
                            out.append(head[:n])
                            queue[0] = head[n:]
                            n = 0
                await conn._write_parts(out)

    async def readinto(self, view: memoryview) -> int:
        """Copy into ``view`` as many bytes as are here (at least one: waits); returns how many."""
        conn = self.conn
        sid = self.stream_id
        while True:
            buf = conn.stream_buffers.get(sid)
            if buf:
                k = buf.take_into(view)
                await self._release(k)
                if self.closed and not buf:
                    await conn._finalize_stream(self, fully_closed=True)
                return k
            await self._wait_readable(buf)

    async def _wait_readable(self, buf: ChunkBuffer | None) -> None:
        """Wait for data, or raise EOF / reset (the buffer is empty or gone)."""
        conn = self.conn
        if self.reset_received:
            raise MuxedStreamReset("Stream was reset")
        if buf is None or self.recv_closed:
            raise MuxedStreamEOF("Stream is closed for receiving")
        if conn.event_shutting_down.is_set():
            raise MuxedStreamEOF("Connection shut down")
        event = conn.stream_events.get(self.stream_id)
        if event is None:
            raise MuxedStreamEOF("Stream was removed")
        if event.is_set():  # stale wake-up: re-arm; the caller looks again
            conn.stream_events[self.stream_id] = trio.Event()
            return
        await event.wait()

    async def _wait_credit(self) -> None:
        with trio.move_on_after(self.conn.window_wait_s) as scope:  # type: ignore[attr-defined]
            while self._send_window <= 0 and not self.closed:
                self._credit = trio.Event()
                await self._credit.wait()
        if scope.cancelled_caught:
            raise MuxedStreamError(f"Timed out waiting for window update after {scope.deadline} s")

    async def _release(self, n: int) -> None:
        """Give ``n`` consumed bytes back to the sender, batched to half a window per update."""
        self._unreleased += n
        if self._unreleased < self.target_recv_window // 2 or self.recv_closed:
            return  # not worth an update yet, or the peer has finished sending
        inc, self._unreleased = self._unreleased, 0
        self.recv_window += inc
        try:
            await self.conn._write_frame(_HDR.pack(0, _y.TYPE_WINDOW_UPDATE, 0, self.stream_id, inc))
        except Exception as exc:  # the connection is going away; the data was read fine
            log.debug("window update on stream %d failed: %s", self.stream_id, exc)

    async def read(self, n: int | None = -1) -> bytes:
        if n is None:
            n = -1
        conn = self.conn
        sid = self.stream_id
        while True:
            buf = conn.stream_buffers.get(sid)
            if buf:
                data = buf.take(n)
                await self._release(len(data))
                if self.closed and not buf:
                    await conn._finalize_stream(self, fully_closed=True)
                return data
            await self._wait_readable(buf)


# py-libp2p 0.8.1 Yamux: its frame loop (handle_incoming) and open_stream build stock streams and
# buffers; close and _cleanup_on_error are wrapped to wake our writers; the rest is inherited.
@replaces("libp2p.stream_muxer.yamux.yamux.Yamux.__init__", "3b11a2a71ca444ca")
@replaces("libp2p.stream_muxer.yamux.yamux.Yamux._write_frame", "16ff969cdd0d2b1b")
@replaces("libp2p.stream_muxer.yamux.yamux.Yamux.close", "d80b27e69ccd1b89")
@replaces("libp2p.stream_muxer.yamux.yamux.Yamux._cleanup_on_error", "4fed61a999a34989")
@replaces("libp2p.stream_muxer.yamux.yamux.Yamux.open_stream", "f3e0ef79ec21d0cb")
@replaces("libp2p.stream_muxer.yamux.yamux.Yamux.handle_incoming", "ad15ff6943feac20")
@replaces("libp2p.stream_muxer.yamux.yamux.Yamux._finalize_stream", "ef7ab7de0fb89264")
@replaces("libp2p.stream_muxer.yamux.yamux._yamux_data_read_timeout", "0f5873d6b21e00f7")
class FastYamux(_y.Yamux):
    """Yamux with ``FastYamuxStream`` streams and a lean incoming-frame loop (see module doc)."""

    window = 8 * 1024 * 1024  # receive window granted per stream (go-yamux grows to 16 MiB)
    max_frame = 65535 - 16 - _HEADER  # DATA payload per frame: header + payload = one Noise message
    write_batch = 1024 * 1024  # bytes of frames per secured write
    window_wait_s = 5.0  # as stock: a writer starved of credit this long fails
    body_timeout_s = _y._yamux_data_read_timeout()  # as stock: a DATA body must arrive this fast
    expect_answer: str | None = None  # set when our muxer proposal's answer is still to be read
    # whether to reset the peer's new streams at their SYN, before protocol negotiation (a peer the
    # node refuses: ``RpcServer.refusing``); set per connection by ``FastMuxerMultistream``
    refuse_streams: Callable[[str], bool] | None = None
    _peer_text: str = ""

    async def _write_frame(self, data: bytes) -> None:
        await self._write_parts([data])

    async def _write_parts(self, parts: list[Any]) -> None:
        conn = self.secured_conn
        if isinstance(conn, FastNoiseSession):  # it serializes writes itself
            await conn.write_parts(parts)
            return
        async with self._write_lock:
            await conn.write(b"".join(parts))

    async def close(self, error_code: int = _y.GO_AWAY_NORMAL) -> None:
        streams = list(self.streams.values())
        await super().close(error_code)
        _wake_writers(streams)  # a writer waiting for credit sees the stream closed at once

    async def _cleanup_on_error(self) -> None:
        streams = list(self.streams.values())
        await super()._cleanup_on_error()
        _wake_writers(streams)

    async def open_stream(self) -> FastYamuxStream:
        await self.stream_backlog_semaphore.acquire()
        async with self.streams_lock:
            if self.event_shutting_down.is_set():
                self.stream_backlog_semaphore.release()
                raise MuxedStreamError("Connection is shutting down")
            sid = self.next_stream_id
            self.next_stream_id += 2
            stream = FastYamuxStream(sid, self, True)
            stream._owns_backlog_slot = True
            self.streams[sid] = stream
            self.stream_buffers[sid] = ChunkBuffer()  # type: ignore[assignment]
            self.stream_events[sid] = trio.Event()
        try:
            await self._write_frame(_HDR.pack(0, _y.TYPE_WINDOW_UPDATE, _y.FLAG_SYN, sid,
                                              self.window - _INITIAL_WINDOW))
        except Exception as exc:
            stream._backlog_slot_released = True
            self.stream_backlog_semaphore.release()
            for table in (self.streams, self.stream_buffers, self.stream_events):
                table.pop(sid, None)
            raise MuxedStreamError(f"Failed to send SYN: {exc}") from exc
        return stream

    async def _read_exact(self, n: int, into: Any = None) -> Any:
        conn = self.secured_conn
        if isinstance(conn, FastNoiseSession):
            if conn._avail >= n:  # already decrypted: no await, no timeout scope
                return conn._take(n, into)
            return await conn.read_exact(n, into)
        data = await read_exactly(conn, n)
        if into is None:
            return data
        into += data
        return None

    async def _check_answer(self) -> None:
        """The responder's answer to an optimistic muxer proposal (see ``FastMuxerMultistream``)."""
        for expected in (_MSS, self.expect_answer):
            try:
                answer = (await read_delim(self.secured_conn)).decode()
            except ParseError as exc:
                raise YamuxProtocolError(f"bad multistream-select answer: {exc}") from None
            if answer != expected:
                raise YamuxProtocolError(f"peer answered {answer!r} to {self.expect_answer}")
        self.expect_answer = None

    async def handle_incoming(self) -> None:
        try:
            if self.expect_answer is not None:
                await self._check_answer()
            while not self.event_shutting_down.is_set():
                header = await self._read_exact(_HEADER)
                version, typ, flags, sid, length = _HDR.unpack(header)
                if version != 0:
                    raise YamuxProtocolError(f"yamux version {version}")
                if typ == _y.TYPE_DATA:
                    if length > self.window:
                        raise YamuxProtocolError(f"DATA frame of {length} bytes exceeds the window")
                    stream = self.streams.get(sid)
                    buf = self.stream_buffers.get(sid)
                    if stream is not None and buf is not None and not flags & _y.FLAG_SYN:
                        # the common case: decrypted bytes go straight into the stream's buffer
                        if length > stream.recv_window:
                            raise YamuxProtocolError(f"stream {sid} overran its receive window")
                        fast = self.secured_conn
                        if isinstance(fast, FastNoiseSession) and fast._avail >= length:
                            fast._take(length, buf)
                        else:
                            with trio.fail_after(self.body_timeout_s):
                                await self._read_exact(length, buf)
                        stream.recv_window -= length
                        self._apply(stream, flags, b"", 0, arrived=length > 0)
                        continue
                    with trio.fail_after(self.body_timeout_s):
                        data = await self._read_exact(length) if length else b""
                    await self._on_stream_frame(sid, flags, data, 0)
                elif typ == _y.TYPE_WINDOW_UPDATE:
                    await self._on_stream_frame(sid, flags, b"", length)
                elif typ == _y.TYPE_PING:
                    if flags & _y.FLAG_SYN:
                        await self._write_frame(_HDR.pack(0, _y.TYPE_PING, _y.FLAG_ACK, 0, length))
                    elif flags & _y.FLAG_ACK:
                        rtt = trio.current_time() - self._ping_sent_time
                        self._rtt = rtt if self._rtt == 0.0 else (self._rtt + rtt) / 2
                        self._ping_event.set()
                elif typ == _y.TYPE_GO_AWAY:
                    log.debug("GO_AWAY %d from %s", length, self.peer_id)
                    break
                else:
                    raise YamuxProtocolError(f"unknown frame type {typ}")
        except YamuxProtocolError as exc:
            log.warning("yamux protocol error from %s: %s; closing the connection", self.peer_id, exc)
            with trio.move_on_after(1):
                try:
                    await self._write_frame(_HDR.pack(0, _y.TYPE_GO_AWAY, 0, 0, _y.GO_AWAY_PROTOCOL_ERROR))
                except Exception:
                    pass
        except trio.TooSlowError:
            log.warning("yamux: timed out reading a DATA frame body from %s", self.peer_id)
        except Exception as exc:  # EOF, reset, decryption failure: this connection is over
            log.debug("yamux connection to %s ended: %s: %s", self.peer_id, type(exc).__name__, exc)
        self.event_shutting_down.set()
        await self._cleanup_on_error()

    async def _on_stream_frame(self, sid: int, flags: int, data: bytes, credit: int) -> None:
        stream = self.streams.get(sid)
        if flags & _y.FLAG_SYN:
            if stream is not None or sid == 0 or self._refuses():
                await self._write_frame(_HDR.pack(0, _y.TYPE_WINDOW_UPDATE, _y.FLAG_RST, sid, 0))
                return
            stream = FastYamuxStream(sid, self, False)
            self.streams[sid] = stream
            self.stream_buffers[sid] = ChunkBuffer()  # type: ignore[assignment]
            self.stream_events[sid] = trio.Event()
            if not flags & _y.FLAG_RST:
                await self._write_frame(_HDR.pack(0, _y.TYPE_WINDOW_UPDATE, _y.FLAG_ACK, sid,
                                                  self.window - _INITIAL_WINDOW))
            self._apply(stream, flags, data, credit)
            await self.new_stream_send_channel.send(stream)
            return
        if stream is None:  # a frame for a stream we already dropped: ignore, as go-yamux does
            return
        self._apply(stream, flags, data, credit)

    def _refuses(self) -> bool:
        hook = self.refuse_streams
        if hook is None:
            return False
        if not self._peer_text:
            self._peer_text = self.peer_id.to_base58()
        return hook(self._peer_text)

    def _apply(self, stream: FastYamuxStream, flags: int, data: bytes, credit: int, arrived: bool = False) -> None:
        sid = stream.stream_id
        if data:
            if len(data) > stream.recv_window:
                raise YamuxProtocolError(f"stream {sid} overran its receive window")
            stream.recv_window -= len(data)
            buf = self.stream_buffers.get(sid)
            if buf is not None:
                buf += data
        if credit:
            stream.send_window += credit
        if flags & _y.FLAG_FIN:
            stream.recv_closed = True
            if stream.send_closed:
                stream.closed = True
        if flags & _y.FLAG_RST:
            stream.closed = stream.reset_received = True
            stream.recv_closed = stream.send_closed = True
            stream._credit.set()
        event = self.stream_events.get(sid)
        if event is not None and (data or arrived or flags & (_y.FLAG_FIN | _y.FLAG_RST)):
            event.set()
        if stream.closed:
            self._finalize_stream_locked(stream, fully_closed=True)


def _wake_writers(streams: list[Any]) -> None:
    for stream in streams:
        if isinstance(stream, FastYamuxStream):
            stream._credit.set()


def fast_muxer_option() -> dict[Any, type]:
    """``muxer_opt`` for ``new_host``: our Yamux under the standard protocol id."""
    return {YAMUX_PROTOCOL_ID: FastYamux}
