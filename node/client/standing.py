"""Which servers a client trusts enough to only spot-check: standing earned by witnessed, checked work.

Identities are free, so a server starts with no standing: a client checks every step it computes
(``node/client/verify.py``) until it has passed ``threshold`` checked steps; from then on its
steps are sampled at the client's ``check_fraction``. ``LocalStanding`` is what this client
witnessed itself: each step of a server that a reference replica confirmed adds one, the sum
decays with ``half_life_s`` (a server must keep earning it), and a server caught lying loses all of
it. ``Standing`` is the small interface the verifier reads, so a swarm-wide standing (earned by
witnessed work that others checked) can later be consulted beside the local one
(``CombinedStanding``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Protocol


class Standing(Protocol):
    """What the verifier asks: is ``peer`` established (only sampled, no longer checked every step)?"""

    def established(self, peer: str) -> bool: ...


@dataclass
class LocalStanding:
    """Checked steps this client witnessed per server, decaying; established at ``threshold``."""

    threshold: float = 32.0
    half_life_s: float = 6 * 3600.0
    max_peers: int = 4096
    scores: dict[str, tuple[float, float]] = field(default_factory=dict)  # peer -> (score, at)

    def score(self, peer: str, now: float | None = None) -> float:
        s = self.scores.get(peer)
        if s is None:
            return 0.0
        now = time.monotonic() if now is None else now
        return s[0] * math.pow(0.5, max(0.0, now - s[1]) / self.half_life_s)

    def established(self, peer: str, now: float | None = None) -> bool:
        return self.threshold <= 0 or self.score(peer, now) >= self.threshold

    def credit(self, peer: str, steps: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if peer not in self.scores and len(self.scores) >= self.max_peers:  # bounded: drop the weakest
            weakest = min(self.scores, key=lambda p: self.score(p, now))
            self.scores.pop(weakest)
        self.scores[peer] = (self.score(peer, now) + max(0, steps), now)

    def forfeit(self, peer: str) -> None:
        self.scores.pop(peer, None)


@dataclass
class CombinedStanding:
    """Established when any source says so; what this client witnesses goes to the local one."""

    local: LocalStanding
    others: tuple[Standing, ...] = ()  # e.g. a swarm-wide standing

    def established(self, peer: str) -> bool:
        return self.local.established(peer) or any(o.established(peer) for o in self.others)

    def credit(self, peer: str, steps: int) -> None:
        self.local.credit(peer, steps)

    def forfeit(self, peer: str) -> None:
        self.local.forfeit(peer)
