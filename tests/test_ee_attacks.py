"""Smoke run of `swarmlm bench ee-attacks` on builtin:tiny, and the attack functions on toy data."""

from __future__ import annotations

import json

import pytest
import torch

from swarmlm.crypto.ee import EEKey
from swarmlm.crypto.ee_attacks import (
    frequency_attack, match_permuted_rows, match_rotated_rows, score_mapping, score_stream, unigram_counts,
)
from swarmlm.crypto.ee_transform import EETransform

CFG = {"model_type": "llama", "vocab_size": 512, "hidden_size": 32, "intermediate_size": 8,
       "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2}


def test_frequency_attack_recovers_a_zipf_stream() -> None:
    tr = EETransform(EEKey(bytes(32)), CFG, "rotate")
    zipf = 1.0 / torch.arange(1, 513, dtype=torch.float64)
    stream = torch.multinomial(zipf, 50_000, replacement=True, generator=torch.Generator().manual_seed(0))
    public = unigram_counts(torch.multinomial(zipf, 50_000, replacement=True,
                                              generator=torch.Generator().manual_seed(1)), 512)
    rec = score_stream(frequency_attack(tr.perm[stream], public), tr.perm, stream)
    assert 0.2 < rec.token_rate <= 1.0  # the most frequent ids are recovered


@pytest.mark.parametrize("mode", ["permute", "rotate"])
def test_weight_matching_breaks_a_public_embedding_table(mode: str) -> None:
    tr = EETransform(EEKey(bytes(32)), CFG, mode)
    E = torch.randn(512, 32, generator=torch.Generator().manual_seed(0))
    E_enc = tr.transform_tensor("model.embed_tokens.weight", lambda n: E)
    if mode == "permute":
        assert score_mapping(match_permuted_rows(E, E_enc), tr.perm) == 1.0
    else:
        got = match_rotated_rows(E, E_enc, anchors=16, window=32)
        assert score_mapping(got["procrustes"], tr.perm) > 0.99


def test_bench_smoke_json(capsys) -> None:
    pytest.importorskip("swarmlm.models.registry")
    from swarmlm.bench import ee_attacks

    assert ee_attacks.main(["--smoke", "--json", "--seed", "1", "--drift", "0.1"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = out["frequency"]["rows"]
    assert rows and all(0.0 <= r["token_recovery"] <= 1.0 for r in rows)
    assert out["weight_matching"]["permute_sorted_rows"] == 1.0  # no protection with a public base model
    assert set(out["weight_matching"]["rotate"]) == {"norm", "gram", "procrustes"}
    h = out["hidden_state"]
    assert h["tokens"] > 0 and 0.0 <= h["rotate_token_recovery"] <= 1.0
