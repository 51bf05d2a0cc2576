"""Socket-level hole-punch helpers on loopback (no root needed; the NAT cases are in test_netns_*)."""

from __future__ import annotations

import socket

import pytest
import trio

from swarmlm.testnet.holepunch import (PunchError, bound_socket, reuse_listener, tcp_simultaneous_open,
                                       udp_keepalive, udp_punch)

LO = "127.0.0.1"


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind((LO, 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


async def test_listener_and_dialer_share_the_port() -> None:
    pa, pb = _free_ports(2)
    la, lb = await reuse_listener(pa, LO), await reuse_listener(pb, LO)
    async with la, lb:
        results = {}

        async def side(name: str, port: int, peer: int, listener: trio.SocketListener) -> None:
            punch = await tcp_simultaneous_open(port, (LO, peer), listener=listener, timeout=5)
            async with punch.stream:
                assert punch.stream.socket.getsockname()[1] == port  # left from the listening port
                await punch.stream.send_all(name.encode())
                results[name] = (punch, await punch.stream.receive_some(16))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(side, "a", pa, pb, la)
            nursery.start_soon(side, "b", pb, pa, lb)
    assert results["a"][1] == b"b" and results["b"][1] == b"a"
    assert {results["a"][0].how, results["b"][0].how} <= {"connect", "accept"}


async def test_tcp_punch_gives_up_with_punch_error() -> None:
    (port,) = _free_ports(1)
    (dead,) = _free_ports(1)  # nothing listens there: every attempt is refused
    with pytest.raises(PunchError, match="failed after"):
        await tcp_simultaneous_open(port, (LO, dead), timeout=0.3, retry_delay=0.05)


async def test_udp_punch_and_keepalive() -> None:
    pa, pb = _free_ports(2)
    sa, sb = await bound_socket("udp", pa, LO), await bound_socket("udp", pb, LO)
    with sa, sb:
        out = {}

        async def side(name: str, sock, peer: int, mine: bytes, theirs: bytes) -> None:
            out[name] = await udp_punch(sock, (LO, peer), token=mine, peer_token=theirs, timeout=3)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(side, "a", sa, pb, b"ta", b"tb")
            nursery.start_soon(side, "b", sb, pa, b"tb", b"ta")
        assert out["a"].remote == (LO, pb) and out["b"].remote == (LO, pa)
        with trio.move_on_after(0.25):
            await udp_keepalive(sa, (LO, pb), b"ka", interval=0.05)
        seen = set()
        with trio.move_on_after(0.2):
            while True:
                data, _ = await sb.recvfrom(64)
                seen.add(data)
        assert b"ka" in seen


async def test_udp_punch_times_out() -> None:
    pa, pb = _free_ports(2)
    sock = await bound_socket("udp", pa, LO)
    with sock:
        with pytest.raises(PunchError):
            await udp_punch(sock, (LO, pb), token=b"x", peer_token=b"y", timeout=0.2)
