"""Weighted Bradley-Terry: closed-form cases, ties, weights, invariances, disconnected graphs, the MLE."""

from __future__ import annotations

import random

import numpy as np
import pytest

from swarmlm.consensus import bt


def _fit(n, votes, prior=0.0):
    first, second, score, weight = zip(*votes) if votes else ((), (), (), ())
    return bt.fit_votes(n, list(first), list(second), list(score), list(weight), prior=prior)


def test_two_candidates_closed_form():
    # 3 wins against 1: p0 / p1 = 3 exactly without a prior
    r = _fit(2, [(0, 1, 1.0, 1.0)] * 3 + [(0, 1, 0.0, 1.0)])
    assert r.strengths[0] / r.strengths[1] == pytest.approx(3.0, rel=1e-9)
    assert r.winner == 0
    assert sum(r.strengths) == pytest.approx(1.0)


def test_ties_count_as_half_wins():
    # 2 wins and 2 ties for 0 == 3 wins against 1 win
    r = _fit(2, [(0, 1, 1.0, 1.0)] * 2 + [(1, 0, 0.5, 1.0)] * 2)
    assert r.strengths[0] / r.strengths[1] == pytest.approx(3.0, rel=1e-9)
    all_ties = _fit(3, [(0, 1, 0.5, 1.0), (1, 2, 0.5, 1.0), (2, 0, 0.5, 1.0)])
    assert all_ties.strengths == pytest.approx((1 / 3, 1 / 3, 1 / 3))


def test_weights_scale_votes():
    # a weight-2 judge for 0 against a weight-1 judge for 1: ratio 2
    r = _fit(2, [(0, 1, 1.0, 2.0), (1, 0, 1.0, 1.0)])
    assert r.strengths[0] / r.strengths[1] == pytest.approx(2.0, rel=1e-9)


def test_balanced_cycle_gives_equal_strengths():
    r = _fit(3, [(0, 1, 1.0, 1.0), (1, 2, 1.0, 1.0), (2, 0, 1.0, 1.0)])
    assert r.strengths == pytest.approx((1 / 3,) * 3, rel=1e-9)
    assert r.winner == 0  # ties broken by the lowest index


def test_chain_closed_form():
    # 0 beats 1 twice as often as not, 1 beats 2 twice as often: p = 4:2:1 (BT is consistent here)
    votes = [(0, 1, 1.0, 1.0)] * 2 + [(0, 1, 0.0, 1.0)] + [(1, 2, 1.0, 1.0)] * 2 + [(1, 2, 0.0, 1.0)]
    r = _fit(3, votes)
    assert np.array(r.strengths) / r.strengths[2] == pytest.approx([4.0, 2.0, 1.0], rel=1e-7)


def _random_votes(n, m, seed):
    rng = random.Random(seed)
    out = []
    for _ in range(m):
        a, b = rng.sample(range(n), 2)
        out.append((a, b, rng.choice([0.0, 0.5, 1.0]), rng.uniform(0.1, 2.0)))
    return out


@pytest.mark.parametrize("prior", [0.0, 0.01, 0.2])
def test_duplicating_all_votes_or_scaling_weights_changes_nothing(prior):
    votes = _random_votes(8, 120, seed=1)
    base = _fit(8, votes, prior)
    doubled = _fit(8, votes + votes, prior)
    scaled = _fit(8, [(a, b, s, 7.5 * w) for a, b, s, w in votes], prior)
    assert doubled.strengths == pytest.approx(base.strengths, rel=1e-8)
    assert scaled.strengths == pytest.approx(base.strengths, rel=1e-8)
    shuffled = list(votes)
    random.Random(5).shuffle(shuffled)
    assert _fit(8, shuffled, prior).strengths == pytest.approx(base.strengths, rel=1e-8)


def test_fit_is_the_maximum_likelihood():
    n = 6
    votes = _random_votes(n, 80, seed=2)
    prior = 0.05
    r = _fit(n, votes, prior)
    w = bt.win_matrix(n, *(np.array(x) for x in zip(*votes)))
    total = w.sum()
    w = w + prior * total / (n * (n - 1))
    np.fill_diagonal(w, 0.0)
    p = np.array(r.strengths)
    # gradient of sum W_ij log(p_i / (p_i + p_j)) with respect to log p_i is zero at the MLE
    grad = w.sum(1) - ((w + w.T) * (p[:, None] / (p[:, None] + p[None, :]))).sum(1)
    assert np.abs(grad).max() < 1e-6 * total


def test_disconnected_graph_has_a_unique_finite_answer():
    # two components {0,1} and {2,3} plus an unbeaten candidate 4 vs 0 only
    votes = [(0, 1, 1.0, 1.0)] * 3 + [(2, 3, 1.0, 1.0)] * 2 + [(4, 0, 1.0, 1.0)]
    r = _fit(5, votes, prior=0.01)
    p = np.array(r.strengths)
    assert np.all(np.isfinite(p)) and np.all(p > 0)
    assert p[0] > p[1] and p[2] > p[3] and p[4] > p[0]
    assert r.winner == 4
    with pytest.raises(ValueError):
        bt.win_matrix(2, np.array([1]), np.array([1]), np.array([1.0]), np.array([1.0]))


def test_no_votes_is_uniform_and_aggregate_skips_zero_weight():
    assert _fit(4, [], prior=0.01).strengths == pytest.approx((0.25,) * 4)
    ids = ["x", "y"]
    r = bt.aggregate(ids, {"j1": [("x", "y", "A")], "j2": [("y", "x", "A")] * 5},
                     {"j1": 1.0, "j2": 0.0})
    assert ids[r.winner] == "x"
    assert r.ranking() == [0, 1]
    assert bt.preference(r.strengths, 0, 1) == 1.0 and bt.preference((0.5, 0.5), 0, 1) == 0.5
