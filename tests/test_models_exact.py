"""Exactness of our Llama-family shards against transformers on tiny random checkpoints."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from swarmlm.models.partition import split_layers  # noqa: E402
from swarmlm.models.shard import load_shard  # noqa: E402



VOCAB = 300
CONFIGS = {
    # plain multi-head Llama, untied
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(num_key_value_heads=4, tie_word_embeddings=False)),
    # grouped-query attention, tied embeddings, llama3 rope scaling
    "gqa": ("LlamaConfig", "LlamaForCausalLM", dict(
        num_key_value_heads=2, tie_word_embeddings=True,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 16})),
    # Qwen2: q/k/v bias, GQA, big rope_theta
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(num_key_value_heads=2, rope_theta=1e6,
                                                     tie_word_embeddings=False)),
    # yarn rope scaling (attention factor on cos/sin), GQA
    "yarn": ("LlamaConfig", "LlamaForCausalLM", dict(
        num_key_value_heads=2, rope_scaling={"rope_type": "yarn", "factor": 4.0,
                                             "original_max_position_embeddings": 64})),
    # Mistral with linear rope scaling
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(
        num_key_value_heads=1, sliding_window=None, rope_scaling={"rope_type": "linear", "factor": 2.0})),
    # Gemma 3: q/k norms, norms after attention and MLP, GELU-tanh, scaled embedding, local layers
    # with their own RoPE base (sessions stay within the sliding window)
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(
        num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16, sliding_window=128,
        layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention",
                     "full_attention"],
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                         "full_attention": {"rope_type": "default", "rope_theta": 1e6}})),
}


def make_checkpoint(root, name: str):
    cfg_cls, model_cls, kw = CONFIGS[name]
    torch.manual_seed(hash(name) % 1000)
    cfg = getattr(transformers, cfg_cls)(vocab_size=VOCAB, hidden_size=64, intermediate_size=96,
                                         num_hidden_layers=5, num_attention_heads=4, max_position_embeddings=256,
                                         **kw)
    model = getattr(transformers, model_cls)(cfg).eval()
    with torch.no_grad():  # make norms and biases non-trivial
        for pname, p in model.named_parameters():
            if "norm" in pname or "bias" in pname:
                p.add_(torch.randn_like(p) * 0.2)
    path = root / name
    model.save_pretrained(str(path))
    return path, model


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def ckpt(request, tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("hf"), request.param)


def test_full_model_logits_match_transformers(ckpt):
    path, hf = ckpt
    ids = torch.randint(0, VOCAB, (2, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(ids).logits
    shard = load_shard(path, 0, None, "fp32")
    assert shard.has_embedding and shard.has_head and (shard.start, shard.end) == (0, 5)
    out = shard.forward(ids, shard.new_session(32, batch_size=2), 0)
    assert out.shape == ref.shape
    assert (out - ref).abs().max().item() < 1e-4


def test_incremental_decode_matches_transformers(ckpt):
    path, hf = ckpt
    ids = torch.randint(0, VOCAB, (1, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = hf(ids).logits
    shard = load_shard(path)
    sess = shard.new_session(12)
    outs = [shard.forward(ids[:, :6], sess, 0)]
    for t in range(6, 12):
        outs.append(shard.forward(ids[:, t:t + 1], sess, torch.tensor([t])))
    assert sess.length == 12
    assert (torch.cat(outs, 1) - ref).abs().max().item() < 1e-4


def test_chain_of_shards_matches_full_model(ckpt):
    path, _ = ckpt
    ids = torch.randint(0, VOCAB, (1, 14), generator=torch.Generator().manual_seed(3))
    full = load_shard(path)
    chain = [load_shard(path, a, b) for a, b in [(0, 2), (2, 4), (4, 5)]]
    assert [s.has_embedding for s in chain] == [True, False, False]
    assert [s.has_head for s in chain] == [False, False, True]
    fs = full.new_session(16)
    cs = [s.new_session(16) for s in chain]

    def run(x, pos):
        for s, se in zip(chain, cs):
            x = s.forward(x, se, pos)
        return x

    a, b = run(ids[:, :8], 0), full.forward(ids[:, :8], fs, 0)
    assert torch.equal(a, b)
    views = [full.view(0, 2), full.view(2, 4), full.view(4, 5)]  # sub-ranges sharing the weights
    assert [(v.has_embedding, v.has_head) for v in views] == [(s.has_embedding, s.has_head) for s in chain]
    x = ids[:, :8]
    for v in views:
        x = v.forward(x, v.new_session(16), 0)
    assert torch.equal(x, b)
    hidden = chain[0].forward(ids[:, 8:9], chain[0].new_session(16), None)
    assert hidden.shape == (1, 1, 64)
    for t in range(8, 14):
        a, b = run(ids[:, t:t + 1], t), full.forward(ids[:, t:t + 1], fs, t)
        assert (a - b).abs().max().item() < 1e-5


def test_batched_decode_equals_unbatched(ckpt):
    path, _ = ckpt
    shard = load_shard(path)
    g = torch.Generator().manual_seed(4)
    prompts = [torch.randint(0, VOCAB, (1, n), generator=g) for n in (3, 7, 5)]
    solo = [shard.new_session(16) for _ in prompts]
    many = [shard.new_session(16) for _ in prompts]
    for p, a, b in zip(prompts, solo, many):
        shard.forward(p, a, 0)
        shard.forward(p, b, 0)
    for step in range(4):
        toks = [torch.tensor([[int(step * 7 + i) % VOCAB]]) for i in range(3)]
        ref = [shard.forward(t, s, None) for t, s in zip(toks, solo)]
        got = shard.forward_batch([(s, t, s.length) for s, t in zip(many, toks)])
        for r, o in zip(ref, got):
            assert o.shape == r.shape == (1, 1, VOCAB)
            assert (r - o).abs().max().item() < 1e-5
            assert int(r.argmax()) == int(o.argmax())
    assert [s.length for s in many] == [s.length for s in solo]


def test_rebuild_and_overwrite_from_earlier_position(ckpt):
    path, _ = ckpt
    shard = load_shard(path)
    ids = torch.randint(0, VOCAB, (1, 10), generator=torch.Generator().manual_seed(5))
    ref = shard.forward(ids, shard.new_session(10), 0)
    sess = shard.new_session(10)
    other = torch.randint(0, VOCAB, (1, 10), generator=torch.Generator().manual_seed(6))
    shard.forward(other, sess, 0)  # a different history ...
    shard.forward(ids[:, :4], sess, 0)  # ... replaced from position 0
    assert sess.length == 4
    out = shard.forward(ids[:, 4:], sess, 4)
    assert (out - ref[:, 4:]).abs().max().item() < 1e-5
    sess.truncate(7)  # roll back 3 positions and replay them
    out = shard.forward(ids[:, 7:], sess)
    assert (out - ref[:, 7:]).abs().max().item() < 1e-5


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_half_precision_close_to_fp32(ckpt, dtype):
    path, _ = ckpt
    ids = torch.randint(0, VOCAB, (1, 9), generator=torch.Generator().manual_seed(7))
    ref = load_shard(path).forward(ids, load_shard(path).new_session(9), 0)
    half = load_shard(path, dtype=dtype)
    assert half.dtype_name == dtype and half.layers[0].wqkv.dtype == half.dtype
    out = half.forward(ids, half.new_session(9), 0)
    assert out.dtype == torch.float32
    assert (out - ref).abs().max().item() < 0.1 * ref.abs().max().item()


def test_split_layers_covers_range():
    assert split_layers(30, 3) == [(0, 10), (10, 20), (20, 30)]
    spans = split_layers(7, 3)
    assert spans[0][0] == 0 and spans[-1][1] == 7
    assert all(a < b for a, b in spans) and all(x[1] == y[0] for x, y in zip(spans, spans[1:]))
