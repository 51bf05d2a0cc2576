"""Tokenizer, chat template, streaming detokenization, seeded sampling and the generate loop."""

from __future__ import annotations

import pytest
import torch

from swarmlm.models.generate import generate, generate_stream, load_chain
from swarmlm.models.registry import resolve
from swarmlm.models.sampling import Sampler, SamplingError, SamplingParams, filter_logits
from swarmlm.models.tokenizer import IncrementalDecoder, Tokenizer



@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_dir(resolve("builtin:tiny"))


@pytest.fixture(scope="module")
def whole():
    return load_chain("builtin:tiny")


def test_tiny_tokenizer_roundtrip_and_chat(tok):
    text = "Hello, wörld! 你好 🙂"
    ids = tok.encode(text)
    assert tok.decode(ids) == text and max(ids) < 256
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    ids = tok.encode_chat([{"role": "user", "content": "hi"}])
    assert ids[0] == tok.token_to_id("<|im_start|>")
    assert tok.eos_token_ids == [tok.token_to_id("<|im_end|>")]
    assert tok.decode(ids) == "user\nhi\nassistant\n"  # specials skipped


def test_incremental_decoder_holds_partial_characters(tok):
    text = "añ🙂b"
    ids = tok.encode(text)
    assert len(ids) > len(text)  # multi-byte characters span several tokens
    dec = IncrementalDecoder(tok)
    pieces = [dec.push(i) for i in ids]
    assert "".join(pieces) + dec.flush() == text
    assert all("\ufffd" not in p for p in pieces)


def test_sampling_params_validation():
    with pytest.raises(SamplingError):
        SamplingParams(top_p=0.0).validate()
    with pytest.raises(SamplingError):
        SamplingParams(temperature=-1).validate()
    p = SamplingParams.from_dict({"temperature": "0.5", "top_k": 3, "seed": 9, "stop": ["x"], "junk": 1})
    assert p.temperature == 0.5 and p.top_k == 3 and SamplingParams.from_dict(p.to_dict()) == p


def test_filter_top_k_top_p():
    logits = torch.tensor([3.0, 1.0, 2.0, 0.0])
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [False, True, False, True]
    probs = torch.softmax(logits.double(), -1)  # ~[.64, .09, .24, .03]
    kept = ~torch.isinf(filter_logits(logits, top_p=0.7))
    assert kept.tolist() == [True, False, True, False] and probs[0] < 0.7
    assert (~torch.isinf(filter_logits(logits, top_p=0.5))).tolist() == [True, False, False, False]


def test_seeded_sampler_is_deterministic():
    logits = torch.randn(50, generator=torch.Generator().manual_seed(0))
    p = SamplingParams(temperature=0.9, top_k=20, top_p=0.95, seed=42)
    a = [Sampler(p).sample(logits) for _ in range(3)]
    s1, s2 = Sampler(p), Sampler(p)
    seq1 = [s1.sample(logits) for _ in range(30)]
    assert seq1 == [s2.sample(logits) for _ in range(30)] and len(set(a)) == 1
    assert len(set(seq1)) > 1  # it does sample
    allowed = set(torch.topk(logits, 20).indices.tolist())
    assert set(seq1) <= allowed
    assert Sampler(SamplingParams(temperature=0)).sample(logits) == int(logits.argmax())


def test_generate_greedy_sharded_equals_whole(tok, whole):
    ids = tok.encode_chat([{"role": "user", "content": "tell me a story"}])
    params = SamplingParams(max_new_tokens=12)
    ref = generate(whole, ids, params, tok)
    assert ref.finish_reason in ("length", "stop") and ref.prompt_tokens == len(ids)
    chain = load_chain("builtin:tiny", 3)
    assert [(s.start, s.end) for s in chain] == [(0, 2), (2, 4), (4, 6)]
    out = generate(chain, ids, params, tok)
    assert out.token_ids == ref.token_ids and out.text == ref.text


def test_generate_seeded_sampling_reproducible(tok, whole):
    ids = tok.encode("abc")
    p = SamplingParams(temperature=1.0, top_p=0.9, seed=7, max_new_tokens=10)
    a, b = generate(whole, ids, p, tok, eos_ids=[]), generate(whole, ids, p, tok, eos_ids=[])
    assert a.token_ids == b.token_ids and len(a.token_ids) == 10 and a.finish_reason == "length"


def test_stop_string_and_eos(tok, whole):
    ids = tok.encode("abc")
    free = generate(whole, ids, SamplingParams(max_new_tokens=16), tok, eos_ids=[])
    assert len(free.token_ids) == 16
    cut = next(i for i in range(1, len(free.text) - 2) if free.text.find(free.text[i:i + 2]) == i)
    stop = free.text[cut:cut + 2]
    res = generate(whole, ids, SamplingParams(max_new_tokens=16, stop=[stop]), tok, eos_ids=[])
    assert res.text == free.text[:cut] and res.finish_reason == "stop"
    events = list(generate_stream(whole, ids, SamplingParams(max_new_tokens=16, stop=[stop]), tok, eos_ids=[]))
    assert "".join(e.text for e in events) == free.text[:cut]
    k = next(i for i in range(1, 16) if free.token_ids[i] not in free.token_ids[:i])
    eos = generate(whole, ids, SamplingParams(max_new_tokens=16), tok, eos_ids=[free.token_ids[k]])
    assert eos.token_ids == free.token_ids[:k] and eos.finish_reason == "stop"
    streamed = list(generate_stream(whole, ids, SamplingParams(max_new_tokens=16), tok, eos_ids=[]))
    assert "".join(e.text for e in streamed) == free.text
    assert [e.token_id for e in streamed if e.token_id >= 0] == free.token_ids
