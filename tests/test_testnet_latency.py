"""The user-space latency forwarder: a ping through it takes at least the configured round trip,
bytes arrive complete and in order, an end of stream passes through, a bandwidth cap slows a burst."""

from __future__ import annotations

import os
import socket
import time

import trio

from swarmlm.testnet.latency import LatencyForwarder


async def _echo_server(nursery: trio.Nursery) -> int:
    async def echo(stream: trio.SocketStream) -> None:
        async with stream:
            while data := await stream.receive_some(65536):
                await stream.send_all(data)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    nursery.start_soon(trio.serve_listeners, echo, listeners)
    return listeners[0].socket.getsockname()[1]


async def _forwarder(nursery: trio.Nursery, target: int, delay_s: float, bw: float | None = None) -> int:
    fwd = LatencyForwarder(0, ("127.0.0.1", target), delay_s, bw)
    return await nursery.start(fwd.serve)


async def test_ping_through_forwarder_costs_the_configured_rtt():
    async with trio.open_nursery() as n:
        port = await _forwarder(n, await _echo_server(n), 0.025)  # RTT 50 ms
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        rtts = []
        async with stream:
            for i in range(3):
                t0 = time.monotonic()
                await stream.send_all(b"ping%d" % i)
                got = b""
                while len(got) < 5:
                    got += await stream.receive_some(64)
                rtts.append(time.monotonic() - t0)
                assert got == b"ping%d" % i
        assert min(rtts) >= 0.050  # at least the round trip (no upper bound: the machine is shared)
        n.cancel_scope.cancel()


async def test_bytes_arrive_complete_in_order_and_eof_passes():
    payload = os.urandom(3 * 1024 * 1024 + 17)
    async with trio.open_nursery() as n:
        port = await _forwarder(n, await _echo_server(n), 0.005)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        got = bytearray()

        async def reader() -> None:
            while data := await stream.receive_some(65536):
                got.extend(data)

        async with stream, trio.open_nursery() as io:
            io.start_soon(reader)
            for i in range(0, len(payload), 10_000):
                await stream.send_all(payload[i:i + 10_000])
            await stream.send_eof()  # the echo server sees EOF, closes, and we see EOF in turn
        assert bytes(got) == payload
        n.cancel_scope.cancel()


async def test_bandwidth_cap_spreads_a_burst():
    payload = b"x" * 200_000  # 1.6 Mbit at 8 Mbit/s: >= 0.2 s one way, again on the way back
    async with trio.open_nursery() as n:
        port = await _forwarder(n, await _echo_server(n), 0.0, bw=8e6)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            t0 = time.monotonic()
            await stream.send_all(payload)
            got = 0
            while got < len(payload):
                got += len(await stream.receive_some(65536))
            assert time.monotonic() - t0 >= 0.2
        n.cancel_scope.cancel()


async def test_a_reset_connection_leaves_the_forwarder_serving():
    async with trio.open_nursery() as n:
        port = await _forwarder(n, await _echo_server(n), 0.001)
        s1 = await trio.open_tcp_stream("127.0.0.1", port)
        await s1.send_all(b"a")
        s1.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        await s1.aclose()  # RST instead of FIN
        await trio.sleep(0.05)
        s2 = await trio.open_tcp_stream("127.0.0.1", port)
        async with s2:
            await s2.send_all(b"still here")
            got = b""
            while len(got) < 10:
                got += await s2.receive_some(64)
            assert got == b"still here"
        n.cancel_scope.cancel()
