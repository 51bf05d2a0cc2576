"""Zero-copy receive buffers for ``FastYamux`` streams (``ChunkBuffer``).

A stream's received bytes stay as views of the decrypted Noise messages they arrived in (see
``fastnoise.FastNoiseSession._take``) until a reader copies them out, once, into its own buffer.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from swarmlm.net.transport.upstream import replaces


# py-libp2p 0.8.1 keeps a bytearray per stream in Yamux.stream_buffers and appends every DATA frame to
# it (a copy each); a ChunkBuffer takes its place. The inherited methods recorded here only use len, truth
# and clear on it.
@replaces("libp2p.stream_muxer.yamux.yamux.Yamux.read_stream", "d07c99299384666d")
@replaces("libp2p.stream_muxer.yamux.yamux.Yamux._finalize_stream_locked", "95b60e92421133b4")
@replaces("libp2p.stream_muxer.yamux.yamux.Yamux._sweep_stale_streams", "0b1a5033e707e138")
class ChunkBuffer:
    """A stream's receive buffer: zero-copy views of decrypted Noise messages, oldest first.

    Stands in for the ``bytearray`` stock keeps in ``Yamux.stream_buffers`` (the inherited code only
    uses ``len``, truth and ``clear``); a reader copies out of it once, into its own buffer."""

    __slots__ = ("_chunks", "_off", "_size")

    def __init__(self) -> None:
        self._chunks: deque[memoryview] = deque()
        self._off = 0
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def append(self, data: Any) -> None:
        mv = data if isinstance(data, memoryview) else memoryview(data)
        if len(mv):
            self._chunks.append(mv)
            self._size += len(mv)

    def __iadd__(self, data: Any) -> "ChunkBuffer":
        self.append(data)
        return self

    def clear(self) -> None:
        self._chunks.clear()
        self._off = self._size = 0

    def take_into(self, view: memoryview) -> int:
        """Copy up to ``len(view)`` bytes into ``view``; returns how many."""
        n = min(len(view), self._size)
        pos = 0
        chunks = self._chunks
        while pos < n:
            first, off = chunks[0], self._off
            k = min(n - pos, len(first) - off)
            view[pos:pos + k] = first[off:off + k]
            pos += k
            if off + k == len(first):
                chunks.popleft()
                self._off = 0
            else:
                self._off = off + k
        self._size -= n
        return n

    def take(self, n: int) -> bytes:
        """Up to ``n`` bytes (all when ``n`` < 0) as ``bytes``."""
        n = self._size if n < 0 else min(n, self._size)
        first, off = self._chunks[0], self._off
        if len(first) - off >= n:  # within one chunk: one copy
            data = bytes(first[off:off + n])
            self._off = off + n
            if self._off == len(first):
                self._chunks.popleft()
                self._off = 0
            self._size -= n
            return data
        out = bytearray(n)
        self.take_into(memoryview(out))
        return bytes(out)
