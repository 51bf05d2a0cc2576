"""Decode steps of many sessions attend as one padded, masked call (``models/batched_decode.py``) and
equal the per-session computation: sessions of different lengths, positions (a replayed position
overwrites), views (hidden-state input), beside prefill chunks and unbatchable steps (builtin:tiny)."""

from __future__ import annotations

import pytest
import torch

from swarmlm.models.batched_decode import PAD_SLACK, plan_groups
from swarmlm.models.registry import resolve
from swarmlm.models.shard import load_shard

from helpers import assert_close as close, random_ids as ids

TOL = 1e-5


@pytest.fixture(scope="module")
def shard():
    return load_shard(resolve("builtin:tiny"))


def test_plan_groups_bounds_padding():
    # (entry, context length after the step)
    assert plan_groups([(0, 5)]) == []  # a lone decode stays on the per-session path
    assert plan_groups([(0, 9), (1, 3), (2, 40)]) == [[1, 0, 2]]  # shortest first
    # a very long context does not pad many short ones up to it
    far = PAD_SLACK * 4
    assert plan_groups([(0, 10), (1, 12), (2, far), (3, far + 1)]) == [[0, 1], [2, 3]]


def test_sessions_at_the_end_of_caches_of_different_sizes_still_decode_as_one_group(shard):
    # a client opens prompt + new tokens: at the last step every cache is full, and the prompts (so
    # the caches) differ in length; the group pads the shorter caches' copies with zeros
    prompts = [5, 9, 12]
    solo = [shard.new_session(n + 1) for n in prompts]
    many = [shard.new_session(n + 1) for n in prompts]
    for n, a, b in zip(prompts, solo, many):
        shard.forward(ids(n, n), a, 0)
        shard.forward(ids(n, n), b, 0)
    assert plan_groups([(i, n + 1) for i, n in enumerate(prompts)]) == [[0, 1, 2]]
    xs = [ids(1, 50 + i) for i in range(len(prompts))]
    ref = [shard.forward(x, s, n, last_only=True) for x, s, n in zip(xs, solo, prompts)]
    got = shard.forward_batch([(s, x, n) for x, s, n in zip(xs, many, prompts)], last_only=True)
    for r, g in zip(ref, got):
        close(r, g)
    for a, b in zip(solo, many):
        assert a.length == b.length == a.max_length
        assert (a.k - b.k).abs().max().item() < TOL and (a.v - b.v).abs().max().item() < TOL


def test_grouped_decodes_equal_per_session_decodes_over_two_steps(shard):
    lengths = [3, 9, 17, 1, 30, 9, 5, 12, 2]
    solo = [shard.new_session(64) for _ in lengths]
    many = [shard.new_session(64) for _ in lengths]
    for n, a, b in zip(lengths, solo, many):
        shard.forward(ids(n, n), a, 0)
        shard.forward(ids(n, n), b, 0)
    # the last session replays its last position (failover): it overwrites position 1, not appends
    pos = lengths[:-1] + [1]
    assert plan_groups([(i, p + 1) for i, p in enumerate(pos)]) == [[3, 8, 0, 6, 1, 5, 7, 2, 4]]
    for step in range(2):
        xs = [ids(1, 100 * step + i) for i in range(len(pos))]
        ref = [shard.forward(x, s, p, last_only=True) for x, s, p in zip(xs, solo, pos)]
        got = shard.forward_batch([(s, x, p) for x, s, p in zip(xs, many, pos)], last_only=True)
        for r, g in zip(ref, got):
            close(r, g)
        assert [s.length for s in many] == [s.length for s in solo] == [p + 1 for p in pos]
        pos = [p + 1 for p in pos]  # the next step reads the keys/values this one wrote back
    for a, b in zip(solo, many):
        assert (a.k[:, :, :, :a.length] - b.k[:, :, :, :b.length]).abs().max().item() < TOL
        assert (a.v[:, :, :, :a.length] - b.v[:, :, :, :b.length]).abs().max().item() < TOL


def test_grouped_decodes_beside_a_prompt_chunk_and_a_two_row_session(shard):
    solo = [shard.new_session(32) for _ in range(3)] + [shard.new_session(32, batch_size=2)]
    many = [shard.new_session(32) for _ in range(3)] + [shard.new_session(32, batch_size=2)]
    hist = [ids(4, 1), ids(11, 2), None, torch.cat([ids(5, 3), ids(5, 4)])]
    for h, a, b in zip(hist, solo, many):
        if h is not None:
            shard.forward(h, a, 0)
            shard.forward(h, b, 0)
    # decode, decode, a 6-token prompt chunk from 0, and a decode of a 2-row session (not grouped)
    steps = [(ids(1, 5), 4), (ids(1, 6), 11), (ids(6, 7), 0), (torch.cat([ids(1, 8), ids(1, 9)]), 5)]
    ref = [shard.forward(x, s, p, last_only=True) for (x, p), s in zip(steps, solo)]
    got = shard.forward_batch([(s, x, p) for (x, p), s in zip(steps, many)], last_only=True)
    for r, g in zip(ref, got):
        close(r, g)
    assert [s.length for s in many] == [5, 12, 6, 6]


def test_a_middle_view_groups_relayed_decodes(shard):
    first, mid = shard.view(0, 2), shard.view(2, 4)
    lengths = [2, 7, 4]
    solo = [mid.new_session(16) for _ in lengths]
    many = [mid.new_session(16) for _ in lengths]
    for n, a, b in zip(lengths, solo, many):
        h = first.forward(ids(n, n), first.new_session(16), 0)
        mid.forward(h, a, 0)
        mid.forward(h, b, 0)
    xs = [torch.randn(1, 1, shard.config.hidden_size, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    ref = [mid.forward(x, s, n) for x, s, n in zip(xs, solo, lengths)]
    got = mid.forward_batch([(s, x, n) for x, s, n in zip(xs, many, lengths)])
    for r, g in zip(ref, got):
        assert r.shape == g.shape and (r - g).abs().max().item() < TOL
