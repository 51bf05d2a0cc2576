"""The peer table: who we know, how to reach them, and their round-trip time.

Two round-trip figures per peer: ``rtt_ms``, an EMA of pings (the status command, the health
page), and ``base_rtt_ms``, the least ping of the ``BASE_WINDOW_S`` up to the newest (routing
costs): the path's own delay, as TCP's BBR estimates it, which one ping taken while the peer was
busy does not move for tens of seconds as it moves the EMA. Pure bookkeeping: the host feeds it
connection events and ping results; time is passed in.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

BASE_WINDOW_S = 60.0  # pings are ~10 s apart: the least of the last ~6
BASE_SAMPLES = 16


@dataclass
class PeerInfo:
    peer_id: str
    addrs: list[str] = field(default_factory=list)
    rtt_ms: float | None = None  # EMA
    last_seen: float = 0.0
    connected: bool = False
    agent: str = ""
    failures: int = 0
    relayed: bool = False
    recent: deque = field(default_factory=lambda: deque(maxlen=BASE_SAMPLES))  # (time, rtt_ms) of recent pings

    @property
    def base_rtt_ms(self) -> float | None:
        """The least ping of the ``BASE_WINDOW_S`` up to the newest one (on the clock ``record_rtt``
        was given); the EMA when there are no samples, None if never measured."""
        if not self.recent:
            return self.rtt_ms
        newest = self.recent[-1][0]
        return min(ms for t, ms in self.recent if newest - t <= BASE_WINDOW_S)


class PeerTable:
    def __init__(self, alpha: float = 0.3) -> None:
        self.alpha = alpha
        self._peers: dict[str, PeerInfo] = {}

    def get(self, peer_id: str) -> PeerInfo | None:
        return self._peers.get(peer_id)

    def ensure(self, peer_id: str) -> PeerInfo:
        info = self._peers.get(peer_id)
        if info is None:
            info = self._peers[peer_id] = PeerInfo(peer_id)
        return info

    def connected(self, peer_id: str, addrs: list[str], now: float, relayed: bool = False) -> None:
        info = self.ensure(peer_id)
        info.connected = True
        info.last_seen = now
        info.relayed = relayed
        for a in addrs:
            if a not in info.addrs:
                info.addrs.append(a)

    def disconnected(self, peer_id: str) -> None:
        if peer_id in self._peers:
            self._peers[peer_id].connected = False

    def record_rtt(self, peer_id: str, rtt_ms: float, now: float) -> None:
        info = self.ensure(peer_id)
        info.rtt_ms = rtt_ms if info.rtt_ms is None else (1 - self.alpha) * info.rtt_ms + self.alpha * rtt_ms
        info.recent.append((now, rtt_ms))
        info.last_seen = now
        info.failures = 0

    def record_failure(self, peer_id: str) -> None:
        self.ensure(peer_id).failures += 1

    def rtt_ms(self, peer_id: str, default: float = 50.0) -> float:
        info = self._peers.get(peer_id)
        return default if info is None or info.rtt_ms is None else info.rtt_ms

    def all(self) -> list[PeerInfo]:
        return sorted(self._peers.values(), key=lambda p: p.peer_id)

    def connected_ids(self) -> list[str]:
        return [p.peer_id for p in self.all() if p.connected]
