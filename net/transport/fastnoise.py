"""A faster Noise transport session for py-libp2p 0.8.1: same ``/noise`` XX handshake and wire format.

Stock ``NoiseTransportReadWriter`` reads each Noise message with two exact reads on the socket
(2-byte length, then body) under a lock, and writes every <= 65519-byte chunk as its own socket
write, allocating fresh buffers for each step. ``FastNoiseSession`` receives in 256 KiB gulps,
decrypts every whole message in them at once (copying only a message split across reads), keeps the
plaintext as a queue of decrypted messages, and seals a whole write (or a list of parts: no join)
into one reused output buffer sent with a single socket ``send``. Nonces stay in the noise
``CipherState`` objects, so the session is interchangeable with stock at any message boundary.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import trio
from libp2p.io.exceptions import ConnectionClosedError, IncompleteReadError
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.security.secure_session import SecureSession

from swarmlm.net.transport.upstream import replaces

_MAX_PLAINTEXT = 65535 - 16  # Noise message minus the Poly1305 tag
_RECV_GULP = 256 * 1024
_SEND_BOUND_S = 30.0  # a shielded send (see write_parts) that takes longer closes the connection
_POOL: list[bytearray] = []  # sealed-output buffers shared by all sessions (one trio thread)
_POOL_MAX = 8
_POOL_BUF_MAX = 2 * 1024 * 1024 + 65536


def _take_buffer(n: int) -> bytearray:
    for i, buf in enumerate(_POOL):
        if len(buf) >= n:
            return _POOL.pop(i)
    return bytearray(max(n, 65536))


def _give_buffer(buf: bytearray) -> None:
    if len(_POOL) < _POOL_MAX and len(buf) <= _POOL_BUF_MAX:
        _POOL.append(buf)


class FastLock:
    """A mutex that costs nothing when free: ``trio.Lock`` yields to the scheduler on every acquire
    (a scheduler pass and an epoll call), and an RPC takes several locks per message."""

    def __init__(self) -> None:
        self._busy = False
        self._lot = trio.lowlevel.ParkingLot()

    async def __aenter__(self) -> None:
        while self._busy:
            await self._lot.park()
        self._busy = True

    async def __aexit__(self, *exc: object) -> None:
        self._busy = False
        self._lot.unpark()


# py-libp2p 0.8.1: RawConnection.stream is a TrioTCPStream whose .stream is the trio socket
@replaces("libp2p.network.connection.raw_connection.RawConnection.__init__", "89beb8adac60eaa6")
@replaces("libp2p.io.trio.TrioTCPStream.__init__", "4222fa993846189e")
def _trio_socket(raw: Any) -> trio.SocketStream | None:
    """The trio socket under py-libp2p's RawConnection -> TrioTCPStream, if that is what it is."""
    inner = getattr(getattr(raw, "stream", None), "stream", None)
    return inner if isinstance(inner, trio.SocketStream) else None


