"""The peer table: who we know, how to reach them, and their round-trip time (EMA of pings).

Other layers read it (routing costs, the status command, the health page). Pure bookkeeping:
the host feeds it connection events and ping results; time is passed in.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
