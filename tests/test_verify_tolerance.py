"""The verification tolerance against measured numerics (``bench/verify_drift.py``, builtin:tiny):
honest variants of a middle shard's computation (decode, chunked prefill, threads, batched with
other sessions) stay far inside the bound in every dtype, and the issue's 1% perturbation of one
middle matrix is detected in fp32."""

from __future__ import annotations

from swarmlm.bench.verify_drift import DTYPES, measure


def test_honest_drift_is_far_below_the_tolerance_and_a_one_percent_lie_is_caught_in_fp32():
    r = measure("builtin:tiny", tokens=8)
    for dt in DTYPES:
        assert set(r["drift"][dt]) == {"decode", "chunked", "threads", "batch_2", "batch_4", "batch_8"}
        assert r["margin"][dt] is None or r["margin"][dt] >= 4.0, (dt, r["drift"][dt], r["tolerance"][dt])
    eps = r["min_detected_perturbation"]["fp32"]
    assert eps is not None and eps <= 0.01, r["min_detected_perturbation"]
    assert r["detected_error"]["fp32"] > r["tolerance"]["fp32"]
