"""Socket-level NAT traversal under trio: port-reusing sockets, TCP simultaneous open, UDP punching.

These are the mechanics DCUtR needs below libp2p. Both peers have learned each other's public
``ip:port`` (the address a third party observed, e.g. the relay) and act at the same moment:

* TCP: every socket binds the node's *listening* port with SO_REUSEADDR and SO_REUSEPORT, so the
  outgoing SYN leaves through the same NAT mapping the peer observed. ``tcp_simultaneous_open`` dials
  the peer (retrying until a deadline) while also accepting on the listener; whichever yields a
  connection from the peer's address first wins. Crossing SYNs give a TCP simultaneous open.
* UDP: ``udp_punch`` sends small tokens to the peer's public address until one of the peer's tokens
  arrives, then sends a few more so the peer gets one too.

Against a symmetric NAT (a new random public port per destination) both fail by design: fall back to
the relay. Keep-alive periods stay under conntrack's UDP timeouts (30 s unreplied, 120 s assured).

Part of the NAT lab (``testnet/punchlab.py`` and the tests), not of the node:
the node's hole punching is py-libp2p's DCUtR as wired in ``swarmlm.net.nat`` (docs/NAT.md).
"""

from __future__ import annotations

import errno
import socket as _stdsocket
import time
from dataclasses import dataclass
from typing import Any

import trio

from swarmlm.errors import SwarmError

# Linux conntrack defaults: nf_conntrack_udp_timeout=30 (unreplied), _udp_timeout_stream=120 (assured).
UDP_KEEPALIVE_S = 15.0
TCP_KEEPALIVE_IDLE_S = 60
TCP_KEEPALIVE_INTERVAL_S = 15
TCP_KEEPALIVE_COUNT = 4

Addr = tuple[str, int]


class PunchError(SwarmError):
    """A hole punch did not produce a direct connection before its deadline (use the relay)."""


@dataclass
class TcpPunch:
    """A direct TCP connection obtained by hole punching."""

    stream: trio.SocketStream
    remote: Addr  # the peer's address as this host sees it (its NAT's public ip:port)
    how: str  # "connect" (our dial, or a simultaneous open) or "accept" (the peer's dial)
    attempts: int
    elapsed_s: float


@dataclass
class UdpPunch:
    """An open UDP path: the peer's address as seen from here and the time it took."""

    remote: Addr
    sent: int
    elapsed_s: float


