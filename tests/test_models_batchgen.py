"""Batched lockstep generation and batched log-probabilities equal their one-at-a-time versions."""

from __future__ import annotations

import pytest
import torch

from swarmlm.models.batchgen import generate_many, next_token_logprobs, sequence_logprobs
from swarmlm.models.generate import generate, load_chain
from swarmlm.models.registry import resolve
from swarmlm.models.sampling import SamplingParams
from swarmlm.models.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def model():
    return load_chain("builtin:tiny")[0], Tokenizer.from_dir(resolve("builtin:tiny"))


def test_generate_many_matches_generate(model):
    shard, tok = model
    ids = tok.encode("The capital of France is")
    params = [SamplingParams(max_new_tokens=6), SamplingParams(temperature=0.8, seed=3, max_new_tokens=4),
              SamplingParams(temperature=1.0, seed=7, max_new_tokens=6)]
    many = generate_many(shard, ids, params, tok)
    for p, got in zip(params, many):
        one = generate([shard], ids, p, tok)
        assert got.token_ids == one.token_ids and got.text == one.text
        assert got.finish_reason == one.finish_reason


def test_batched_logprobs_match_a_plain_forward(model):
    shard, _ = model
    seqs = [[5, 6, 7], [9, 10, 11, 12, 13], [3]]
    got = next_token_logprobs(shard, seqs, batch_tokens=8)  # forces several batches
    for s, lp in zip(seqs, got):
        sess = shard.new_session(len(s))
        ref = torch.log_softmax(shard.forward(torch.tensor([s]), sess, 0, last_only=True)[0, -1].float(), -1)
        sess.free()
        assert torch.allclose(lp, ref, atol=1e-4)
    per = sequence_logprobs(shard, [5, 6], [[7, 8], [], [9]])
    assert per[1] == [] and len(per[0]) == 2
    ref = next_token_logprobs(shard, [[5, 6], [5, 6, 7]])
    assert abs(per[0][0] - float(ref[0][7])) < 1e-4 and abs(per[0][1] - float(ref[1][8])) < 1e-4
