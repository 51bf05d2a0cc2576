"""Exactness of equivariant encryption: the EE model computes the plaintext function.

Against transformers' Llama/Qwen2 built from tiny random configs (both residual modes, GQA, biases,
tied and untied heads), and through ``swarmlm.models`` on ``builtin:tiny`` (whole model and 3 shards)
and ``builtin:smollm2-135m`` (slow).
"""

from __future__ import annotations

import json

import pytest
import torch

from swarmlm.crypto.ee import EEKey, residual_rotation, vocab_permutation
from swarmlm.crypto.ee_checkpoint import encrypt_checkpoint, read_ee_info
from swarmlm.crypto.ee_codec import EEClientCodec
from swarmlm.crypto.ee_transform import EETransform

KEY = EEKey(bytes(range(32)))


def _hf_model(kind: str):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    common = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                  num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=128)
    if kind == "llama":
        cfg = transformers.LlamaConfig(tie_word_embeddings=True, attention_bias=True, mlp_bias=True, **common)
        cls = transformers.LlamaForCausalLM
    else:
        cfg = transformers.Qwen2Config(tie_word_embeddings=False, **common)
        cls = transformers.Qwen2ForCausalLM
    model = cls(cfg).eval()
    with torch.no_grad():  # non-trivial norms and biases so folding is really exercised
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.1)
    return cls, cfg, model


def _greedy_hf(model, ids: torch.Tensor, n: int) -> list[int]:
    out = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(ids).logits[0, -1].argmax())
            out.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return out


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("mode", ["rotate", "permute"])
def test_transformers_logits_and_greedy_match(kind: str, mode: str) -> None:
    cls, cfg, model = _hf_model(kind)
    tr = EETransform(KEY, cfg.to_dict(), mode)
    sd = {k: v for k, v in model.state_dict().items() if not (cfg.tie_word_embeddings and k == "lm_head.weight")}
    enc_sd = tr.transform_state_dict(sd)
    tied = cfg.tie_word_embeddings and not tr.unties_embeddings
    assert ("lm_head.weight" in enc_sd) == (not tied)
    enc_model = cls(type(cfg)(**{**cfg.to_dict(), "tie_word_embeddings": tied})).eval()
    enc_model.load_state_dict(enc_sd, strict=not tied)
    ids = torch.randint(0, cfg.vocab_size, (2, 19), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = model(ids).logits
        enc = enc_model(tr.perm[ids]).logits
    codec = EEClientCodec(KEY, cfg.vocab_size)
    assert torch.allclose(codec.decrypt_logits(enc), plain, atol=2e-6, rtol=0)
    assert not torch.allclose(enc, plain, atol=1e-3)  # the node really sees something else
    prompt = ids[:1, :7]
    want = _greedy_hf(model, prompt, 12)
    got = codec.decrypt_ids(_greedy_hf(enc_model, codec.encrypt_ids(prompt), 12))
    assert got == want


def test_rotation_is_orthogonal_and_hidden_states_roundtrip() -> None:
    q = residual_rotation(KEY, 48)
    assert torch.allclose(q @ q.T, torch.eye(48, dtype=torch.float64), atol=1e-12)
    assert torch.equal(q, residual_rotation(KEY, 48))  # deterministic from the key
    tr = EETransform(KEY, {"model_type": "llama", "vocab_size": 10, "hidden_size": 48, "intermediate_size": 8,
                           "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2}, "rotate")
    h = torch.randn(3, 48, dtype=torch.float64)
    assert torch.allclose(tr.decrypt_hidden(tr.encrypt_hidden(h)), h, atol=1e-12)
    perm = vocab_permutation(KEY, 1000)
    assert sorted(perm.tolist()) == list(range(1000))
    assert not torch.equal(perm, vocab_permutation(EEKey(bytes(32)), 1000))


def _greedy_chain(shards, ids: list[int], n: int) -> tuple[list[int], torch.Tensor]:
    sessions = [s.new_session(len(ids) + n + 1) for s in shards]
    x = torch.tensor([ids])
    out, first = [], None
    for _ in range(n):
        for s, se in zip(shards, sessions):
            x = s.forward(x, se)
        if first is None:
            first = x[0].clone()
        out.append(int(x[0, -1].argmax()))
        x = torch.tensor([[out[-1]]])
    return out, first


def _swarmlm_chain_check(spec: str, tmp_path, mode: str, n_new: int, prompt: list[int]) -> float:
    registry = pytest.importorskip("swarmlm.models.registry")
    from swarmlm.models.partition import split_layers
    from swarmlm.models.shard import load_shard

    base = registry.resolve(spec)
    key_path = tmp_path / "ee.key"
    EEKey(bytes(range(32))).save(key_path)
    res = encrypt_checkpoint(spec, key_path, tmp_path / "ee", mode=mode)
    cfg = json.loads((base / "config.json").read_text())
    codec = EEClientCodec.from_key_file(key_path, cfg, mode)
    codec.check_variant(read_ee_info(res.out_dir)["variant_id"])
    n = cfg["num_hidden_layers"]
    plain = [load_shard(base)]
    want, want_logits = _greedy_chain(plain, prompt, n_new)
    worst = 0.0
    for k in (1, 3):
        enc = [load_shard(res.out_dir, a, b) for a, b in split_layers(n, k)]
        got, logits = _greedy_chain(enc, codec.encrypt_ids(prompt), n_new)
        assert codec.decrypt_ids(got) == want, f"{k} shard(s)"
        worst = max(worst, float((codec.decrypt_logits(logits) - want_logits).abs().max()))
    return worst


@pytest.mark.parametrize("mode", ["rotate", "permute"])
def test_builtin_tiny_whole_and_three_shards(tmp_path, mode: str) -> None:
    worst = _swarmlm_chain_check("builtin:tiny", tmp_path, mode, 16, [257, 104, 105, 33, 258, 10, 257])
    assert worst < 1e-4  # measured ~1e-5 (fp32, logits of magnitude ~10)


@pytest.mark.slow
def test_builtin_smollm2_whole_and_three_shards(tmp_path) -> None:
    from swarmlm.models.registry import resolve
    from swarmlm.models.tokenizer import Tokenizer

    tok = Tokenizer.from_dir(resolve("builtin:smollm2-135m"))
    prompt = tok.encode_chat([{"role": "user", "content": "What is the capital of France?"}])
    worst = _swarmlm_chain_check("builtin:smollm2-135m", tmp_path, "rotate", 12, prompt)
    assert worst < 1e-3  # measured: see docs/EE.md
