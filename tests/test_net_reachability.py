"""The I/O-free reachability verdict machine: thresholds, expiry, grouping, ERROR answers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from swarmlm.net.reachability import (Answer, Outcome, Reachability, ReachabilityConfig, Verdict,
                                      network_group)

ADDR = "/ip4/100.64.0.11/tcp/4001"
R, U, E = Outcome.REACHED, Outcome.UNREACHABLE, Outcome.ERROR


def feed(machine: Reachability, outcomes: list[Outcome], at: float = 0.0) -> Verdict:
    verdict = machine.verdict(at)
    for i, outcome in enumerate(outcomes):
        verdict = machine.record(Answer(f"peer{i}", ADDR, outcome, at))
    return verdict


def test_public_needs_several_sources() -> None:
    m = Reachability()
    assert feed(m, [R, R]) is Verdict.UNKNOWN
    assert m.record(Answer("peer9", ADDR, R, 1.0)) is Verdict.PUBLIC
    assert m.confirmed_addresses(1.0) == [ADDR]
    assert m.summary(1.0)["verdict"] == "public"


def test_private_and_split() -> None:
    assert feed(Reachability(), [U, U, U]) is Verdict.PRIVATE
    assert feed(Reachability(), [U, U, U, R]) is Verdict.PRIVATE  # 3 >= 2 x 1
    assert feed(Reachability(), [U, U, U, R, R]) is Verdict.UNKNOWN  # a split: flaky forward, ask again
    assert feed(Reachability(), [R, R, R, R, U, U]) is Verdict.PUBLIC


def test_errors_never_count() -> None:
    m = Reachability()
    assert feed(m, [E] * 10) is Verdict.UNKNOWN
    assert m.counts(0.0) == (0, 0)


def test_one_peer_counts_once_latest_wins() -> None:
    m = Reachability()
    for t in range(5):
        m.record(Answer("liar", ADDR, R, float(t)))
    assert m.verdict(5.0) is Verdict.UNKNOWN and m.counts(5.0) == (1, 0)
    m.record(Answer("liar", ADDR, U, 2.5))  # older than what we have: ignored
    assert m.counts(5.0) == (1, 0)
    m.record(Answer("liar", ADDR, U, 6.0))
    assert m.counts(6.0) == (0, 1)


def test_groups_count_once() -> None:
    m = Reachability()
    g = network_group("203.0.113.7")
    for i in range(5):  # five sybils in one /16
        m.record(Answer(f"sybil{i}", ADDR, R, 0.0, group=g))
    assert m.counts(0.0) == (1, 0) and m.verdict(0.0) is Verdict.UNKNOWN
    assert network_group("203.0.200.1") == g != network_group("198.51.100.1")
    assert network_group("2001:db8::1").startswith("v6:2001:db8::/32")


def test_answers_expire_and_probe_schedule() -> None:
    cfg = ReachabilityConfig(ttl_s=100, retry_s=10, refresh_s=500)
    m = Reachability(cfg)
    assert m.next_probe_in(0.0) == 10
    feed(m, [R, R, R], at=0.0)
    assert m.verdict(50.0) is Verdict.PUBLIC and m.next_probe_in(50.0) == 500
    assert m.verdict(101.0) is Verdict.UNKNOWN and m.next_probe_in(101.0) == 10
    assert m.summary(101.0)["since"] == 101.0


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        ReachabilityConfig(min_answers=0)
    with pytest.raises(ValueError):
        ReachabilityConfig(ratio=0.5)


@given(st.lists(st.sampled_from([R, U, E]), max_size=20), st.randoms(use_true_random=False))
def test_order_of_distinct_peers_does_not_matter(outcomes: list[Outcome], rnd) -> None:
    answers = [Answer(f"p{i}", ADDR, o, 0.0) for i, o in enumerate(outcomes)]
    shuffled = answers[:]
    rnd.shuffle(shuffled)
    a, b = Reachability(), Reachability()
    for x in answers:
        a.record(x)
    for x in shuffled:
        b.record(x)
    assert a.verdict(0.0) is b.verdict(0.0)
    ok, fail = outcomes.count(R), outcomes.count(U)
    if a.verdict(0.0) is Verdict.PUBLIC:
        assert ok >= 3 and ok >= 2 * fail
    if a.verdict(0.0) is Verdict.PRIVATE:
        assert fail >= 3 and fail >= 2 * ok