# py-libp2p 0.8.1 SecureSession.read / .write over NoiseTransportReadWriter: two exact socket reads
# per Noise message and one socket write per <= 65519-byte chunk, under locks (see the module doc).
# The session takes over the read-writer's raw connection and cipher states after the handshake.
@replaces("libp2p.security.secure_session.SecureSession.__init__", "b076c07a6dc2251b")
@replaces("libp2p.security.secure_session.SecureSession.read", "eeba14a89cf12325")
@replaces("libp2p.security.secure_session.SecureSession.write", "0298b065574caeda")
@replaces("libp2p.security.noise.io.BaseNoiseMsgReadWriter.__init__", "e6b51bace4fa3dda")
@replaces("libp2p.security.noise.io.NoiseTransportReadWriter", "a84247055c8da4c3")
@replaces("libp2p.security.noise.io.NoisePacketReadWriter", "a63c219bb2f34949")
class FastNoiseSession(SecureSession):
    """A Noise transport session: batched receive and decrypt, one encrypted ``send`` per write."""

    def __init__(self, session: SecureSession) -> None:
        super().__init__(
            local_peer=session.local_peer, local_private_key=session.local_private_key,
            remote_peer=session.remote_peer, remote_permanent_pubkey=session.remote_permanent_pubkey,
            is_initiator=session.is_initiator, conn=session.conn,
        )
        rw = session.conn  # NoiseTransportReadWriter: keeps close/addresses/connection type
        self._raw = rw.read_writer.read_write_closer  # the RawConnection under it
        proto = rw.noise_state.noise_protocol
        self._enc = proto.cipher_state_encrypt  # noise CipherStates: we keep their nonces current
        self._dec = proto.cipher_state_decrypt
        self._tail = b""  # received bytes of an incomplete Noise message
        self._chunks: deque[bytes] = deque()  # decrypted plaintext, oldest first
        self._off = 0  # bytes of _chunks[0] already read
        self._avail = 0  # plaintext bytes buffered
        self._eof = False
        self._write_lock = FastLock()
        # TCP: use the socket directly (this session is its only reader and, under _write_lock,
        # its only writer), skipping two more locks per message; errors are mapped as TrioTCPStream does
        self._sock = _trio_socket(self._raw)
        self._scratch = bytearray(_MAX_PLAINTEXT)

    # -- receive --------------------------------------------------------------------------
    def _open(self, ct: memoryview) -> bytes:
        cs = self._dec
        pt = cs.cipher.cipher.decrypt(b"\0\0\0\0" + cs.n.to_bytes(8, "little"), ct, None)
        cs.n += 1
        return pt

    async def _fill(self) -> None:
        """Receive until at least one more whole Noise message is decrypted (or EOF)."""
        got = 0
        while not got:
            data = await self._recv()
            if not data:
                self._eof = True
                return
            off, n = 0, len(data)
            tail = self._tail
            if tail:  # finish the message split across reads, copying only that message
                if len(tail) < 2:
                    off = 2 - len(tail)
                    tail += data[:off]
                    if len(tail) < 2:
                        self._tail = tail
                        continue
                missing = 2 + ((tail[0] << 8) | tail[1]) - len(tail)
                if n - off < missing:
                    self._tail = tail + data[off:]
                    continue
                self._push(self._open(memoryview(tail[2:] + data[off:off + missing])))
                got += 1
                off += missing
                self._tail = b""
            mv = memoryview(data)
            while n - off >= 2:
                size = (data[off] << 8) | data[off + 1]
                if n - off - 2 < size:
                    break
                self._push(self._open(mv[off + 2:off + 2 + size]))
                got += 1
                off += 2 + size
            if off < n:
                self._tail = bytes(mv[off:])

    # errors mapped as py-libp2p 0.8.1 TrioTCPStream.read / .write map them
    @replaces("libp2p.io.trio.TrioTCPStream.read", "c606ac89ec9d0eae")
    async def _recv(self) -> bytes:
        if self._sock is None:
            return await self._raw.read(_RECV_GULP)
        try:
            return await self._sock.receive_some(_RECV_GULP)
        except trio.BrokenResourceError as exc:
            raise ConnectionClosedError(f"TCP connection reset by remote peer: {exc}", transport="tcp") from exc
        except trio.ClosedResourceError:
            return b""

    @replaces("libp2p.io.trio.TrioTCPStream.write", "4b00ddfa20520320")
    async def _send(self, data: memoryview) -> None:
        if self._sock is None:
            await self._raw.write(data)
            return
        try:
            await self._sock.send_all(data)
        except trio.BrokenResourceError as exc:
            raise ConnectionClosedError(f"TCP connection reset by remote peer: {exc}", transport="tcp") from exc
        except trio.ClosedResourceError:
            return  # closed locally: as TrioTCPStream, not an error

    def _push(self, pt: bytes) -> None:
        if pt:
            self._chunks.append(pt)
            self._avail += len(pt)

    def _take(self, n: int, into: Any = None) -> Any:
        """``n`` buffered bytes (``_avail >= n``) as bytes; or, given ``into``, appended to it: copied
        into a bytearray, or as zero-copy views of the decrypted messages into anything else
        with an ``append`` (the yamux stream buffers)."""
        if not n:
            return b"" if into is None else None
        chunks = self._chunks
        first, off = chunks[0], self._off
        if into is None and len(first) - off >= n:  # the common case: within one message
            if off == 0 and len(first) == n:
                chunks.popleft()
                out: Any = first
            else:
                out = first[off:off + n]
                self._off = off + n
                if self._off == len(first):
                    chunks.popleft()
                    self._off = 0
            self._avail -= n
            return out
        out = bytearray() if into is None else into
        copy = type(out) is bytearray
        need = n
        while need:
            first, off = chunks[0], self._off
            k = min(need, len(first) - off)
            piece = memoryview(first)[off:off + k]
            if copy:
                out += piece
            else:
                out.append(piece)
            need -= k
            if off + k == len(first):
                chunks.popleft()
                self._off = 0
            else:
                self._off = off + k
        self._avail -= n
        return bytes(out) if into is None else None

    async def read_exact(self, n: int, into: Any = None) -> Any:
        """Exactly ``n`` plaintext bytes (or appends them to ``into``); IncompleteReadError at EOF."""
        while self._avail < n:
            if self._eof:
                raise IncompleteReadError(f"connection closed: expected {n} bytes, got {self._avail}",
                                          expected_bytes=n, received_bytes=self._avail)
            await self._fill()
        return self._take(n, into)

    async def read(self, n: int | None = None) -> bytes:
        """SecureSession semantics: ``n`` bytes (fewer only at EOF), or whatever is buffered."""
        if n == 0:
            return b""
        while not self._avail or (n is not None and self._avail < n):
            if self._eof:
                break
            await self._fill()
        if not self._avail:
            raise ConnectionClosedError("Connection closed")
        return self._take(self._avail if n is None else min(n, self._avail))

    # -- send -----------------------------------------------------------------------------
    async def write(self, data: bytes | bytearray | memoryview) -> None:
        await self.write_parts([data])

    async def write_parts(self, parts: list[Any]) -> None:
        """Encrypt the concatenation of ``parts`` and send it with one socket write.

        Plaintext is gathered into a reused 64 KiB scratch buffer and sealed into an output buffer
        from a small shared pool (fresh megabyte-sized buffers cost more in page faults than the
        copy itself, and a buffer per connection would cost a megabyte per peer)."""
        views = [v for v in (p if isinstance(p, memoryview) else memoryview(p) for p in parts) if v.nbytes]
        views = [v if v.format == "B" and v.ndim == 1 else v.cast("B") for v in views]
        total = sum(len(v) for v in views)
        need = total + max(1, -(-total // _MAX_PLAINTEXT)) * 18  # per message: length + tag
        async with self._write_lock:  # nonces must reach the wire in the order they were used
            buf = _take_buffer(need)
            out = memoryview(buf)
            scratch = memoryview(self._scratch)
            cs = self._enc
            aead = cs.cipher.cipher
            pos = fill = 0
            queue = deque(views)
            while True:
                # gather one message's plaintext: a slice of one part when it fits, else scratch
                if queue and not fill and len(queue[0]) >= _MAX_PLAINTEXT:
                    head = queue[0]
                    chunk = head[:_MAX_PLAINTEXT]
                    if len(head) == _MAX_PLAINTEXT:
                        queue.popleft()
                    else:
                        queue[0] = head[_MAX_PLAINTEXT:]
                else:
                    while queue and fill < _MAX_PLAINTEXT:
                        head = queue[0]
                        k = min(len(head), _MAX_PLAINTEXT - fill)
                        scratch[fill:fill + k] = head[:k]
                        fill += k
                        if k == len(head):
                            queue.popleft()
                        else:
                            queue[0] = head[k:]
                    chunk = scratch[:fill]
                size = len(chunk) + 16
                out[pos:pos + 2] = size.to_bytes(2, "big")
                aead.encrypt_into(b"\0\0\0\0" + cs.n.to_bytes(8, "little"), chunk, None, out[pos + 2:pos + 2 + size])
                cs.n += 1
                pos += 2 + size
                fill = 0
                if not queue:
                    break
            try:
                # the nonces are spent: a write cut short by a cancellation would leave a partial
                # message on the wire and every later one undecryptable (the peer drops the whole
                # connection), so the send finishes shielded, within a bound; past it the
                # connection is closed, as it is unusable anyway
                with trio.CancelScope(shield=True) as scope:
                    scope.deadline = trio.current_time() + _SEND_BOUND_S
                    await self._send(out[:pos])
                if scope.cancelled_caught:
                    with trio.CancelScope(shield=True), trio.move_on_after(1):
                        await self.close()
                    raise ConnectionClosedError(f"a send did not finish within {_SEND_BOUND_S:.0f} s", transport="tcp")
            finally:
                out.release()
                scratch.release()
                _give_buffer(buf)


# py-libp2p 0.8.1 Noise Transport: the handshake is kept as is; its session is wrapped
@replaces("libp2p.security.noise.transport.Transport.secure_inbound", "4c447c4ea56267b1")
@replaces("libp2p.security.noise.transport.Transport.secure_outbound", "f5be8851b898cbf1")
class FastNoiseTransport(NoiseTransport):
    """Noise XX as stock (``/noise``); the session after the handshake is a ``FastNoiseSession``."""

    async def secure_inbound(self, conn: Any) -> Any:
        return FastNoiseSession(await super().secure_inbound(conn))

    async def secure_outbound(self, conn: Any, peer_id: Any) -> Any:
        return FastNoiseSession(await super().secure_outbound(conn, peer_id))
