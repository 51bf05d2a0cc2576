"""The seeded simulation behind `swarmlm bench consensus`, and the bench's JSON contract."""

from __future__ import annotations

import json

import pytest

from swarmlm.bench import consensus as bench
from swarmlm.consensus.sim import SimConfig, fit_time_ms, simulate


def test_simulation_is_deterministic():
    cfg = SimConfig(rounds=30, malicious_share=0.2, seed=7)
    a, b = simulate(cfg), simulate(cfg)
    assert a.per_round == b.per_round and len(a.per_round) == 30
    assert simulate(SimConfig(rounds=30, malicious_share=0.2, seed=8)).per_round != a.per_round


def test_reputation_weighting_learns_to_ignore_colluders():
    r = simulate(SimConfig(rounds=150, malicious_share=0.2, seed=1))
    assert r.bt_rep_acc > r.bt_acc and r.bt_rep_acc > r.majority_acc
    assert r.rep_malicious < 0.1 < r.rep_honest
    warm = simulate(SimConfig(rounds=40, malicious_share=0.3, warmup_rounds=60, seed=1))
    assert len(warm.per_round) == 40  # warm-up rounds are not scored


def test_fit_timer_returns_both_figures():
    full, core = fit_time_ms(10, 10, repeats=2)
    assert len(full) == len(core) == 2 and all(t > 0 for t in full + core)


def test_bench_prints_one_json_object(capsys):
    assert bench.main(["--json", "--rounds", "12", "--warmup", "5", "--fit-repeats", "2", "--seeds", "2",
                       "--hard-rounds", "8"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    data = json.loads(out)
    assert {"majority_acc", "bt_acc", "bt_rep_acc", "malicious_curve", "fit_ms"} <= set(data)
    assert [row["share"] for row in data["malicious_curve"]] == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    assert all({"share", "majority_acc", "bt_rep_acc"} <= set(row) for row in data["malicious_curve"])
    assert data["seeds"] == [0, 1] and len(data["hard"]["cells"]) == 35
    assert all({"majority_acc", "bt_rep_acc", "spread"} <= set(c) for c in data["hard"]["cells"])
    assert {"ground", "ground/attack", "ground/judges"} <= set(data["hard"]["targets"])
    assert bench.main(["--rounds", "5", "--warmup", "2", "--fit-repeats", "1", "--seeds", "0"]) == 0
    assert "malicious share" in capsys.readouterr().out


def test_round_time_bench_refuses_bad_arguments(capsys):
    for args in (["--nodes", "1"], ["--max-tokens", "0"], ["--rounds", "0"], ["--threads", "-1"]):
        with pytest.raises(SystemExit) as exc:
            bench.main(["--round-time", *args])  # refused before any node process starts
        assert exc.value.code == 2
    assert "--round-time" in capsys.readouterr().err