def parse_addr(text: str) -> Addr:
    """``"1.2.3.4:5"`` -> ``("1.2.3.4", 5)``."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"not an ip:port address: {text!r}")
    return host, int(port)


def fmt_addr(addr: tuple[Any, ...]) -> str:
    """``("1.2.3.4", 5)`` -> ``"1.2.3.4:5"``."""
    return f"{addr[0]}:{addr[1]}"


def set_reuse(sock: Any) -> None:
    """SO_REUSEADDR and SO_REUSEPORT: many sockets (listener and dialers) may bind one port."""
    sock.setsockopt(_stdsocket.SOL_SOCKET, _stdsocket.SO_REUSEADDR, 1)
    if hasattr(_stdsocket, "SO_REUSEPORT"):
        sock.setsockopt(_stdsocket.SOL_SOCKET, _stdsocket.SO_REUSEPORT, 1)


def set_tcp_keepalive(sock: Any, idle: int = TCP_KEEPALIVE_IDLE_S, interval: int = TCP_KEEPALIVE_INTERVAL_S,
                      count: int = TCP_KEEPALIVE_COUNT) -> None:
    """Kernel TCP keep-alives so a quiet punched connection keeps its NAT mappings."""
    sock.setsockopt(_stdsocket.SOL_SOCKET, _stdsocket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", interval), ("TCP_KEEPCNT", count)):
        if hasattr(_stdsocket, name):
            sock.setsockopt(_stdsocket.IPPROTO_TCP, getattr(_stdsocket, name), value)


async def bound_socket(kind: str, port: int, host: str = "0.0.0.0") -> trio.socket.SocketType:
    """A trio socket ("tcp" or "udp") bound to ``host:port`` with address and port reuse."""
    stype = _stdsocket.SOCK_STREAM if kind == "tcp" else _stdsocket.SOCK_DGRAM
    sock = trio.socket.socket(_stdsocket.AF_INET, stype)
    try:
        set_reuse(sock)
        await sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


async def reuse_listener(port: int, host: str = "0.0.0.0", backlog: int = 64) -> trio.SocketListener:
    """A TCP listener on ``port`` that dialers bound to the same port may share."""
    sock = await bound_socket("tcp", port, host)
    sock.listen(backlog)
    return trio.SocketListener(sock)


async def dial_from(port: int, remote: Addr, host: str = "0.0.0.0") -> trio.SocketStream:
    """Connect to ``remote`` from local ``port`` (shared with our listener); raises OSError on failure."""
    sock = await bound_socket("tcp", port, host)
    try:
        await sock.connect(remote)
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


async def tcp_simultaneous_open(local_port: int, remote: Addr, *, listener: trio.SocketListener | None = None,
                                timeout: float = 5.0, attempt_timeout: float = 2.5,
                                retry_delay: float = 0.05) -> TcpPunch:
    """Dial ``remote`` from ``local_port`` repeatedly while accepting on ``listener`` until one works.

    ``listener`` must be bound to ``local_port`` with reuse (``reuse_listener``); connections accepted
    from another address than ``remote``'s ip are closed and ignored. Raises ``PunchError`` after
    ``timeout`` seconds. The winning stream has TCP keep-alives on.
    """
    start = time.monotonic()
    winner: list[TcpPunch] = []
    attempts = 0
    errors: list[str] = []

    async def dialer(cancel: trio.CancelScope) -> None:
        nonlocal attempts
        while True:
            attempts += 1
            t0 = time.monotonic()
            try:
                with trio.fail_after(attempt_timeout):
                    stream = await dial_from(local_port, remote)
            except (OSError, trio.TooSlowError) as exc:
                code = getattr(exc, "errno", None)
                errors.append(errno.errorcode.get(code, type(exc).__name__) if code else type(exc).__name__)
                await trio.sleep(max(0.0, retry_delay - (time.monotonic() - t0)))
                continue
            winner.append(TcpPunch(stream, remote, "connect", attempts, time.monotonic() - start))
            cancel.cancel()
            return

    async def acceptor(cancel: trio.CancelScope) -> None:
        assert listener is not None
        while True:
            stream = await listener.accept()
            peer = stream.socket.getpeername()
            if peer[0] != remote[0]:
                await stream.aclose()
                continue
            winner.append(TcpPunch(stream, (peer[0], peer[1]), "accept", attempts, time.monotonic() - start))
            cancel.cancel()
            return

    with trio.move_on_after(timeout) as deadline:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(dialer, nursery.cancel_scope)
            if listener is not None:
                nursery.start_soon(acceptor, nursery.cancel_scope)
    if winner:
        for extra in winner[1:]:
            await extra.stream.aclose()
        set_tcp_keepalive(winner[0].stream.socket)
        return winner[0]
    assert deadline.cancelled_caught
    tail = ", ".join(errors[-3:]) or "no answer"
    raise PunchError(f"TCP hole punch to {fmt_addr(remote)} failed after {attempts} attempts ({tail})")


async def udp_punch(sock: trio.socket.SocketType, remote: Addr, *, token: bytes, peer_token: bytes,
                    timeout: float = 5.0, interval: float = 0.05, linger: int = 3) -> UdpPunch:
    """Send ``token`` to ``remote`` every ``interval`` until a datagram ``peer_token`` arrives from the peer.

    The peer is accepted at any source port of ``remote``'s ip (its mapping is what it is); after that
    ``linger`` more tokens go to the address the peer's datagram came from. Raises ``PunchError`` on timeout.
    """
    start = time.monotonic()
    sent = 0
    seen: list[Addr] = []

    async def sender() -> None:
        nonlocal sent
        while not seen:
            await sock.sendto(token, remote)
            sent += 1
            await trio.sleep(interval)

    async def receiver(cancel: trio.CancelScope) -> None:
        while True:
            data, addr = await sock.recvfrom(2048)
            if data == peer_token and addr[0] == remote[0]:
                seen.append((addr[0], addr[1]))
                cancel.cancel()
                return

    with trio.move_on_after(timeout):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
            nursery.start_soon(receiver, nursery.cancel_scope)
    if not seen:
        raise PunchError(f"UDP hole punch to {fmt_addr(remote)} failed after {sent} datagrams")
    elapsed = time.monotonic() - start
    for _ in range(linger):
        await sock.sendto(token, seen[0])
        sent += 1
        await trio.sleep(interval)
    return UdpPunch(seen[0], sent, elapsed)


async def udp_keepalive(sock: trio.socket.SocketType, remote: Addr, token: bytes,
                        interval: float = UDP_KEEPALIVE_S) -> None:
    """Send ``token`` to ``remote`` every ``interval`` seconds until cancelled, so both NATs keep the
    mapping of a quiet punched UDP path (conntrack forgets UDP after 30 s unreplied, 120 s assured)."""
    while True:
        await sock.sendto(token, remote)
        await trio.sleep(interval)
