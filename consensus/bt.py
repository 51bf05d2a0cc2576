"""Weighted Bradley-Terry maximum likelihood: the aggregation step of a consensus round.

Each vote says which of two candidates a judge preferred (or a tie, counted as half a win for each
side) and carries the judge's weight (its reputation). The strengths ``p`` maximise

    sum_{i,j} W[i, j] * log(p_i / (p_i + p_j))

where ``W[i, j]`` is the weighted number of wins of ``i`` over ``j``. The fit uses Hunter's (2004)
MM iterations, vectorised over the whole matrix, finished by a few Newton steps. A small symmetric prior (``prior`` times the total
vote weight, spread as half wins over every pair) keeps the problem strictly concave, so a
disconnected comparison graph or an unbeaten candidate still has one finite answer. Because the
prior scales with the data, duplicating every vote (or multiplying every weight by a constant)
leaves the strengths unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

DEFAULT_PRIOR = 0.01
# |log(p_a / p_b)| below this counts as a tie in the consensus order (used by reputation).
TIE_EPS = 1e-6
_OUTCOME_SCORE = {"A": 1.0, "B": 0.0, "tie": 0.5}


@dataclass(frozen=True)
class BTResult:
    """Strengths (summing to 1) in candidate order, the winner's index and the iterations used."""

    strengths: tuple[float, ...]
    winner: int
    iterations: int

    def ranking(self) -> list[int]:
        """Candidate indices, strongest first (ties by index)."""
        return sorted(range(len(self.strengths)), key=lambda i: (-self.strengths[i], i))


def win_matrix(n: int, first: np.ndarray, second: np.ndarray, score: np.ndarray,
               weight: np.ndarray) -> np.ndarray:
    """``W[i, j]``: weighted wins of ``i`` over ``j`` from vote arrays.

    ``first``/``second`` are candidate indices as shown to the judge, ``score`` is 1 when the first
    won, 0 when the second won, 0.5 for a tie; ``weight`` is the judge weight of each vote.
    """
    first = np.asarray(first, dtype=np.int64)
    second = np.asarray(second, dtype=np.int64)
    score = np.asarray(score, dtype=np.float64)
    weight = np.asarray(weight, dtype=np.float64)
    if np.any(first == second):
        raise ValueError("a candidate cannot be compared with itself")
    flat = np.bincount(first * n + second, weights=weight * score, minlength=n * n)
    flat += np.bincount(second * n + first, weights=weight * (1.0 - score), minlength=n * n)
    return flat.reshape(n, n)


def _loglik(theta: np.ndarray, w: np.ndarray) -> float:
    d = theta[:, None] - theta[None, :]
    return float(-(w * np.logaddexp(0.0, -d)).sum())


