"""A user-space latency forwarder: WAN round trips on loopback (this kernel has no netem).

``LatencyForwarder(listen_port, target, delay_s, bandwidth_bps=None)`` accepts TCP connections on
``127.0.0.1:listen_port`` and opens one to ``target`` (``(host, port)``) for each. Every chunk read on
one side is written to the other side ``delay_s`` later (a fixed one-way delay per direction, so a
round trip through it costs ``2 * delay_s``); with ``bandwidth_bps`` a chunk also waits its
serialization time behind the chunks before it. Each direction is one FIFO (a reader stamps chunks,
a writer sends them when due), so byte order is preserved and the reader never waits on the delay:
many bytes can be in flight, as on a long link. Noise and Yamux pass through untouched (it never
looks at the bytes). An end of stream is forwarded (after the delay) as a half-close.

``swarmlm testnet up --rtt-ms R`` runs one in front of every node's listen address (the node
announces the forwarder's port) in a process of its own:
``python -m swarmlm.testnet.latency --listen PORT --target HOST:PORT --delay-ms D [--bandwidth-mbps B]``.
"""

from __future__ import annotations

import argparse
import logging
import math
import socket
import sys
import time
from dataclasses import dataclass

import trio

log = logging.getLogger("swarmlm.latency")

CHUNK = 65536
QUEUE_CHUNKS = 4096  # at most this many chunks in flight per direction (then the reader waits)


@dataclass
class _Chunk:
    due: float
    data: bytes  # b"" marks the end of stream


class LatencyForwarder:
    """Forward ``127.0.0.1:listen_port`` to ``target`` with ``delay_s`` each way (see module doc)."""

    def __init__(self, listen_port: int, target: tuple[str, int], delay_s: float,
                 bandwidth_bps: float | None = None, host: str = "127.0.0.1") -> None:
        if not delay_s >= 0 or not math.isfinite(delay_s):
            raise ValueError("delay must be a finite number of seconds >= 0")
        if bandwidth_bps is not None and not bandwidth_bps > 0:
            raise ValueError("bandwidth must be positive")
        self.listen_port = listen_port
        self.target = target
        self.delay_s = float(delay_s)
        self.bandwidth_bps = bandwidth_bps
        self.host = host
        self.port: int | None = None  # the bound port, once serving
        self.connections = 0

    async def serve(self, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(self.listen_port, host=self.host)
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, downstream: trio.SocketStream) -> None:
        self.connections += 1
        try:
            upstream = await trio.open_tcp_stream(*self.target)
        except OSError as exc:
            log.warning("forwarder %s -> %s:%s: %s", self.port, *self.target, exc)
            await downstream.aclose()
            return
        try:
            async with downstream, upstream:
                async with trio.open_nursery() as n:
                    n.start_soon(self._direction, downstream, upstream)
                    n.start_soon(self._direction, upstream, downstream)
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # one side broke (a reset): the whole connection is dropped, the forwarder serves on

    async def _direction(self, src: trio.SocketStream, dst: trio.SocketStream) -> None:
        send, recv = trio.open_memory_channel[_Chunk](QUEUE_CHUNKS)
        async with trio.open_nursery() as n:
            n.start_soon(self._read, src, send)
            n.start_soon(self._write, recv, dst)

    async def _read(self, src: trio.SocketStream, send: trio.MemorySendChannel) -> None:
        async with send:
            while True:
                data = await src.receive_some(CHUNK)
                await send.send(_Chunk(time.monotonic() + self.delay_s, bytes(data)))
                if not data:
                    return

    async def _write(self, recv: trio.MemoryReceiveChannel, dst: trio.SocketStream) -> None:
        free_at = 0.0  # when the (capped) link is free to start the next chunk
        async with recv:
            async for chunk in recv:
                due = chunk.due
                if self.bandwidth_bps and chunk.data:
                    start = max(due - self.delay_s, free_at)
                    free_at = start + len(chunk.data) * 8 / self.bandwidth_bps
                    due = max(due, free_at + self.delay_s)
                wait = due - time.monotonic()
                if wait > 0:
                    await trio.sleep(wait)
                if not chunk.data:
                    try:
                        await dst.send_eof()
                    except (trio.ClosedResourceError, OSError):
                        pass
                    return
                await dst.send_all(chunk.data)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a node behind a forwarder)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def forwarder_command(listen: int, target_port: int, delay_ms: float, bandwidth_mbps: float | None = None,
                      python: str | None = None) -> list[str]:
    """The command line of a forwarder process ``127.0.0.1:listen`` -> ``127.0.0.1:target_port``."""
    cmd = [python or sys.executable, "-m", "swarmlm.testnet.latency", "--listen", str(listen),
           "--target", f"127.0.0.1:{target_port}", "--delay-ms", str(delay_ms)]
    return cmd + (["--bandwidth-mbps", str(bandwidth_mbps)] if bandwidth_mbps else [])


def _parse_target(s: str) -> tuple[str, int]:
    host, _, port = s.rpartition(":")
    try:
        p = int(port)
    except ValueError:
        p = -1
    if not host or not 0 < p < 65536:
        raise argparse.ArgumentTypeError(f"target {s!r} is not HOST:PORT")
    return host, p


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m swarmlm.testnet.latency",
                                 description="forward a TCP port with a fixed one-way delay per direction")
    ap.add_argument("--listen", type=int, required=True, metavar="PORT", help="port to accept on (127.0.0.1)")
    ap.add_argument("--target", type=_parse_target, required=True, metavar="HOST:PORT")
    ap.add_argument("--delay-ms", type=float, required=True, help="one-way delay per direction (RTT / 2)")
    ap.add_argument("--bandwidth-mbps", type=float, default=None, help="optional cap per direction and connection")
    ns = ap.parse_args(argv)
    if not 0 <= ns.delay_ms <= 10_000 or (ns.bandwidth_mbps is not None and not ns.bandwidth_mbps > 0):
        print("error: --delay-ms must be in 0..10000 and --bandwidth-mbps positive", file=sys.stderr)
        return 2
    bw = ns.bandwidth_mbps * 1e6 if ns.bandwidth_mbps else None
    fwd = LatencyForwarder(ns.listen, ns.target, ns.delay_ms / 1000.0, bw)
    try:
        trio.run(fwd.serve)
    except OSError as exc:
        print(f"error: cannot listen on port {ns.listen}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
