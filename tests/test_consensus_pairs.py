"""Seeded pair assignment: deterministic, never the judge's own candidate, both orders, about 3N pairs."""

from __future__ import annotations

from collections import Counter

import pytest

from swarmlm.consensus.pairs import assign_pairs


def _ids(n):
    return [f"cand{i:02d}" for i in range(n)]


@pytest.mark.parametrize("n", [2, 3, 4, 5, 7, 10, 16, 50])
def test_shape_of_an_assignment(n):
    ids = _ids(n)
    pairs = assign_pairs("seed", "judge-1", ids, exclude=[ids[0]])
    m = n - 1
    assert all(ids[0] not in p for p in pairs)
    assert all(a != b for a, b in pairs)
    assert len(set(pairs)) == len(pairs)
    # both orders of every pair, so position bias cancels
    assert all((b, a) in pairs for a, b in pairs)
    if m >= 4:
        assert 3 * m - 1 <= len(pairs) <= 3 * m + 1
    else:
        assert len(pairs) == m * (m - 1)  # every pair, both orders
    # every remaining candidate appears (the adjacent pairs form a cycle)
    assert set(x for p in pairs for x in p) == set(ids[1:]) if m >= 2 else pairs == []


def test_deterministic_and_judge_specific():
    ids = _ids(9)
    a = assign_pairs("s", "j1", ids)
    assert a == assign_pairs("s", "j1", list(reversed(ids)))  # input order does not matter
    assert a != assign_pairs("s", "j2", ids)
    assert a != assign_pairs("t", "j1", ids)
    # across many judges each candidate is seen about equally often
    seen = Counter(x for j in range(40) for p in assign_pairs("s", f"j{j}", ids) for x in p)
    assert max(seen.values()) - min(seen.values()) <= 0.2 * max(seen.values())


def test_small_rounds():
    assert assign_pairs("s", "j", ["a"]) == []
    assert assign_pairs("s", "j", ["a", "b"], exclude=["b"]) == []
    assert sorted(assign_pairs("s", "j", ["a", "b"])) == [("a", "b"), ("b", "a")]
    assert len(assign_pairs("s", "j", _ids(8), factor=2)) == 16
    with pytest.raises(ValueError):
        assign_pairs("s", "j", ["a", "b"], factor=0)
