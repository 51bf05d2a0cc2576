"""The harder simulation: adaptive colluders, correlated judges, and figures averaged over seeds."""

from __future__ import annotations

import pytest

from swarmlm.consensus.simhard import HardConfig, colluders_attack, over_seeds, simulate_hard


def test_deterministic_and_seed_dependent():
    cfg = HardConfig(rounds=40, malicious_share=0.2, seed=3)
    assert simulate_hard(cfg) == simulate_hard(cfg)
    assert simulate_hard(cfg) != simulate_hard(HardConfig(rounds=40, malicious_share=0.2, seed=4))
    with pytest.raises(ValueError):
        simulate_hard(HardConfig(attack="sometimes"))


def test_when_adaptive_colluders_attack():
    def attack(mode, r, n_bad):
        return colluders_attack(HardConfig(attack=mode, rounds=100, sleep=0.3, k=7), r, n_bad)

    assert attack("always", 0, 1) and not attack("always", 50, 0)
    assert not attack("sleeper", 29, 4) and attack("sleeper", 30, 1)  # honest for 30% of the rounds
    assert not attack("majority", 90, 3) and attack("majority", 0, 4)  # only when at least half the round
    assert attack("adaptive", 5, 4) and not attack("adaptive", 5, 3) and attack("adaptive", 60, 1)


def test_sleepers_earn_standing_asleep_and_lose_it_awake():
    base = dict(rounds=200, malicious_share=0.3, defense="none", seed=1)
    asleep = simulate_hard(HardConfig(attack="sleeper", sleep=1.0, **base))  # never wake: skilled honest judges
    always = simulate_hard(HardConfig(attack="always", **base))
    assert asleep["rep_malicious"] > 0.2  # they earned standing by honest work
    assert asleep["majority_acc"] > always["majority_acc"] + 0.1


def test_figures_are_means_over_seeds_with_their_spread():
    r = over_seeds(HardConfig(rounds=30, malicious_share=0.2), [0, 1, 2, 3, 4])
    assert r["seeds"] == [0, 1, 2, 3, 4]
    for m in ("majority_acc", "bt_acc", "bt_rep_acc"):
        xs = r["per_seed"][m]
        assert len(xs) == 5 and r[m] == pytest.approx(sum(xs) / 5, abs=1e-4)
        assert r["spread"][m]["min"] == min(xs) and r["spread"][m]["max"] == max(xs)
        assert r["spread"][m]["std"] >= 0.0
    with pytest.raises(ValueError):
        over_seeds(HardConfig(), [])


@pytest.mark.parametrize("rejoin", ["sleep", "attack"])
def test_audit_earned_standing_holds_where_consensus_earned_standing_collapses(rejoin):
    base = dict(rounds=200, malicious_share=0.3, rejoin=rejoin)
    none = over_seeds(HardConfig(defense="none", **base), [0, 1, 2])
    ground = over_seeds(HardConfig(defense="ground", **base), [0, 1, 2])
    assert none["bt_rep_acc"] < none["majority_acc"] - 0.1  # sleepers own the consensus-earned standing
    assert ground["bt_rep_acc"] > ground["majority_acc"] + 0.05  # audits convict them
    assert ground["rejoins"] > 10  # convicted colluders came back as fresh identities
    assert ground["rep_malicious"] < ground["rep_honest"] and none["rep_malicious"] > none["rep_honest"]


def test_author_priors_change_only_the_weighted_pick():
    on, off = (simulate_hard(HardConfig(rounds=80, defense="ground", malicious_share=0.2, author_prior=p, seed=1))
               for p in (True, False))
    assert on["majority_acc"] == off["majority_acc"] and on["bt_acc"] == off["bt_acc"]  # same draws, same votes
    assert on["rejoins"] == off["rejoins"] and on["rep_honest"] == off["rep_honest"]  # standing ignores the pick
