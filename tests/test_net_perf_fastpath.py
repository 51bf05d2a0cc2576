"""net.transport's fast path (our Noise session and Yamux subclasses): data intact, flow control, interop
with stock py-libp2p both ways, protocol errors close one connection only, garbage on the port leaves the node serving.

Functional only: speed is measured by ``swarmlm bench rpc``.
"""

from __future__ import annotations

import os
import struct

import pytest
import torch
import trio
import trio.testing

from swarmlm.net.host import ECHO_PROTOCOL
from swarmlm.net.rpc import RpcError
from swarmlm.net.transport.fastnoise import FastNoiseSession
from swarmlm.net.transport.fastyamux import FastYamux, FastYamuxStream

from helpers import running_hosts

BULK = "/swarmlm/test-bulk/1"


async def wait_until(pred, timeout=20.0, step=0.05):
    with trio.fail_after(timeout):
        while not pred():
            await trio.sleep(step)


def add_bulk(host) -> None:
    async def sink(call, args):
        total, digest = 0, 0
        async for item in call:
            total += item.numel()
            digest = (digest * 31 + int(item.sum())) % (1 << 61)
            await call.send(total)
        return {"bytes": total, "digest": digest}

    host.rpc_server.add_stream(BULK, "sink", sink)
    host.refresh_handlers()


@pytest.mark.parametrize("fast", [(True, True), (True, False), (False, True)], ids=["fast-fast", "fast-stock", "stock-fast"])
async def test_echo_8mb_intact_and_concurrent_streams(fast):
    """Big and small payloads arrive intact, concurrently, fast<->fast and against stock py-libp2p."""
    async with running_hosts(1, fastpath=fast[0]) as (server,), running_hosts(1, fastpath=fast[1]) as (client,):
        pid = await client.connect(server.addrs[0])
        big = torch.randint(0, 256, (8 * 1024 * 1024,), dtype=torch.uint8)
        out = await client.rpc.call(pid, ECHO_PROTOCOL, "echo", {"t": big, "n": 1}, timeout=60)
        assert out["n"] == 1 and torch.equal(out["t"], big)
        results: dict[int, bool] = {}

        async def one(i: int) -> None:
            x = torch.randn(1 + 5000 * i)
            for _ in range(3):
                y = await client.rpc.call(pid, ECHO_PROTOCOL, "echo", [i, x], timeout=60)
                assert y[0] == i and torch.equal(y[1], x)
            results[i] = True

        async with trio.open_nursery() as nursery:
            for i in range(8):
                nursery.start_soon(one, i)
        assert len(results) == 8


async def test_bulk_stream_exceeds_the_window_many_times_and_stays_in_order():
    async with running_hosts(2) as (server, client):
        add_bulk(server)
        await wait_until(lambda: server.peer_id in client.connected_peers())
        items = [torch.full((1 << 20,), i % 251, dtype=torch.uint8) for i in range(24)]  # 24 MiB, window 4 MiB
        expect = 0
        for it in items:
            expect = (expect * 31 + int(it.sum())) % (1 << 61)
        acks = []
        async with client.rpc.stream(server.peer_id, BULK, "sink") as call:
            async with trio.open_nursery() as nursery:
                async def reader():
                    async for n in call:
                        acks.append(n)
                nursery.start_soon(reader)
                for it in items:
                    await call.send(it)
                await call.end()
        assert call.result == {"bytes": 24 << 20, "digest": expect}
        assert acks == [(i + 1) << 20 for i in range(24)]


