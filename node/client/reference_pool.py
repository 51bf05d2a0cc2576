"""Idle reference sessions a client keeps open between verification rounds and generations.

Opening a reference session (``node/client/reference.py``) costs a new stream -- protocol
negotiation, the open, and at the end the close -- on the replica and on us; on a small model that
is most of what a round costs. When a route session ends, ``Verifier`` (``node/client/verify.py``)
puts its healthy references back here instead of closing them, and a later round that *drew* the
same replica for the same layers, head and sampling takes the stream back and feeds it from
position 0 on: the replica overwrites its cache from there (``models/shard.py``: running from
``start < length`` rewinds). Only the stream is reused: which replica checks a hop is drawn at
random exactly as without the pool, and every check still compares the hop's signed taps with what
the replica computes from the inputs fed to it in this round.

Bounded: at most ``per_peer`` idle sessions per replica (within the replica's own ``CheckLimits``)
and ``size`` in all; one idle longer than ``ttl_s`` is closed instead of reused (well within the
replica's idle bound, so a reused stream is not one the replica is about to end). The client side
holds no task: stale sessions are handed back to the caller to close, on every ``take`` and ``put``.
"""

from __future__ import annotations

import time
from typing import Any, Callable

IDLE_TTL_S = 15.0  # an idle reference older than this is closed, not reused
POOL_SIZE = 8  # idle references a client keeps in all
POOL_PER_PEER = 2  # ... and per replica (``CheckLimits.per_peer`` is 4)


def pool_key(start: int, end: int, head: bool, sampling: dict | None) -> tuple:
    """What a reused reference must match besides its replica: its layers, and for the head the
    sampling it was opened with (seeded sampling compares per-position draws; greedy draws nothing,
    so there the per-generation seed is left out of the key)."""
    if not head or not sampling:
        return (start, end, head, None)
    sp = dict(sampling)
    if float(sp.get("temperature") or 0.0) == 0.0 or int(sp.get("top_k") or 0) == 1:
        sp.pop("seed", None)
    return (start, end, head, repr(sorted(sp.items())))


class ReferencePool:
    """Idle ``ReferenceSession``s of one client, by replica and ``pool_key``."""

    def __init__(self, ttl_s: float = IDLE_TTL_S, size: int = POOL_SIZE, per_peer: int = POOL_PER_PEER,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s, self.size, self.per_peer, self.clock = ttl_s, size, per_peer, clock
        self._idle: list[tuple[float, Any]] = []  # (since, reference), oldest first
        self.reused = 0

    def __len__(self) -> int:
        return len(self._idle)

    def _expire(self) -> list[Any]:
        now = self.clock()
        stale = [r for since, r in self._idle if now - since > self.ttl_s]
        self._idle = [(since, r) for since, r in self._idle if now - since <= self.ttl_s]
        return stale

    def take(self, peer: str, key: tuple, max_length: int) -> tuple[Any | None, list[Any]]:
        """An idle reference on ``peer`` for ``key`` with room for ``max_length`` positions (rewound
        to position 0), or None; and the stale references to close."""
        stale = self._expire()
        for i, (_, ref) in enumerate(self._idle):
            if ref.peer == peer and ref.key == key and ref.max_length >= max_length:
                del self._idle[i]
                ref.rewind()
                self.reused += 1
                return ref, stale
        return None, stale

    def put(self, ref: Any) -> list[Any]:
        """Keep ``ref`` idle if it is healthy and there is room; the references to close (``ref``
        itself when it is not kept, and any that expired or were pushed out)."""
        out = self._expire()
        if not ref.reusable:
            return out + [ref]
        self._idle.append((self.clock(), ref))
        mine = [i for i, (_, r) in enumerate(self._idle) if r.peer == ref.peer]
        drop = set(mine[:max(0, len(mine) - self.per_peer)])
        drop |= set(range(max(0, len(self._idle) - self.size)))
        out += [r for i, (_, r) in enumerate(self._idle) if i in drop]
        self._idle = [(s, r) for i, (s, r) in enumerate(self._idle) if i not in drop]
        return out

    def drain(self) -> list[Any]:
        """Every idle reference (to close: the client is going away)."""
        out, self._idle = [r for _, r in self._idle], []
        return out
