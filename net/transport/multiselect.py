"""Pipelined multistream-select for py-libp2p 0.8.1, wire-compatible with stock peers.

``swarmlm bench rpc`` profiled where an RPC over stock py-libp2p spends its time (docs/BENCHMARKS.md);
besides the Noise session (``fastnoise``) and Yamux (``fastyamux``), negotiation costs round trips.
The replacements here (subclasses of py-libp2p components, installed by
``patches.install_fast_muxer``):

* ``FastMuxerMultistream``: builds the negotiated muxer class (stock builds a stock ``Yamux``
  whatever ``muxer_opt`` says) and proposes ``FastYamux`` optimistically;
* ``FastSecurityMultistream``: the ``/noise`` proposal rides with Noise's first handshake message;
* ``PipelinedMultiselectClient``: header and proposal in one write: one round trip per negotiation
  instead of two, three negotiations per new connection;
* ``open_lazy_stream`` / ``LazyStream``: a new RPC stream's protocol proposal rides with its first
  request: no round trip at all (``SwarmHost.open_stream`` uses it instead of ``BasicHost.new_stream``).
"""

from __future__ import annotations

from typing import Any, Callable

import trio
from libp2p.protocol_muxer import multiselect_client as _msc
from libp2p.protocol_muxer.exceptions import (
    MultiselectClientError,
    MultiselectCommunicatorError,
    ProtocolNotSupportedError,
)
from libp2p.protocol_muxer.multiselect_client import MultiselectClient
from libp2p.protocol_muxer.multiselect_communicator import MultiselectCommunicator
from libp2p.security.security_multistream import SecurityMultistream
from libp2p.stream_muxer.muxer_multistream import MuxerMultistream
from libp2p.stream_muxer.yamux import yamux as _y
from libp2p.utils import encode_delim, read_delim

from swarmlm.net.transport.fastnoise import FastNoiseSession, FastNoiseTransport, _trio_socket
from swarmlm.net.transport.fastyamux import FastYamux, FastYamuxStream
from swarmlm.net.transport.upstream import replaces


class FastMuxerMultistream(MuxerMultistream):
    """Builds the negotiated muxer class (stock builds a stock ``Yamux`` for /yamux/1.0.0 whatever
    ``muxer_opt`` names), and as initiator negotiates ``FastYamux`` optimistically: the proposal
    goes out and the connection starts at once; ``FastYamux.handle_incoming`` checks the answer
    before the first frame (a refusal closes the connection). The responder reads in order, so
    this is wire-compatible, and a new connection saves one round trip. ``refuse_streams`` (the
    host sets it) goes to every connection: the peers whose new streams it resets at once."""

    refuse_streams: Callable[[str], bool] | None = None

    # py-libp2p 0.8.1 MuxerMultistream.new_conn waits for the muxer negotiation's answer and then
    # always builds its own Yamux for /yamux/1.0.0; ours builds FastYamux without waiting.
    @replaces("libp2p.stream_muxer.muxer_multistream.MuxerMultistream.new_conn", "91d21f40f524ad99")
    @replaces("libp2p.stream_muxer.muxer_multistream.MuxerMultistream._annotate_connection", "4f2e4803da001756")
    async def new_conn(self, conn: Any, peer_id: Any) -> Any:
        first = next(iter(self.transports), None)
        cls = self.transports.get(first) if first is not None else None
        if conn.is_initiator and isinstance(cls, type) and issubclass(cls, FastYamux):
            await conn.write(encode_delim(_msc.MULTISELECT_PROTOCOL_ID.encode()) + encode_delim(str(first).encode()))
            muxed = cls(conn, peer_id, is_initiator=True)
            muxed.expect_answer = str(first)
            muxed.refuse_streams = self.refuse_streams
            return self._annotate_connection(muxed, conn, first)
        protocol, muxer_class = await self._selector.select(conn, conn.is_initiator, self.negotiate_timeout)
        if isinstance(muxer_class, type) and issubclass(muxer_class, _y.Yamux):
            muxed = muxer_class(conn, peer_id, is_initiator=conn.is_initiator)
        else:
            muxed = muxer_class(conn, peer_id)
        if isinstance(muxed, FastYamux):
            muxed.refuse_streams = self.refuse_streams
        return self._annotate_connection(muxed, conn, protocol)


