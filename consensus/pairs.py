"""Deterministic, seeded assignment of ordered candidate pairs to each judge.

Every node can recompute a judge's assignment from the round seed, the judge's peer id and the
candidate ids, so a reveal that votes on other pairs (cherry-picking) is rejected. A judge never
sees its own candidate. With ``m`` candidates left for a judge, it gets the ``m`` adjacent pairs of
a judge-specific permutation (a cycle) plus ``ceil(m/2)`` cross pairs at distance ``m // 2``, each
in both orders, so about ``3 m`` ordered pairs; the two orders cancel position bias. No PRNG
library is involved: the permutation and the presentation order come from SHA-256 only.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

DEFAULT_PAIR_FACTOR = 3


def _key(*parts: str) -> bytes:
    return hashlib.sha256("\x1f".join(("swarmlm-pairs-v1",) + parts).encode()).digest()


def assign_pairs(seed: str, judge: str, candidates: Sequence[str], exclude: Sequence[str] = (),
                 factor: int = DEFAULT_PAIR_FACTOR) -> list[tuple[str, str]]:
    """Ordered pairs ``(a, b)`` of candidate ids for ``judge`` to compare.

    ``exclude`` holds the ids the judge must not see (its own candidate). ``factor`` 3 gives the
    adjacent + cross construction described above; 2 gives adjacent pairs only (both orders); a
    larger factor adds cross pairs at further distances until every pair is used.
    """
    if factor < 1:
        raise ValueError("the pair factor must be at least 1")
    banned = set(exclude)
    pool = sorted({c for c in candidates if c not in banned}, key=lambda c: (_key(seed, judge, c), c))
    m = len(pool)
    if m < 2:
        return []
    unordered: list[tuple[int, int]] = []
    seen: set[frozenset[int]] = set()

    def add(i: int, j: int) -> None:
        k = frozenset((i % m, j % m))
        if len(k) == 2 and k not in seen:
            seen.add(k)
            unordered.append((i % m, j % m))

    for k in range(m):  # adjacent pairs of the cycle
        add(k, k + 1)
    target = max(1, (factor * m + 1) // 2)  # unordered pairs wanted (each shown in both orders)
    offset = m // 2
    while len(unordered) < target and len(seen) < m * (m - 1) // 2 and offset >= 2:
        for k in range(m):
            if len(unordered) >= target:
                break
            add(k, k + offset)
        offset -= 1
    ordered = [(pool[i], pool[j]) for i, j in unordered] + [(pool[j], pool[i]) for i, j in unordered]
    ordered.sort(key=lambda ab: (_key(seed, judge, ab[0], ab[1]), ab))
    return ordered