async def test_garbage_and_truncated_frames_on_streams_and_on_the_port_leave_the_node_serving():
    async with running_hosts(2) as (server, client):
        await wait_until(lambda: server.peer_id in client.connected_peers())
        rnd = os.urandom(4096)
        junk = [rnd, struct.pack(">II", 1000, 10) + rnd[:100], struct.pack(">II", 5, 5) + b"\xc1" * 5, b"\x00\x00"]
        for data in junk:  # on real libp2p streams of the RPC protocol
            stream = await client.open_stream(server.peer_id, ECHO_PROTOCOL)
            await stream.write(data)
            await stream.close()
        # on the TCP port itself: random bytes, a truncated multistream header, random after a valid one
        port = int(server.addrs[0].split("/tcp/")[1].split("/")[0])
        for data in (rnd, b"\x13/multistream/1.0.0\n"[:9], b"\x13/multistream/1.0.0\n" + rnd[:300]):
            with trio.move_on_after(5):
                sock = await trio.open_tcp_stream("127.0.0.1", port)
                try:
                    await sock.send_all(data)
                    await sock.send_eof()
                    while await sock.receive_some(65536):
                        pass
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                finally:
                    await sock.aclose()
        assert server.rpc_server.stats.rejected_frames >= 1
        # the 0xc1 header is no honest encoder's: its sender is refused at once, the node serves on
        await wait_until(lambda: server.rpc_server.penalties.reasons.get("hostile_frame"))
        assert server.rpc_server.refusing(client.peer_id)
        async with running_hosts(1) as (third,):  # and new peers still get in
            pid = await third.connect(server.addrs[0])
            assert await third.rpc.call(pid, ECHO_PROTOCOL, "echo", "alive") == "alive"


# ---------------------------------------------------------------- FastYamux over an in-memory pipe
class PipeConn:
    """A stand-in for a secured connection: one end of a trio in-memory stream pair."""

    def __init__(self, stream, initiator: bool) -> None:
        self.stream, self.is_initiator = stream, initiator

    async def read(self, n=None):
        return await self.stream.receive_some(n)

    async def write(self, data):
        await self.stream.send_all(data)

    async def close(self):
        await self.stream.aclose()

    def get_remote_address(self):
        return None


def _peer_id():
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.id import ID

    return ID.from_pubkey(create_new_key_pair().public_key)


async def _pair(nursery):
    a, b = trio.testing.memory_stream_pair()
    left, right = FastYamux(PipeConn(a, True), _peer_id()), FastYamux(PipeConn(b, False), _peer_id())
    nursery.start_soon(left.start)
    nursery.start_soon(right.start)
    await left.event_started.wait()
    await right.event_started.wait()
    return left, right, b


async def test_yamux_window_credit_fin_and_reset():
    async with trio.open_nursery() as nursery:
        left, right, _ = await _pair(nursery)
        s = await left.open_stream()
        r = await right.accept_stream()
        assert isinstance(s, FastYamuxStream) and isinstance(r, FastYamuxStream)
        data = os.urandom(3 * FastYamux.window + 12345)  # the writer must wait for credit twice
        got = bytearray()

        async def drain():
            while len(got) < len(data):
                got.extend(await r.read(100_000))

        nursery.start_soon(drain)
        await s.write(data)
        with trio.fail_after(10):
            while len(got) < len(data):
                await trio.sleep(0.01)
        assert bytes(got) == data
        await s.close()  # FIN: the reader sees EOF after the data
        from libp2p.stream_muxer.exceptions import MuxedStreamEOF, MuxedStreamReset

        with pytest.raises(MuxedStreamEOF):
            await r.read(10)
        s2 = await left.open_stream()
        r2 = await right.accept_stream()
        await r2.reset()
        with trio.fail_after(5), pytest.raises(MuxedStreamReset):
            await s2.read(10)
        with pytest.raises(Exception, match="closed"):
            await s2.write(b"after reset")
        nursery.cancel_scope.cancel()


async def test_yamux_window_overrun_and_garbage_close_only_that_connection():
    from swarmlm.net.transport.fastyamux import _HDR

    async with trio.open_nursery() as nursery:
        left, right, raw_b = await _pair(nursery)
        s = await left.open_stream()
        await right.accept_stream()
        # a DATA frame far larger than the window granted: protocol error -> right closes
        await left._write_frame(_HDR.pack(0, 0, 0, s.stream_id, FastYamux.window + 1) + b"x" * 100)
        with trio.fail_after(5):
            await right.event_closed.wait()
        left2, right2, _ = await _pair(nursery)
        await left2._write_frame(b"\x07" + os.urandom(40))  # bad version byte
        with trio.fail_after(5):
            await right2.event_closed.wait()
        left3, right3, _ = await _pair(nursery)  # a fresh pair still works
        s3 = await left3.open_stream()
        r3 = await right3.accept_stream()
        await s3.write(b"hello")
        assert await r3.read(5) == b"hello"
        nursery.cancel_scope.cancel()


