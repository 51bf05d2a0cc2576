"""Adapters from trio streams (TCP sockets, in-memory pairs) to the ``ByteStream`` the RPC uses.

The RPC benchmark compares our libp2p RPC with raw trio TCP using the very same framing; tests
run the RPC over in-memory stream pairs.
"""

from __future__ import annotations

import socket

import trio


class TrioByteStream:
    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream

    async def read(self, n: int) -> bytes:
        return await self.stream.receive_some(n)

    async def write(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def close(self) -> None:
        await self.stream.aclose()

    async def reset(self) -> None:
        await self.stream.aclose()


def tune_socket(stream: trio.SocketStream) -> None:
    """TCP_NODELAY for request/response latency (trio sets it by default; be explicit)."""
    stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
