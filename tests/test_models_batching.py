"""``Shard.forward_batch`` with steps of different lengths in one batch (decodes, prompt chunks,
multi-token steps), and chunked prefill, equal the unbatched computation (builtin:tiny)."""

from __future__ import annotations

import pytest
import torch

from swarmlm.models.registry import resolve
from swarmlm.models.shard import load_shard

from helpers import assert_close as close, random_ids as ids


@pytest.fixture(scope="module")
def shard():
    return load_shard(resolve("builtin:tiny"))


def test_steps_of_different_lengths_batch_like_unbatched(shard):
    histories = [ids(n, n) for n in (3, 9, 1, 6)]
    solo = [shard.new_session(64) for _ in histories]
    many = [shard.new_session(64) for _ in histories]
    for h, a, b in zip(histories, solo, many):
        shard.forward(h, a, 0)
        shard.forward(h, b, 0)
    # a decode, a 5-token verify step (all logits), a 7-token prompt chunk, and a fresh prompt from 0
    steps = [(ids(1, 10), 3, True), (ids(5, 11), 9, False), (ids(7, 12), 1, True), (ids(4, 13), 0, True)]
    ref = [shard.forward(x, s, pos, last_only=lo) for (x, pos, lo), s in zip(steps, solo)]
    got = shard.forward_batch([(s, x, pos) for (x, pos, _), s in zip(steps, many)],
                              last_only=[lo for _, _, lo in steps])
    for r, g in zip(ref, got):
        close(r, g)
    assert [s.length for s in many] == [s.length for s in solo] == [4, 14, 8, 4]
    assert got[1].shape[1] == 5 and got[0].shape[1] == 1


def test_a_middle_view_batches_hidden_states_of_different_lengths(shard):
    first, mid = shard.view(0, 2), shard.view(2, 4)
    xs = [first.forward(ids(n, n), first.new_session(16), 0) for n in (2, 5, 1)]
    solo = [mid.forward(x, mid.new_session(16), 0) for x in xs]
    got = mid.forward_batch([(mid.new_session(16), x, 0) for x in xs])
    for r, g in zip(solo, got):
        close(r, g)


def test_a_prompt_in_chunks_beside_decodes_equals_one_prefill(shard):
    prompt = ids(50, 1)
    one = shard.new_session(64)
    want = shard.forward(prompt, one, 0, last_only=True)
    other = shard.new_session(64)
    shard.forward(ids(3, 2), other, 0)
    chunked = shard.new_session(64)
    for a in range(0, 50, 8):  # 8-token chunks, each in a batch with another session's decode
        out = shard.forward_batch([(other, ids(1, 100 + a), other.length), (chunked, prompt[:, a:a + 8], a)],
                                  last_only=True)[1]
    close(want, out)
    # and the cache it left behind decodes the same next token
    nxt = torch.tensor([[int(want.argmax())]])
    close(shard.forward(nxt, one, 50, last_only=True), shard.forward(nxt, chunked, 50, last_only=True))
