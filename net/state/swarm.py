"""The whole swarm as one node sees it: read-only typed views over every owner's documents.

``SwarmState`` holds the ``OwnerDoc`` of every owner the node replicates (the sync engine adds and
drops them) and computes the merged view readers use: peers and their liveness, who hosts which
layers, the model registry (per model id, the entry its online hosts announce, weighted by
standing), verified records, and rows for ``swarmlm status`` / ``peers``.

Liveness is one rule, ``peer_status``, used by the state itself (routing and coverage count
``online`` peers only), `swarmlm status` and `peers`, and the health page:

- ``left``: the peer published its signed leaving mark (clean shutdown: SIGTERM, Ctrl-C);
- ``offline``: no heartbeat for the TTL (it vanished silently);
- ``disconnected``: fresh heartbeat, but the viewer's connection to it closed or a dial failed
  (a killed process: its sockets close at once);
- ``online``: otherwise.
"""

from __future__ import annotations

from typing import Any, Callable

from swarmlm.net.state.doc import OwnerDoc
from swarmlm.net.state.schema import HostedRange, ModelInfo, PeerEntry, Record

STATUSES = ("online", "disconnected", "left", "offline")
LINKS = ("up", "lost", "unknown")  # the viewer's own connection: open / closed or undialable / never tried


def peer_status(entry: PeerEntry, now: float, ttl: float, link: str = "unknown") -> str:
    """The one liveness rule (see the module docstring); ``link`` is one of ``LINKS``."""
    if entry.has_left:
        return "left"
    if entry.age(now) > ttl:
        return "offline"
    return "disconnected" if link == "lost" else "online"


class SwarmState:
    """Read-only typed views over all owners' documents held by one node."""

    def __init__(self, ttl: float = 60.0) -> None:
        self.ttl = ttl
        self.docs: dict[str, OwnerDoc] = {}
        self.weigh: Callable[[str], float] | None = None  # the node's standing of a peer (registry votes)

    def peer(self, peer_id: str) -> PeerEntry | None:
        d = self.docs.get(peer_id)
        return d.entry if d else None

    def peers(self, now: float, include_offline: bool = False) -> list[PeerEntry]:
        """Entries sorted by peer id; offline ones (heartbeat older than the TTL) only on request."""
        out = [d.entry for _, d in sorted(self.docs.items()) if d.entry is not None and not d.is_records]
        return out if include_offline else [e for e in out if e.online(now, self.ttl)]

    def is_online(self, peer_id: str, now: float) -> bool:
        e = self.peer(peer_id)
        return e is not None and e.online(now, self.ttl)

    def hosts_of(self, model_id: str, now: float) -> list[tuple[PeerEntry, HostedRange]]:
        return [(e, h) for e in self.peers(now) for h in e.hosted if h.model == model_id]

    def models(self, now: float | None = None) -> dict[str, ModelInfo]:
        """The model registry: per model id, the entry that the peers actually serving it announce.

        A peer's announcement counts only for a model it hosts layers of, and only if its ranges fit
        the layer count it announces (peers hosting nothing have no say). Announcements are ranked
        by the summed standing of their hosts (``weigh``, set by the node), then by how many hosts
        announce them; ties go to the smallest config hash, so every reader picks the same entry.
        """
        votes: dict[str, dict[ModelInfo, list[float]]] = {}
        for owner, d in self.docs.items():
            if d.is_records or d.entry is None or now is not None and not self.is_online(owner, now):
                continue
            for mid, info in d.models.items():
                ranges = [h for h in d.entry.hosted if h.model == mid]
                if not ranges or any(h.end > info.layers for h in ranges):
                    continue
                tally = votes.setdefault(mid, {}).setdefault(info, [0.0, 0])
                tally[0] += self.weigh(owner) if self.weigh is not None else 0.0
                tally[1] += 1
        return {mid: min(v, key=lambda i: (-v[i][0], -v[i][1], i.config_hash, i.layers, i.dtype))
                for mid, v in sorted(votes.items())}

    def records(self, kind: str | None = None, author: str | None = None) -> list[Record]:
        """Verified records, oldest first (ties by key), optionally of one kind / author."""
        out = [r for d in self.docs.values() if d.is_records and (author is None or d.owner == author)
               for r in d.records.values() if kind is None or r.kind == kind]
        return sorted(out, key=lambda r: (r.created, r.key))

    def record(self, key: str) -> Record | None:
        for d in self.docs.values():
            if key in d.records:
                return d.records[key]
        return None

    def snapshot(self) -> dict[str, Any]:
        """Plain-value dump of every owner's document (for equality checks and debugging)."""
        return {o: {"epoch": d.epoch, **d.to_py()} for o, d in sorted(self.docs.items())}

    def status_rows(self, now: float, include_offline: bool = True,
                    links: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """Rows for `swarmlm status`: peer, reachability, what it hosts, heartbeat age, and its
        ``status`` (``peer_status`` with the viewer's ``links``); ``online`` is status == "online"."""
        rows = []
        for e in self.peers(now, include_offline=include_offline):
            status = peer_status(e, now, self.ttl, (links or {}).get(e.peer_id, "unknown"))
            rows.append({"peer_id": e.peer_id, "agent": e.agent, "reach": e.reach, "addrs": list(e.addrs),
                         "hosted": [f"{h.model}[{h.start}:{h.end}]" for h in e.hosted],
                         "throughput": e.throughput, "free_kv": e.free_kv, "load": e.load,
                         "heartbeat_age_s": round(e.age(now), 1), "status": status, "online": status == "online"})
        return rows
