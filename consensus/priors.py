"""Author priors: a candidate counts for more when its author's answers were right before.

Judges rank the candidates of a round (the Bradley-Terry strengths); what the judges cannot see is
who wrote which answer and how often that node was right when someone could check. The known-answer
audit rounds (``consensus.audits``) check exactly that: the fold (``ReputationState.apply_audit``)
counts, per node, its candidates in audits (``answered``) and the right ones (``answered_right``),
both decaying with the node's score.

A node's prior is its rate of right answers shrunk toward the swarm's rate over every audited
answer, with ``pseudo`` answers' worth of the swarm's rate::

    prior = (answered_right + pseudo * swarm_rate) / (answered + pseudo)

so a new identity starts at the swarm's average (identities are free: a fresh one must not look
better than a known, average node), and a node's own record dominates after a few audits. The round
picks the unscreened candidate with the largest ``log(strength) + log(prior)``: the judges' verdict
and the author's record as independent evidence. Pure and deterministic: every node folding the same
records computes the same priors and so the same winner.
"""

from __future__ import annotations

import math
from typing import Mapping, Protocol, Sequence


class AnswerCounts(Protocol):  # a ``reputation.NodeReputation`` (not imported: reputation imports the round check)
    answered: float
    answered_right: float


class HasNodes(Protocol):  # a ``reputation.ReputationState``
    @property
    def nodes(self) -> Mapping[str, AnswerCounts]: ...


PSEUDO_ANSWERS = 4.0
FLOOR = 1e-3  # no author's prior reaches zero: strong enough verdicts still win


def swarm_rate(state: HasNodes) -> float:
    """Right answers per audited answer over every node (1/2 before any audit)."""
    answered = sum(r.answered for r in state.nodes.values())
    right = sum(r.answered_right for r in state.nodes.values())
    return right / answered if answered > 0 else 0.5


def author_priors(state: HasNodes, authors: Sequence[str], pseudo: float = PSEUDO_ANSWERS) -> dict[str, float]:
    """Each author's prior (see the module text), in (0, 1]."""
    if pseudo <= 0:
        raise ValueError("pseudo must be positive")
    mu = swarm_rate(state)
    out = {}
    for a in sorted(set(authors)):
        rep = state.nodes.get(a)
        n, k = (rep.answered, rep.answered_right) if rep is not None else (0.0, 0.0)
        out[a] = max(FLOOR, (k + pseudo * mu) / (n + pseudo))
    return out


def prior_pick(strengths: Sequence[float], authors: Sequence[str], priors: Mapping[str, float],
               eligible: Sequence[int] | None = None) -> int:
    """The candidate index with the largest ``log(strength) + log(prior of its author)`` among
    ``eligible`` (default: all); ties go to the stronger candidate, then the lower index."""
    if len(strengths) != len(authors) or not strengths:
        raise ValueError("need one author per candidate and at least one candidate")
    pool = list(eligible) if eligible else list(range(len(strengths)))

    def score(i: int) -> tuple[float, float, int]:
        s = max(float(strengths[i]), 1e-300)
        return (math.log(s) + math.log(priors.get(authors[i], FLOOR)), s, -i)

    return max(pool, key=score)
