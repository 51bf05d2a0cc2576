"""What this node's client witnessed: tokens each server served it, published as signed records.

A full node's client (a gateway, a consensus coordinator) counts, per server, the tokens of every
generation it completed through it (``add``), and every ``interval_s`` publishes one ``witness``
record (``swarmlm.consensus.standing.witness_body``) in the swarm state. That is how servers earn
standing: only witnesses that have standing themselves count (see ``consensus/standing.py``).
Light clients (no entry in the state) publish nothing.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Iterable

from swarmlm.consensus.standing import WITNESS_KIND, witness_body
from swarmlm.errors import SwarmError

log = logging.getLogger("swarmlm.client")


class WitnessLog:
    def __init__(self, interval_s: float = 120.0) -> None:
        self.interval_s = interval_s
        self.served: Counter[str] = Counter()
        self.since: float | None = None
        self.published = 0

    def add(self, peers: Iterable[str], tokens: int, now: float) -> None:
        if tokens <= 0:
            return
        for p in set(peers):
            self.served[p] += int(tokens)
        if self.since is None:
            self.since = now

    def due(self, now: float) -> bool:
        return bool(self.served) and self.since is not None and now - self.since >= self.interval_s

    def flush(self, state_service: Any, now: float) -> Any:
        """Publish what was witnessed since the last record (None when there is nothing, or when
        this node publishes no state: a light client)."""
        if not self.served or not getattr(state_service, "publish", False):
            return None
        body = witness_body(self.served, self.since or now, now)
        self.served.clear()
        self.since = None
        try:
            rec = state_service.add_record(WITNESS_KIND, body)
        except SwarmError as exc:  # our records document is full for this epoch
            log.warning("not publishing a witness record: %s", exc)
            return None
        self.published += 1
        return rec