class _AnswerFirst:
    """A raw connection whose first read consumes (and checks) a multistream-select answer."""

    def __init__(self, inner: Any, protocol: str) -> None:
        self.inner = inner
        self._expect: str | None = protocol

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def write(self, data: bytes) -> None:
        await self.inner.write(data)

    async def read(self, n: int | None = None) -> bytes:
        if self._expect is not None:
            expect, self._expect = self._expect, None
            for want in (_msc.MULTISELECT_PROTOCOL_ID, expect):
                try:
                    got = (await read_delim(self.inner)).decode()
                except Exception as exc:
                    raise MultiselectClientError(f"no answer to {expect}: {exc}") from exc
                if got != want:
                    raise MultiselectClientError(f"peer answered {got!r} to {expect}")
        return await self.inner.read(n)

    async def close(self) -> None:
        await self.inner.close()


class FastSecurityMultistream(SecurityMultistream):
    """As initiator with Noise first in line, sends the ``/noise`` proposal and Noise's first
    handshake message together and checks the answer ahead of the responder's reply: one round
    trip less per new connection (the responder reads in order: wire-compatible)."""

    # py-libp2p 0.8.1 SecurityMultistream.secure_outbound negotiates /noise (a round trip) before the
    # handshake starts; ours sends both at once and sets negotiated_security_protocol as it does.
    @replaces("libp2p.security.security_multistream.SecurityMultistream.secure_outbound", "039685d2adca8ed6")
    async def secure_outbound(self, conn: Any, peer_id: Any) -> Any:
        first = next(iter(self.transports), None)
        transport = self.transports.get(first) if first is not None else None
        if not isinstance(transport, FastNoiseTransport):
            return await super().secure_outbound(conn, peer_id)
        await conn.write(encode_delim(_msc.MULTISELECT_PROTOCOL_ID.encode()) + encode_delim(str(first).encode()))
        secure = await transport.secure_outbound(_AnswerFirst(conn, str(first)), peer_id)
        if isinstance(secure, FastNoiseSession):  # the answer is consumed: talk to the socket itself
            secure._raw = conn
            secure._sock = _trio_socket(conn)
        setattr(secure, "negotiated_security_protocol", str(first))
        return secure


class PipelinedMultiselectClient(MultiselectClient):
    """multistream-select initiator that sends its header and first proposal in one write.

    Stock waits for the responder's header before proposing: two round trips per negotiation, and
    a new connection negotiates three times (security, muxer, then each stream's protocol). The
    spec allows pipelining (go-libp2p does it), and the responder reads messages in order, so this
    saves one round trip each; a declined first proposal falls back to trying the others."""

    # py-libp2p 0.8.1 MultiselectClient.select_one_of: handshake, then one proposal per round trip
    @replaces("libp2p.protocol_muxer.multiselect_client.MultiselectClient.select_one_of", "a0dda8ab1ebd1006")
    @replaces("libp2p.protocol_muxer.multiselect_client.MultiselectClient.try_select", "0d6c7ecb28d96b5a")
    @replaces("libp2p.protocol_muxer.multiselect_client.is_valid_handshake", "10a17be95858855f")
    async def select_one_of(self, protocols: Any, communicator: Any,
                            negotiate_timeout: int = _msc.DEFAULT_NEGOTIATE_TIMEOUT) -> Any:
        rw = getattr(communicator, "read_writer", None)
        if not protocols or rw is None:
            return await super().select_one_of(protocols, communicator, negotiate_timeout)
        first = protocols[0]
        with trio.move_on_after(negotiate_timeout):
            try:
                await rw.write(encode_delim(_msc.MULTISELECT_PROTOCOL_ID.encode()) + encode_delim(str(first).encode()))
            except Exception as exc:
                raise MultiselectClientError(f"handshake write failed: {exc}") from exc
            try:
                header = await communicator.read()
                answer = await communicator.read()
            except MultiselectCommunicatorError as exc:
                raise MultiselectClientError(f"handshake read failed: {exc}") from exc
            if not _msc.is_valid_handshake(header):
                raise MultiselectClientError(f"multiselect protocol ID mismatch: got {header!r}")
            if answer == str(first):
                return first
            if answer != _msc.PROTOCOL_NOT_FOUND_MSG:
                raise MultiselectClientError(f"unrecognized response: {answer!r}, protocol={first}")
            for proto in protocols[1:]:
                try:
                    return await self.try_select(communicator, proto)
                except ProtocolNotSupportedError:
                    continue
            raise MultiselectClientError(f"protocols not supported: tried {list(protocols)}")
        raise MultiselectClientError(f"response timed out after {negotiate_timeout}s, protocols tried: {list(protocols)}")


