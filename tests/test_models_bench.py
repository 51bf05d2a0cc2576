"""`swarmlm bench model` smoke run on builtin:tiny: one JSON object with the documented keys."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")

from swarmlm.bench.model import main  # noqa: E402


def test_bench_model_json_on_tiny(capsys):
    threads = torch.get_num_threads()
    try:
        rc = main(["--json", "--model", "builtin:tiny", "--steps", "3", "--rounds", "1", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    r = json.loads(out[0])
    for dt in ("fp32", "bf16"):
        assert set(r[dt]) >= {"prefill_ms", "decode_tok_s", "hf_decode_tok_s", "ratio_vs_hf", "batch8_tok_s"}
        assert r[dt]["decode_tok_s"] > 0 and r[dt]["hf_decode_tok_s"] > 0
    assert r["batch8_tok_s"] == r["fp32"]["batch8_tok_s"] and r["peak_rss_mb"] >= r["ours_peak_rss_mb"] > 0
    assert r["model"] == "builtin:tiny"
