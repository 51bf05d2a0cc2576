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


def test_sybils_cannot_farm_reputation_among_themselves(setup):
    """Rounds a Sybil coordinator runs with only Sybil judges earn them nothing once the swarm has
    established nodes (or from the start, when the swarm names its founders as anchors)."""
    records, _, t = setup
    farmers = SYBILS[:8]
    cals = [calibrate(n, T0 - 10.0) for n in HONEST + SYBILS]  # worst case: calibrated from the start
    late_farm = history(farmers, 12, t + 1.0, coordinator=farmers[0], step=1.0)  # after bootstrap
    early_farm = history(farmers, 12, T0 + 50.0, coordinator=farmers[0])  # interleaved from the start
    end = t + 100.0
    late = compute_reputation(records + late_farm, end, calibrations=cals)
    assert all(late.nodes[s.peer_id].judged == 0 and late.score(s.peer_id) == 0.0 for s in farmers)
    anchored = compute_reputation(records + early_farm, end, calibrations=cals,
                                  anchors=[n.peer_id for n in HONEST])
    assert all(anchored.score(s.peer_id) == 0.0 for s in farmers)
    weights = anchored.round_weights([n.peer_id for n in HONEST + SYBILS], end)
    assert attack_round(weights, end).winner_answer == "Paris"
    # without anchors a farm running while nobody is established yet does gain ground: this
    # bootstrap window is why a public swarm should name its founders as anchors
    unanchored = compute_reputation(records + early_farm, end, calibrations=cals)
    assert max(unanchored.score(s.peer_id) for s in farmers) > 0.1