class NegotiationFailed(ConnectionError):
    """The peer declined (or garbled) the protocol a lazy stream proposed."""


class LazyStream:
    """A py-libp2p stream whose multistream-select proposal goes out with its first write.

    The answer (header, then the protocol echoed or ``na``) is read before the first read returns
    data; a refusal raises ``NegotiationFailed`` there (a ``ConnectionError``, which the RPC maps
    to an ``unavailable`` error). Offers ``write_parts``/``readinto`` of a fast yamux stream."""

    def __init__(self, net_stream: Any, protocol: str) -> None:
        self.stream = net_stream
        self.protocol = protocol
        self.muxed_conn = net_stream.muxed_conn
        self._proposal: bytes | None = (encode_delim(_msc.MULTISELECT_PROTOCOL_ID.encode())
                                        + encode_delim(protocol.encode()))
        self._confirmed = False
        inner = net_stream.muxed_stream
        self._fast = inner if isinstance(inner, FastYamuxStream) else None

    def get_protocol(self) -> str:
        return self.protocol

    async def write_parts(self, parts: list[Any]) -> None:
        if self._proposal is not None:
            parts, self._proposal = [self._proposal, *parts], None
        if self._fast is not None:
            await self._fast.write_parts(parts)
        else:
            await self.stream.write(b"".join(bytes(p) for p in parts))

    async def write(self, data: Any) -> None:
        await self.write_parts([data])

    async def _confirm(self) -> None:
        if self._proposal is not None:
            await self.write_parts([])
        comm = MultiselectCommunicator(self.stream)
        try:
            header = await comm.read()
            if header != _msc.MULTISELECT_PROTOCOL_ID:
                raise NegotiationFailed(f"not multistream-select: {header!r}")
            answer = await comm.read()
        except MultiselectCommunicatorError as exc:
            raise NegotiationFailed(f"no answer to {self.protocol}: {exc}") from None
        if answer != self.protocol:
            raise NegotiationFailed(f"peer declined {self.protocol}: {answer!r}")
        self._confirmed = True

    async def read(self, n: int | None = None) -> bytes:
        if not self._confirmed:
            await self._confirm()
        return await self.stream.read(n)

    async def readinto(self, view: memoryview) -> int:
        if not self._confirmed:
            await self._confirm()
        if self._fast is not None:
            return await self._fast.readinto(view)
        data = await self.stream.read(len(view))
        view[:len(data)] = data
        return len(data)

    async def close(self) -> None:
        await self.stream.close()

    async def reset(self) -> None:
        await self.stream.reset()


# py-libp2p 0.8.1 BasicHost.new_stream opens the stream and negotiates its protocol before returning
# (a round trip per new stream); a lazy stream is opened the same way (Swarm.new_stream) and
# carries the negotiation with its first write.
@replaces("libp2p.host.basic_host.BasicHost.new_stream", "df9efa1bac504f42")
@replaces("libp2p.network.swarm.Swarm.new_stream", "125812a9745b972b")
@replaces("libp2p.network.stream.net_stream.NetStream.set_protocol", "e8270558e29773a1")
async def open_lazy_stream(host: Any, peer_id: Any, protocol: str) -> LazyStream:
    """A stream to ``peer_id`` (dialing if needed) whose negotiation rides with its first write."""
    net_stream = await host.get_network().new_stream(peer_id)
    net_stream.set_protocol(protocol)
    return LazyStream(net_stream, protocol)