async def test_noise_session_is_used_and_parts_write_matches():
    async with running_hosts(2) as (server, client):
        await wait_until(lambda: server.peer_id in client.connected_peers())
        stream = await client.open_stream(server.peer_id, ECHO_PROTOCOL)
        muxed = stream.stream.muxed_stream  # a LazyStream around the NetStream
        assert isinstance(muxed.conn, FastYamux) and isinstance(muxed.conn.secured_conn, FastNoiseSession)
        await stream.reset()
        with pytest.raises(RpcError):
            await client.rpc.call(server.peer_id, "/swarmlm/nothing/1", "x", None, timeout=5)


# ---------------------------------------------------------------- FastNoiseSession framing
class _Cipher:
    def __init__(self, key: bytes) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

        self.n = 0
        self.cipher = type("C", (), {"cipher": ChaCha20Poly1305(key)})()


class _Raw:
    """Records what is written; hands back ``feed`` in random-sized pieces."""

    def __init__(self, feed: bytes = b"", seed: int = 0) -> None:
        import random

        self.out, self.feed, self.rng = bytearray(), feed, random.Random(seed)

    async def write(self, data) -> None:
        self.out += data

    async def read(self, n=None) -> bytes:
        await trio.lowlevel.checkpoint()
        k = min(len(self.feed), self.rng.choice([1, 2, 3, 17, 1000, 65537, 70000, 300000]), n or 1 << 30)
        data, self.feed = self.feed[:k], self.feed[k:]
        return data


def _session(raw: _Raw, key: bytes) -> FastNoiseSession:
    from types import SimpleNamespace

    proto = SimpleNamespace(cipher_state_encrypt=_Cipher(key), cipher_state_decrypt=_Cipher(key))
    conn = SimpleNamespace(read_writer=SimpleNamespace(read_write_closer=raw),
                           noise_state=SimpleNamespace(noise_protocol=proto))
    base = SimpleNamespace(local_peer=None, local_private_key=None, remote_peer=None,
                           remote_permanent_pubkey=None, is_initiator=True, conn=conn)
    return FastNoiseSession(base)


@pytest.mark.parametrize("seed", [0, 1, 2])
async def test_noise_session_messages_survive_any_read_split(seed):
    """Writes of every size (one message, exactly the limit, many messages, scattered parts) come
    back byte for byte however the socket splits them, and each Noise message is at most 65535."""
    key = os.urandom(32)
    sender = _Raw()
    tx = _session(sender, key)
    blobs = [b"", b"x", os.urandom(65519), os.urandom(65520), os.urandom(300_001), os.urandom(7)]
    for b in blobs[:-2]:
        await tx.write(b)
    await tx.write_parts([b"ab", memoryview(blobs[-2])[:150_000], bytearray(blobs[-2][150_000:]), b""])
    await tx.write(blobs[-1])
    wire = bytes(sender.out)
    off, sizes = 0, []
    while off < len(wire):
        size = int.from_bytes(wire[off:off + 2], "big")
        sizes.append(size)
        off += 2 + size
    assert off == len(wire) and max(sizes) <= 65535
    rx = _session(_Raw(wire, seed), key)
    expect = b"".join(blobs[:-2]) + b"ab" + blobs[-2] + blobs[-1]
    got = bytearray()
    got += await rx.read_exact(3)
    await rx.read_exact(70_000, got)
    while len(got) < len(expect):
        got += await rx.read(min(12345, len(expect) - len(got)))
    assert bytes(got) == expect
    from libp2p.io.exceptions import IncompleteReadError

    with pytest.raises(IncompleteReadError):
        await rx.read_exact(1)
