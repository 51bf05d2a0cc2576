"""Verification verdicts: their record format, validation, and when they change what a node does.

A ``verdict`` record (kind ``"verdict"`` in the swarm state) is signed by its author, who checked
the subject's work itself: a replica that re-computed the subject's own signed taps and found them
off beyond the tolerance (``node/server/verify.py``). Body (version 1; unknown keys are ignored,
so later versions can add fields)::

    {"v": 1, "subject": peer id, "verdict": "fail" | "pass", "hop": "middle" | "head",
     "model": str, "start": int, "end": int, "max_err": float, "tol": float, "tokens": int,
     "reporter": peer id (the client that sent the evidence), "evidence": hex SHA-256 of it,
     "reason": str}

``parse_verdict`` checks that shape (a malformed record is ignored, never rendered or counted raw).

**Evidence over opinion.** A verdict is its author's observation. It changes what *another* node
does -- routing around the subject swarm-wide -- only through ``conviction_weights``: each author
(not the subject) counts once per subject, with weight ``author_weight x min(1, standing /
established)`` (``swarmlm.consensus.standing``), so authors without standing weigh nothing however
many there are, and no single author other than the reader itself reaches ``threshold``: it takes
two established witnesses (the client sends its evidence to both replicas that re-computed the
hop, so an honest detection yields two). The reader's own verdicts count in full: it checked the
evidence itself. Verdicts older than ``window_s`` or dated more than ``max_skew_s`` ahead are ignored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

VERDICT_KIND = "verdict"
VERDICTS = ("fail", "pass")
HOPS = ("middle", "head")


@dataclass(frozen=True)
class VerdictBody:
    subject: str
    verdict: str
    hop: str = "middle"
    model: str = ""
    start: int = 0
    end: int = 0
    max_err: float = 0.0
    tol: float = 0.0
    tokens: int = 0
    reason: str = ""


@dataclass(frozen=True)
class ConvictionParams:
    author_weight: float = 0.5  # what one established author adds
    threshold: float = 1.0  # weight at which a subject is avoided
    window_s: float = 3600.0
    max_skew_s: float = 60.0
    established: float = 1.0


DEFAULT_CONVICTION = ConvictionParams()


def _s(v: Any, limit: int, default: str = "") -> str:
    return v[:limit] if isinstance(v, str) else default


def _f(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else 0.0


def _i(v: Any) -> int:
    return int(v) if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**31 else 0


def parse_verdict(body: Any) -> VerdictBody | None:
    """The verdict a record body states, or None when it is not a well-formed verdict."""
    if not isinstance(body, dict):
        return None
    subject, verdict = body.get("subject"), body.get("verdict")
    if not isinstance(subject, str) or not 0 < len(subject) <= 128 or verdict not in VERDICTS:
        return None
    hop = body.get("hop", "middle")
    return VerdictBody(subject=subject, verdict=verdict, hop=hop if hop in HOPS else "middle",
                       model=_s(body.get("model"), 128), start=_i(body.get("start")), end=_i(body.get("end")),
                       max_err=_f(body.get("max_err")), tol=_f(body.get("tol")), tokens=_i(body.get("tokens")),
                       reason=_s(body.get("reason"), 200))


def conviction_weights(records: Iterable[Any], standing: Mapping[str, float], now: float, me: str | None = None,
                       params: ConvictionParams = DEFAULT_CONVICTION) -> dict[str, float]:
    """subject -> summed weight of the recent ``fail`` verdicts against it (see the module doc)."""
    p = params
    seen: set[tuple[str, str]] = set()
    out: dict[str, float] = {}
    for rec in records:
        if getattr(rec, "kind", None) != VERDICT_KIND:
            continue
        created = getattr(rec, "created", None)
        if not isinstance(created, (int, float)) or not now - p.window_s <= created <= now + p.max_skew_s:
            continue
        v = parse_verdict(rec.body)
        if v is None or v.verdict != "fail" or v.subject == rec.author or (rec.author, v.subject) in seen:
            continue
        seen.add((rec.author, v.subject))
        if rec.author == me:
            w = p.threshold
        else:
            w = p.author_weight * min(1.0, max(0.0, standing.get(rec.author, 0.0)) / p.established)
        if w > 0:
            out[v.subject] = out.get(v.subject, 0.0) + w
    return out


def convicted(records: Iterable[Any], standing: Mapping[str, float], now: float, me: str | None = None,
              params: ConvictionParams = DEFAULT_CONVICTION) -> set[str]:
    """Peers the reader routes around: their conviction weight reaches ``params.threshold``."""
    return {s for s, w in conviction_weights(records, standing, now, me, params).items() if w >= params.threshold - 1e-9}
