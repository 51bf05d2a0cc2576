"""Reputation is a pure, order-independent function of signed records: same numbers on every node."""

from __future__ import annotations

import dataclasses
import json
import random
import subprocess
import sys

import pytest

from swarmlm.consensus.records import RoundRecord, open_as
from swarmlm.consensus.reputation import ReputationParams, ReputationState, compute_reputation
from swarmlm.consensus.scenario import calibrate, history, ident

NODES = [ident("rep", i) for i in range(5)]
BAD = ident("bad", 0)
T0 = 10_000.0


@pytest.fixture(scope="module")
def records():
    return history(NODES, 12, T0, bad=BAD)


@pytest.fixture(scope="module")
def cals():
    return [calibrate(n, T0 - 100.0) for n in NODES + [BAD]]


def test_same_records_in_any_order_give_identical_numbers(records, cals):
    now = T0 + 5000.0
    a = compute_reputation(records, now, calibrations=cals)
    shuffled = records + records[:4]  # duplicates too
    random.Random(3).shuffle(shuffled)
    objs = [open_as(RoundRecord, r) for r in shuffled]
    b = compute_reputation(objs, now, calibrations=list(reversed(cals)))
    assert a.scores() == b.scores()  # bit-identical floats, not approximately equal
    assert a.rounds == b.rounds and len(a.rounds) == 12


def test_another_process_computes_the_same_numbers(records, cals):
    """A node is another interpreter: hash randomisation and dict order must not matter."""
    here = compute_reputation(records, T0 + 5000.0, calibrations=cals).scores()
    code = ("import json,sys; from swarmlm.consensus.reputation import compute_reputation\n"
            "d=json.load(sys.stdin); r=[bytes.fromhex(x) for x in d['r']]; c=[bytes.fromhex(x) for x in d['c']]\n"
            "print(json.dumps({k: v.hex() for k, v in compute_reputation(r[::-1], d['now'], calibrations=c)"
            ".scores().items()}))")
    data = json.dumps({"r": [r.hex() for r in records], "c": [c.hex() for c in cals], "now": T0 + 5000.0})
    out = subprocess.run([sys.executable, "-c", code], input=data, capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "12345", "PATH": ""})
    there = {k: float.fromhex(v) for k, v in json.loads(out.stdout).items()}
    assert there == here


def test_agreeing_judges_rise_and_an_outlier_loses_its_stake(records, cals):
    rep = compute_reputation(records, T0 + 5000.0, calibrations=cals)
    honest = [rep.score(n.peer_id) for n in NODES]
    assert min(honest) > 0.4
    assert rep.score(BAD.peer_id) < 0.01
    bad = rep.nodes[BAD.peer_id]
    assert bad.slashed == 12 and bad.judged == 12
    assert sum(rep.nodes[n.peer_id].won for n in NODES) == 12
    assert rep.weight(NODES[0].peer_id) > 20 * rep.weight(BAD.peer_id)
    assert rep.stake(NODES[0].peer_id) == pytest.approx(0.1 * rep.score(NODES[0].peer_id))


def test_fresh_and_uncalibrated_identities(records, cals):
    rep = compute_reputation(records, T0 + 5000.0, calibrations=cals)
    fresh = ident("fresh", 0).peer_id
    assert rep.weight(fresh) == 0.0  # no calibration: may not judge
    with_cal = compute_reputation(records, T0 + 5000.0, calibrations=cals + [calibrate(ident("fresh", 0), T0)])
    assert with_cal.weight(fresh) == ReputationParams().newcomer_weight
    failed = compute_reputation([], T0, calibrations=[calibrate(ident("fresh", 1), 0.0, right=False)])
    assert failed.weight(ident("fresh", 1).peer_id) == 0.0
    # without any calibration nobody has weight, so rounds change nobody's judge score
    none = compute_reputation(records, T0 + 5000.0)
    assert all(n.judged == 0 for n in none.nodes.values())


def test_scores_decay_with_round_time(records, cals):
    p = ReputationParams()
    last = T0 + 100.0 * 11
    at_end = compute_reputation(records, last, calibrations=cals)
    later = compute_reputation(records, last + p.half_life, calibrations=cals)
    node = NODES[1].peer_id
    assert later.score(node) == pytest.approx(at_end.score(node) / 2, rel=1e-12)
    # records from the future (beyond the 300 s clock skew) are not counted yet: rounds at T0 .. T0+400
    early = compute_reputation(records, T0 + 150.0, calibrations=cals)
    assert len(early.rounds) == 5


def test_invalid_records_are_ignored(records, cals):
    now = T0 + 5000.0
    base = compute_reputation(records, now, calibrations=cals).scores()
    rec = open_as(RoundRecord, records[0])
    forged = dataclasses.replace(rec, winner=min(rec.strengths, key=rec.strengths.get))
    junk = [b"garbage", forged, records[1][:-3] + b"xyz"]
    assert compute_reputation(records + junk, now, calibrations=cals + [b"junk"]).scores() == base


def test_newcomers_together_are_capped():
    state = ReputationState(ReputationParams(require_calibration=False))
    est = [f"e{i}" for i in range(5)]
    for n in est:
        rep = state._node(n)
        rep.score, rep.judged, rep.updated_at = 0.8, 50, 0.0
    newcomers = [f"s{i}" for i in range(500)]
    w = state.round_weights(est + newcomers, 0.0)
    est_total = sum(w[n] for n in est)
    assert sum(w[n] for n in newcomers) == pytest.approx(0.25 * est_total)
    assert state.is_established("e0") and not state.is_established("s0")


def test_incremental_book_equals_the_pure_function(records, cals):
    from swarmlm.consensus.reputation import ReputationBook

    now = T0 + 5000.0
    want = compute_reputation(records, now, calibrations=cals).scores()
    book = ReputationBook()
    assert all(book.add_calibration(c) for c in cals)
    for r in records[:6]:  # in order: folded incrementally
        assert book.add_record(r)
    mid = book.snapshot(T0 + 550.0)
    assert mid.scores() == compute_reputation(records[:6], T0 + 550.0, calibrations=cals).scores()
    late = list(records[6:])
    random.Random(1).shuffle(late)  # out of order: the book folds again where needed
    for r in late:
        assert book.add_record(r)
    assert not book.add_record(records[0]) and not book.add_record(b"junk")
    assert book.snapshot(now).scores() == want
    assert book.snapshot(now).scores() == want  # snapshots do not disturb the running fold
