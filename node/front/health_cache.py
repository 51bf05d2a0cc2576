"""The health page's data made safe to render: validated records, bounded sizes, one cached summary.

Everything on the page comes from peers, and any peer may be hostile. So before the page (or
``/api/swarm``) uses a record it goes through a schema (``verdict_rows``, ``round_summary``),
every number that is not finite becomes ``None`` (``finite``), the lists are cut to what a page
can show (``MAX_PEERS``, ``MAX_MODELS``; layer counts are capped at the state's edge), and the
snapshot is computed at most once per ``max_age_s`` whatever the request rate (``SnapshotCache``):
a request never pays for more than one bounded summary, and concurrent requests share it.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import trio

from swarmlm.consensus.verdicts import VERDICT_KIND, parse_verdict

MAX_PEERS = 256  # peers listed on the page (this node first, then by id)
MAX_MODELS = 32
MAX_VERDICTS = 5  # per peer
MAX_SCORES = 16  # per round


def finite(v: Any) -> Any:
    """``v`` with every non-finite float (NaN, inf) replaced by None, recursively."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [finite(x) for x in v]
    return v


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def verdict_rows(state: Any) -> dict[str, list[dict[str, Any]]]:
    """Well-formed verification verdict records by the peer they judge, newest first, at most
    ``MAX_VERDICTS`` each (malformed ones are not shown)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for rec in reversed(state.records(kind=VERDICT_KIND)):
        v = parse_verdict(rec.body)
        if v is None:
            continue
        rows = out.setdefault(v.subject, [])
        if len(rows) < MAX_VERDICTS:
            rows.append({"by": rec.author, "verdict": v.verdict, "at": rec.created, "detail": v.reason[:120]})
    return out


def round_summary(body: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    """A plain round summary ``{"round_id", "winner", "scores": {peer: score}}`` checked field by field."""
    scores = body.get("scores")
    items = scores.items() if isinstance(scores, dict) else []
    clean = [{"peer_id": k[:128], "score": _num(v)} for k, v in items if isinstance(k, str)][:MAX_SCORES]
    rid, winner = body.get("round_id"), body.get("winner")
    row.update(round_id=rid[:16] if isinstance(rid, str) else row["round_id"],
               winner=winner[:128] if isinstance(winner, str) else None, scores=clean)
    return row


class SnapshotCache:
    """One snapshot for all requests within ``max_age_s``; computed by one request at a time."""

    def __init__(self, compute: Callable[[], dict[str, Any]], max_age_s: float = 1.0) -> None:
        self.compute = compute
        self.max_age_s = max_age_s
        self._snap: dict[str, Any] | None = None
        self._at = -1e18
        self._lock = trio.Lock()
        self.computed = 0
        self._rendered: dict[str, Any] = {}

    async def get(self) -> dict[str, Any]:
        if self._snap is not None and time.monotonic() - self._at < self.max_age_s:
            return self._snap
        async with self._lock:  # the others wait for this one and take its result
            if self._snap is None or time.monotonic() - self._at >= self.max_age_s:
                self._snap = finite(self.compute())
                self._at = time.monotonic()
                self._rendered = {}
                self.computed += 1
        return self._snap

    async def rendered(self, kind: str, render: Callable[[dict[str, Any]], Any]) -> Any:
        """``render(snapshot)`` of the current snapshot, computed once per snapshot and kind."""
        snap = await self.get()
        if kind not in self._rendered:
            self._rendered[kind] = render(snap)
        return self._rendered[kind]
