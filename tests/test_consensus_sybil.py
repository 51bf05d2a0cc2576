"""Sybil resistance: 20 fresh colluding identities must not flip a round 5 established honest nodes decide."""

from __future__ import annotations

import pytest

from swarmlm.consensus.local import run_local_round
from swarmlm.consensus.reputation import compute_reputation
from swarmlm.consensus.round import Finished
from swarmlm.consensus.scenario import COORD, Contrarian, calibrate, history, honest, ident

HONEST = [ident("honest", i) for i in range(5)]
SYBILS = [ident("sybil", i) for i in range(20)]
T0 = 50_000.0


@pytest.fixture(scope="module")
def setup():
    records = history(HONEST, 25, T0)
    t = T0 + 100.0 * 25
    # worst case: every Sybil passed calibration (they are capable, just colluding)
    cals = [calibrate(n, T0 - 10.0) for n in HONEST] + [calibrate(s, t - 50.0) for s in SYBILS]
    return records, cals, t


def attack_round(weights, t):
    answers = {HONEST[0]: "Paris", HONEST[1]: "Lyon", HONEST[2]: "Marseille"}
    answers.update({s: "Berlin" for s in SYBILS[:5]})  # the Sybils also field candidates
    judges = {n: honest() for n in HONEST}
    judges.update({s: Contrarian("Berlin") for s in SYBILS})
    _, log = run_local_round(COORD, "Capital of France?", answers, judges, weights, now=t, seed="attack")
    return next(a for a in log if isinstance(a, Finished))


def test_fresh_sybils_cannot_flip_the_round(setup):
    records, cals, t = setup
    rep = compute_reputation(records, t, calibrations=cals)
    judges = [n.peer_id for n in HONEST + SYBILS]
    weights = rep.round_weights(judges, t)
    assert all(rep.is_established(n.peer_id) for n in HONEST)
    assert sum(weights[s.peer_id] for s in SYBILS) < 0.1 * sum(weights[n.peer_id] for n in HONEST)
    fin = attack_round(weights, t)
    assert fin.winner_answer == "Paris"
    # and the record of the attack, once folded in, leaves every Sybil slashed and weightless
    after = compute_reputation(records + [fin.packet.envelope.encode()], t + 1, calibrations=cals)
    assert all(after.nodes[s.peer_id].slashed == 1 and after.score(s.peer_id) == 0.0 for s in SYBILS)
    assert all(after.score(n.peer_id) >= rep.score(n.peer_id) * 0.99 for n in HONEST)


def test_without_reputation_the_same_sybils_do_flip_it(setup):
    """The control: equal weights let the 20 colluders win, so the test above is meaningful."""
    _, _, t = setup
    fin = attack_round({n.peer_id: 1.0 for n in HONEST + SYBILS}, t)
    assert fin.winner_answer == "Berlin"
