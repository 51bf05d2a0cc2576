"""Reaching a peer the swarm state lists: the one ``ensure_connected`` every part of the node uses,
and the one place that remembers which peers could not be reached (``DOWN``).

The pipeline client, the verification checks and the consensus coordinator all call peers they know
only from the swarm state (its signed entry lists the peer's addresses). ``ensure_connected`` dials
those addresses in turn when no connection is open, each within ``DIAL_TIMEOUT_S``. When none
answers, the peer is marked down in ``DOWN``, which every client in this process reads (a dead
server that is still listed is routed around by all of them at once, not discovered by each
generation in turn); a mark lasts until the peer is reached again, its swarm-state entry shows a
newer heartbeat than the one it had when it failed (it restarted or came back), or ``down_s`` passed.
``recheck`` is the same dial for a peer that failed in the middle of a session: when its connection
is gone (it vanished), one re-dial within ``RECHECK_S`` tells the other clients not to route to it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import trio

log = logging.getLogger("swarmlm.dial")

DIAL_TIMEOUT_S = 5.0
RECHECK_S = 2.0  # how long a failover waits at most to learn whether a failed peer is still reachable


@dataclass
class DownPeers:
    """Peers this process could not reach: peer id -> (when, the heartbeat its entry had then)."""

    down_s: float = 30.0
    marks: dict[str, tuple[float, float]] = field(default_factory=dict)
    max_marks: int = 4096

    def mark(self, peer: str, heartbeat: float = 0.0, now: float | None = None) -> None:
        if len(self.marks) >= self.max_marks:  # bounded: forget the oldest marks
            for p, _ in sorted(self.marks.items(), key=lambda kv: kv[1][0])[: self.max_marks // 4]:
                self.marks.pop(p, None)
        self.marks[peer] = (time.monotonic() if now is None else now, heartbeat)

    def clear(self, peer: str) -> None:
        self.marks.pop(peer, None)

    def is_down(self, peer: str, heartbeat: float | None = None, now: float | None = None) -> bool:
        m = self.marks.get(peer)
        if m is None:
            return False
        now = time.monotonic() if now is None else now
        if now - m[0] > self.down_s or (heartbeat is not None and heartbeat > m[1]):
            self.marks.pop(peer, None)
            return False
        return True

    def down_in(self, state: Any) -> set[str]:
        """The marked peers that are still down given ``state`` (a SwarmState: their heartbeats)."""
        out = set()
        for peer in list(self.marks):
            entry = state.peer(peer)
            if self.is_down(peer, entry.heartbeat if entry is not None else None):
                out.add(peer)
        return out


DOWN = DownPeers()  # process-wide: every client in this process shares what it learnt


async def ensure_connected(host: Any, state: Any, peer: str) -> bool:
    """Connect ``host`` to ``peer`` through the addresses its swarm-state entry lists, unless
    connected already (or ``peer`` is ourselves). True when connected afterwards; when no address
    answers, ``peer`` is marked in ``DOWN``."""
    if peer == host.peer_id or host.is_connected(peer):
        DOWN.clear(peer)
        return True
    entry = state.peer(peer)
    for addr in (entry.addrs if entry else ()):
        try:
            with trio.fail_after(DIAL_TIMEOUT_S):
                await host.connect(addr if "/p2p/" in addr else f"{addr}/p2p/{peer}")
            DOWN.clear(peer)
            return True
        except Exception as exc:  # any transport error or the timeout: try the next address
            log.debug("dial %s via %s failed: %s", peer[-8:], addr, exc)
    if entry is not None:
        DOWN.mark(peer, entry.heartbeat)
        log.info("peer %s unreachable at its %d listed addresses: routing around it", peer[-8:], len(entry.addrs))
    return False


async def recheck(host: Any, state: Any, peer: str) -> None:
    """``peer`` failed during a session: when no connection to it is left (it vanished rather than
    answered badly), dial it again, within ``RECHECK_S``; when no listed address answers it is
    marked in ``DOWN`` (every client of this process routes around it). A dial that outlasts
    ``RECHECK_S`` marks nothing: the failover does not wait longer to learn it."""
    if host.is_connected(peer) or peer in DOWN.marks:
        return
    with trio.move_on_after(RECHECK_S):
        await ensure_connected(host, state, peer)