def fit(wins: np.ndarray, prior: float = DEFAULT_PRIOR, tol: float = 1e-10, mm_iter: int = 3,
        newton_iter: int = 60) -> tuple[np.ndarray, int]:
    """Weighted BT maximum likelihood from a win matrix; returns (strengths summing to 1, iterations).

    A few MM iterations (Hunter 2004: monotone, always well defined) bring the strengths near the
    optimum; damped Newton steps on ``log p`` (the Hessian is a weighted graph Laplacian, made
    invertible by fixing the mean of ``log p``) then converge quadratically, which matters when one
    candidate dominates and plain MM would crawl. Stops when every component of the gradient is
    below ``tol`` times the total vote weight.
    """
    w = np.array(wins, dtype=np.float64)
    n = w.shape[0]
    if w.shape != (n, n):
        raise ValueError("the win matrix must be square")
    if n == 0:
        return np.zeros(0), 0
    if n == 1:
        return np.ones(1), 0
    np.fill_diagonal(w, 0.0)
    total = float(w.sum())
    if prior > 0 or total == 0.0:
        w += (prior * total if total > 0 else 1.0) / (n * (n - 1))
        np.fill_diagonal(w, 0.0)
        total = float(w.sum())
    games = w + w.T
    wins_per = w.sum(axis=1)
    p = np.full(n, 1.0 / n)
    it = 0
    for _ in range(mm_iter):
        it += 1
        denom = (games / (p[:, None] + p[None, :])).sum(axis=1)
        new = np.divide(wins_per, denom, out=np.zeros(n), where=denom > 0)
        new /= new.sum()
        done = np.max(np.abs(new - p)) <= tol * np.max(new)
        p = new
        if done:
            break
    if np.all(p > 0):  # with prior 0 an all-losing candidate has p = 0: MM's answer is the limit
        theta = np.log(p)
        theta -= theta.mean()
        gauge = np.full((n, n), 1.0 / n)
        for _ in range(newton_iter):
            s = 1.0 / (1.0 + np.exp(theta[None, :] - theta[:, None]))  # P(i beats j)
            grad = wins_per - (games * s).sum(axis=1)
            if np.max(np.abs(grad)) <= tol * total:
                break
            it += 1
            lap = games * s * (1.0 - s)
            hess = np.diag(lap.sum(axis=1)) - lap  # minus the Hessian of the log-likelihood
            step = np.linalg.solve(hess + gauge, grad)
            f0, slope, t = _loglik(theta, w), float(grad @ step), 1.0
            while t > 1e-10 and _loglik(theta + t * step, w) < f0 + 1e-4 * t * slope:
                t *= 0.5
            theta = theta + t * step
            theta -= theta.mean()
        p = np.exp(theta - theta.max())
        p /= p.sum()
    return p, it


def fit_votes(n: int, first: Sequence[int], second: Sequence[int], score: Sequence[float],
              weight: Sequence[float], prior: float = DEFAULT_PRIOR) -> BTResult:
    """Fit from vote arrays (see ``win_matrix``); the winner is the strongest, lowest index on a tie."""
    p, iters = fit(win_matrix(n, np.fromiter(first, np.int64, len(first)), np.fromiter(second, np.int64, len(second)),
                              np.fromiter(score, np.float64, len(score)), np.fromiter(weight, np.float64, len(weight))),
                   prior=prior)
    winner = int(np.argmax(p)) if n else -1
    return BTResult(tuple(float(x) for x in p), winner, iters)


def aggregate(candidates: Sequence[str], votes: Mapping[str, Iterable[tuple[str, str, str]]],
              weights: Mapping[str, float], prior: float = DEFAULT_PRIOR) -> BTResult:
    """Weighted BT over candidate ids from each judge's ``(a_id, b_id, "A"|"B"|"tie")`` votes.

    Judges are processed in sorted order and a judge missing from ``weights`` has weight 0, so the
    result depends only on the inputs, not on dict order.
    """
    index = {c: i for i, c in enumerate(candidates)}
    first: list[int] = []
    second: list[int] = []
    score: list[float] = []
    weight: list[float] = []
    for judge in sorted(votes):
        w = float(weights.get(judge, 0.0))
        if w <= 0.0:
            continue
        vs = list(votes[judge])
        if not vs:
            continue
        a_ids, b_ids, outcomes = zip(*vs)
        first += map(index.__getitem__, a_ids)
        second += map(index.__getitem__, b_ids)
        score += map(_OUTCOME_SCORE.__getitem__, outcomes)
        weight += [w] * len(vs)
    return fit_votes(len(candidates), first, second, score, weight, prior=prior)


def preference(strengths: Sequence[float], a: int, b: int) -> float:
    """Consensus verdict on (a, b) as a vote score: 1 if a is stronger, 0 if b, 0.5 for a tie."""
    pa, pb = strengths[a], strengths[b]
    if pa <= 0 or pb <= 0:
        return 0.5 if pa == pb else (1.0 if pa > pb else 0.0)
    d = float(np.log(pa / pb))
    if abs(d) < TIE_EPS:
        return 0.5
    return 1.0 if d > 0 else 0.0
