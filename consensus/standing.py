"""Standing: how far a node relies on what a peer says, earned by work that peers with standing witnessed.

A pure, deterministic function of signed records (anything with ``kind``, ``author``, ``created``,
``body`` and ``key``, e.g. ``swarmlm.net.state.schema.Record``), the clock and the reader's
*anchors* -- the peers it trusts by configuration: itself, its bootstrap peers and any peer the
operator names. Identities are free, so nothing else starts with standing:

* **Witnessed work.** A node whose client completed generations through servers publishes a
  ``witness`` record (``witness_body``): per server, the tokens it served this node. A consensus
  round record witnesses every node that took part (``round_credit`` each). A record counts only
  from ``now - horizon_s`` to ``now + max_skew_s`` and decays with ``half_life_s``.
* **Witnesses need standing.** Standing flows out of the anchors (standing ``established``) along
  witness records, ``iterations`` hops deep. An anchor gives each peer it witnessed up to
  ``author_cap``; any other author gives each peer up to ``author_cap x w`` (``w`` = its own
  standing relative to ``established``, at most 1) and at most ``relay_budget x w`` in total, so an
  established identity can lift others only by less than it holds itself: a chain or tree of
  identities minted by an attacker holds less standing, in total, than the attacker earned.
  Nobody is credited for witnessing itself.
* ``is_established``: standing of at least ``established`` (1.0): every anchor, and any peer an
  anchor witnessed serving ``tokens_per_unit`` tokens (or several peers with standing witnessed).

Who uses it: the route planner avoids a server only on verdicts weighted by their authors'
standing (``swarmlm.consensus.verdicts``), the model registry ranks announcements by their hosts'
standing, the swarm state keeps reserved room and longer retention for established owners, and
the RPC server reserves buffers and decode time for them. Servers without standing can be
verified on every step (a later issue). The API below is stable: ``standing(records, peer, now,
anchors)``, ``is_established(...)``, ``standing_map(...)`` (all at once; what callers cache).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from swarmlm.consensus.audit import verify_record

WITNESS_KIND = "witness"
ROUND_KIND = "round"
MAX_WITNESS_ROWS = 64


@dataclass(frozen=True)
class StandingParams:
    tokens_per_unit: float = 256.0  # served tokens an anchor must witness to make a peer established
    round_credit: float = 0.25  # standing units one witnessed consensus round is worth
    author_cap: float = 1.0  # the most one author gives one peer
    relay_budget: float = 0.5  # the most a non-anchor author gives all peers together, times its weight
    established: float = 1.0
    max_standing: float = 4.0
    half_life_s: float = 3600.0
    horizon_s: float = 6 * 3600.0
    max_skew_s: float = 60.0
    iterations: int = 3


DEFAULT_PARAMS = StandingParams()


def witness_body(served: Mapping[str, int], since: float, until: float) -> dict[str, Any]:
    """The body of a ``witness`` record: tokens each server served us in [since, until]."""
    rows = sorted(((p, int(n)) for p, n in served.items() if n > 0), key=lambda r: (-r[1], r[0]))
    return {"v": 1, "since": float(since), "until": float(until), "served": [list(r) for r in rows[:MAX_WITNESS_ROWS]]}


def parse_witness(body: Any) -> list[tuple[str, float]]:
    """The (peer, tokens) rows of a witness body; malformed rows are skipped, never trusted."""
    if not isinstance(body, dict) or not isinstance(body.get("served"), list):
        return []
    out = []
    for row in body["served"][:MAX_WITNESS_ROWS]:
        if (isinstance(row, list) and len(row) == 2 and isinstance(row[0], str) and 0 < len(row[0]) <= 128
                and isinstance(row[1], (int, float)) and not isinstance(row[1], bool)
                and math.isfinite(row[1]) and row[1] > 0):
            out.append((row[0], float(min(row[1], 1e9))))
    return out


@functools.lru_cache(maxsize=2048)
def round_participants(blob: bytes) -> tuple[str, ...]:
    """The nodes a signed consensus round record names as candidates or judges (empty if it does
    not verify). Cached: records never change."""
    try:
        v = verify_record(blob)
    except Exception:  # a record that does not verify witnesses nothing
        return ()
    nodes = {c.node for c in v.candidates} | set(v.votes)
    return tuple(sorted(n for n in nodes if isinstance(n, str)))


def _credits(records: Iterable[Any], now: float, p: StandingParams) -> dict[str, dict[str, float]]:
    """author -> peer -> decayed standing units it witnessed."""
    out: dict[str, dict[str, float]] = {}
    for rec in records:
        kind = getattr(rec, "kind", None)
        if kind not in (WITNESS_KIND, ROUND_KIND):
            continue
        created = getattr(rec, "created", None)
        if not isinstance(created, (int, float)) or not now - p.horizon_s <= created <= now + p.max_skew_s:
            continue
        decay = 0.5 ** (max(0.0, now - created) / p.half_life_s)
        given = out.setdefault(rec.author, {})
        if kind == WITNESS_KIND:
            for peer, tokens in parse_witness(rec.body):
                given[peer] = given.get(peer, 0.0) + tokens / p.tokens_per_unit * decay
        elif isinstance(rec.body, (bytes, bytearray)):
            for peer in round_participants(bytes(rec.body)):
                given[peer] = given.get(peer, 0.0) + p.round_credit * decay
    return out


def standing_map(records: Iterable[Any], now: float, anchors: Iterable[str] = (),
                 params: StandingParams = DEFAULT_PARAMS) -> dict[str, float]:
    """Every peer's standing (peers without any are absent), as seen by a reader with ``anchors``."""
    p = params
    anchors = frozenset(anchors)
    credits = _credits(records, now, p)
    base = {a: p.established for a in anchors}
    standing = dict(base)
    for _ in range(max(1, p.iterations)):
        nxt = dict(base)
        for author in sorted(credits):
            s = standing.get(author, 0.0)
            if s <= 0.0:
                continue
            w = 1.0 if author in anchors else min(1.0, s / p.established)
            gifts = {peer: min(p.author_cap, units) * w for peer, units in credits[author].items() if peer != author}
            if author not in anchors:
                total, cap = sum(gifts.values()), p.relay_budget * w
                if total > cap > 0:
                    gifts = {peer: g * cap / total for peer, g in gifts.items()}
            for peer, g in gifts.items():
                nxt[peer] = nxt.get(peer, 0.0) + g
        nxt = {peer: min(p.max_standing, v) for peer, v in nxt.items() if v > 0.0}
        for a in anchors:
            nxt[a] = max(nxt.get(a, 0.0), p.established)
        if nxt == standing:
            break
        standing = nxt
    return standing


def standing(records: Iterable[Any], peer: str, now: float, anchors: Iterable[str] = (),
             params: StandingParams = DEFAULT_PARAMS) -> float:
    """``peer``'s standing in [0, max_standing]; a new identity has 0."""
    return standing_map(records, now, anchors, params).get(peer, 0.0)


def is_established(records: Iterable[Any], peer: str, now: float, anchors: Iterable[str] = (),
                   params: StandingParams = DEFAULT_PARAMS) -> bool:
    """Whether ``peer`` holds at least ``params.established`` standing (every anchor does)."""
    return standing(records, peer, now, anchors, params) >= params.established
