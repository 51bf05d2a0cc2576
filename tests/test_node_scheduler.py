"""The step scheduler's batching policy (sans-I/O): decodes batch together, prompts go in chunks between
them, the token budget, views kept apart, gathering a decoding cohort, sessions leaving; and the speed
model fed by served batches."""

from __future__ import annotations

import pytest

from swarmlm.node.server.scheduler import BatchQueue, Work
from swarmlm.node.server.speed import SpeedModel, default_batch_tokens


class X:
    """Stands in for an input tensor: only its shape matters to the policy."""

    def __init__(self, t: int) -> None:
        self.shape = (1, t)


def work(key: str, tokens: int, group: str = "v", owner: str = "") -> Work:
    return Work(key, group, None, X(tokens), 0, owner=owner)


def shape(batch) -> list[tuple[str, int, int]]:
    return [(p.work.key, p.offset, p.n) for p in batch]


def test_decodes_batch_together_and_a_long_prompt_goes_in_chunks_between_them():
    q = BatchQueue(max_batch_tokens=300, prefill_chunk=256)  # the default: whole chunks beside decodes
    for k in ("a", "b", "c"):
        q.add(work(k, 1), 0.0)
    q.add(work("long", 600), 0.0)
    seen = []
    for _ in range(3):
        batch = q.next_batch()
        seen.append(shape(batch))
        done = q.complete(batch, 0.1, 1.0)
        for w in done:  # the decoding sessions come back with their next token at once
            if w.key != "long":
                q.add(work(w.key, 1), 1.0)
    assert seen[0] == [("a", 0, 1), ("b", 0, 1), ("c", 0, 1), ("long", 0, 256)]
    assert seen[1] == [("a", 0, 1), ("b", 0, 1), ("c", 0, 1), ("long", 256, 256)]
    assert seen[2] == [("a", 0, 1), ("b", 0, 1), ("c", 0, 1), ("long", 512, 88)]


def test_many_short_prompts_join_the_first_ones_decode_in_one_batch_by_default():
    # 16 users ask at once: the first prompt ran alone; the other 15 (11-17 tokens) go in beside its
    # decode in one batch (budget permitting) instead of one per round (prefill_ratio 1)
    q = BatchQueue(max_batch_tokens=300, prefill_chunk=256)
    q.add(work("first", 1), 0.0)
    for k in range(15):
        q.add(work(f"p{k}", 11 + k % 7), 0.0)
    prompts = [(f"p{k}", 0, 11 + k % 7) for k in range(15)]
    # the short steps (<= 16 tokens) first, then the 17-token prompts (chunked kind), all whole
    expected = [("first", 0, 1)] + [p for p in prompts if p[2] <= 16] + [p for p in prompts if p[2] > 16]
    assert shape(q.next_batch()) == expected
    q1 = BatchQueue(max_batch_tokens=300, prefill_chunk=256, prefill_ratio=1)
    q1.add(work("first", 1), 0.0)
    for k in range(15):
        q1.add(work(f"p{k}", 11 + k % 7), 0.0)
    assert shape(q1.next_batch()) == [("first", 0, 1), ("p0", 0, 11)]


def test_prompts_beside_decodes_add_at_most_as_many_positions_as_there_are_decodes():
    q = BatchQueue(max_batch_tokens=300, prefill_chunk=256, prefill_ratio=1)
    for k in range(20):
        q.add(work(f"d{k}", 1), 0.0)
    q.add(work("short", 12), 0.0)  # a short prompt: one piece, beside the decodes while it fits
    q.add(work("long", 100), 0.0)
    batch = q.next_batch()
    # 20 decodes allow 20 more positions: the short prompt (12); 8 left is under a chunk's minimum (16)
    assert shape(batch) == [(f"d{k}", 0, 1) for k in range(20)] + [("short", 0, 12)]
    q.complete(batch, 0.1, 1.0)
    for k in range(20):
        q.add(work(f"d{k}", 1), 1.0)
    assert shape(q.next_batch()) == [(f"d{k}", 0, 1) for k in range(20)] + [("long", 0, 20)]
    q2 = BatchQueue(max_batch_tokens=300, prefill_chunk=256, prefill_ratio=1)
    q2.add(work("a", 1), 0.0)
    q2.add(work("long", 100), 0.0)
    assert shape(q2.next_batch()) == [("a", 0, 1), ("long", 0, 16)]  # at least MIN_CHUNK beside one decode
    q3 = BatchQueue(max_batch_tokens=300, prefill_chunk=256, prefill_ratio=1)
    q3.add(work("long", 100), 0.0)
    q3.add(work("other", 90), 0.0)
    assert shape(q3.next_batch()) == [("long", 0, 100), ("other", 0, 90)]  # no decode waiting: the budget


def test_the_budget_limits_a_batch_and_the_rest_waits_its_turn():
    q = BatchQueue(max_batch_tokens=4, prefill_chunk=256)
    for k in "abcdef":
        q.add(work(k, 1), 0.0)
    assert [p.work.key for p in q.next_batch()] == list("abcd")
    assert q.queued == 2


def test_peers_take_turns_so_many_sessions_of_one_peer_do_not_crowd_out_another():
    q = BatchQueue(max_batch_tokens=4, prefill_chunk=64)
    for k in ("m1", "m2", "m3", "m4", "m5"):
        q.add(work(k, 1, owner="many"), 0.0)
        q.add(work(k + "p", 100, owner="many"), 0.0)
    q.add(work("o1", 1, owner="other"), 0.0)
    q.add(work("o1p", 100, owner="other"), 0.0)
    assert [p.work.key for p in q.next_batch()] == ["m1", "o1", "m2", "m3"]  # each peer's oldest first
    q2 = BatchQueue(max_batch_tokens=128, prefill_chunk=64)
    for k in ("m1", "m2", "m3"):
        q2.add(work(k, 100, owner="many"), 0.0)
    q2.add(work("o1", 100, owner="other"), 0.0)
    assert shape(q2.next_batch()) == [("m1", 0, 64), ("o1", 0, 64)]  # prompts take turns too


def test_budget_one_is_batching_off_but_a_prompt_still_gets_whole_chunks():
    q = BatchQueue(max_batch_tokens=1, prefill_chunk=8)
    q.add(work("p", 20), 0.0)
    q.add(work("d", 1), 0.0)
    batch = q.next_batch()
    assert shape(batch) == [("d", 0, 1)]
    q.complete(batch, 0.01, 0.0)
    assert shape(q.next_batch()) == [("p", 0, 8)]


def test_only_steps_on_the_same_view_batch_together_oldest_view_first():
    q = BatchQueue(max_batch_tokens=64)
    q.add(work("a", 1, "v1"), 0.0)
    q.add(work("b", 1, "v2"), 0.0)
    q.add(work("c", 1, "v1"), 0.0)
    batch = q.next_batch()
    assert [p.work.key for p in batch] == ["a", "c"]
    q.complete(batch, 0.01, 0.0)
    assert [p.work.key for p in q.next_batch()] == ["b"]


def test_a_multi_token_step_is_one_piece_like_a_decode():
    q = BatchQueue(max_batch_tokens=64, prefill_chunk=4)
    q.add(work("verify", 5), 0.0)  # e.g. a speculative step: the last token and 4 drafts
    q.add(work("d", 1), 0.0)
    assert shape(q.next_batch()) == [("verify", 0, 5), ("d", 0, 1)]


def test_launch_waits_briefly_for_the_cohort_of_the_last_batch():
    q = BatchQueue(max_batch_tokens=64, gather=0.5, max_gather_s=0.05)
    for k in "abc":
        q.add(work(k, 1), 0.0)
    batch = q.next_batch()
    assert q.launch_at(0.0) is None  # a batch is running
    q.complete(batch, 0.04, now=1.0)
    q.add(work("a", 1), 1.001)
    assert q.launch_at(1.001) == pytest.approx(1.021)  # b and c are on their way: wait up to half a batch
    q.add(work("b", 1), 1.002)
    q.forget("c")  # c's session ended
    assert q.launch_at(1.003) == 1.003


def test_on_a_pipeline_hop_the_wait_counts_from_the_first_of_the_cohort_coming_back():
    q = BatchQueue(max_batch_tokens=64, gather=0.5, max_gather_s=0.05)
    for k in "abc":
        q.add(work(k, 1), 0.0)
    q.complete(q.next_batch(), 0.04, now=1.0)
    assert q.launch_at(1.0) is None  # nothing queued
    q.add(work("a", 1), 1.3)  # a round through the other hops later
    assert q.launch_at(1.3) == pytest.approx(1.32)  # not at once: b and c follow within milliseconds
    q.add(work("b", 1), 1.301)
    q.add(work("c", 1), 1.302)
    assert q.launch_at(1.302) == 1.302
    assert [p.work.key for p in q.next_batch()] == list("abc")


def test_a_session_that_leaves_is_dropped_and_a_failed_piece_fails_only_its_work():
    q = BatchQueue(max_batch_tokens=64)
    for k in "abc":
        q.add(work(k, 1), 0.0)
    assert q.remove("b") is not None
    batch = q.next_batch()
    assert [p.work.key for p in batch] == ["a", "c"]
    assert q.remove("a") is None and q.in_flight("a")  # running: stays until the batch ends
    boom = ValueError("bad positions")
    done = q.complete(batch, 0.01, 0.0, failed={"a": boom})
    assert {w.key: w.error for w in done} == {"a": boom, "c": None}
    assert not q.in_flight("a") and q.queued == 0
    q.add(work("c", 1), 0.0)
    with pytest.raises(ValueError, match="already has a step queued"):  # one step per session at a time
        q.add(work("c", 1), 0.0)


def test_speed_follows_served_batches_and_a_slower_machine():
    sp = SpeedModel(layers=10, step_ms=20.0, token_ms=1.0)
    assert sp.ms_per_layer == pytest.approx(2.0)
    assert sp.capacity_tok_s(16) == pytest.approx(16 * 1000 / (19 + 16))
    for i in range(400):  # as predicted: nothing moves; 8 tokens every 0.1 s
        sp.observe(8, (19 + 8) / 1000.0, now=i * 0.1)
    assert sp.ms_per_layer == pytest.approx(2.0)
    assert sp.served_tok_s(40.0) == pytest.approx(80.0, rel=0.05)
    for i in range(100):  # three times slower, whatever the batch sizes
        n = 1 + i % 16
        sp.observe(n, 3 * (19 + n) / 1000.0, now=40 + i * 0.1)
    assert sp.ms_per_layer == pytest.approx(6.0, rel=0.05)
    assert sp.served_tok_s(1000.0) < 1e-6  # idle for a long time


def test_default_batch_budget_from_measured_speed():
    assert default_batch_tokens(1.0) == 250  # ~1 ms per token: a quarter second of work
    assert default_batch_tokens(0.001) == 2048 and default_batch_tokens(100.0) == 64


def test_a_cohort_served_in_two_batches_merges_on_the_next_round_and_the_lost_are_not_waited_for():
    q = BatchQueue(max_batch_tokens=2, gather=1.5, max_gather_s=0.25)
    for k in "abc":
        q.add(work(k, 1), 0.0)
    q.complete(q.next_batch(), 0.1, now=0.1)  # a, b
    q.add(work("d", 1), 0.1)  # a new session's first step: nobody waits for it
    q.complete(q.next_batch(), 0.1, now=0.2)  # c, d
    q.max_batch_tokens = 64
    q.add(work("a", 1), 1.0)  # a round later: a and b come back, then c and d one batch after them
    q.add(work("b", 1), 1.001)
    assert q.launch_at(1.001) == pytest.approx(1.15)  # c and d were served a batch later: wait for them
    q.add(work("c", 1), 1.1)
    assert q.launch_at(1.1) == pytest.approx(1.15)
    q.add(work("d", 1), 1.101)
    assert q.launch_at(1.101) == 1.101
    batch = q.next_batch()
    assert [p.work.key for p in batch] == list("abcd")
    q.complete(batch, 0.1, now=1.2)
    # d's client went quiet without closing: each batch waits one window for it, until d has been away
    # for over 3 usual return delays (~0.8 s here), then not at all
    for t, wait in ((2.0, 0.15), (3.0, 0.15), (4.0, 0.0)):
        for k in "abc":
            q.add(work(k, 1), t)
        assert q.launch_at(t) == pytest.approx(t + wait)
        q.complete(q.next_batch(), 0.1, now=t + 0.2)


class Cache:
    def __init__(self, max_length: int) -> None:
        self.max_length = max_length


def test_a_session_whose_step_filled_its_cache_is_not_waited_for():
    q = BatchQueue(max_batch_tokens=64, gather=1.5, max_gather_s=0.25)
    q.add(Work("a", "v", Cache(100), X(1), 50), 0.0)
    q.add(Work("last", "v", Cache(100), X(1), 98), 0.0)  # positions 0..98 of 100: its final token came out
    q.complete(q.next_batch(), 0.1, now=0.1)
    q.add(Work("a", "v", Cache(100), X(1), 51), 0.2)
    assert q.launch_at(0.2) == 0.2


def test_a_second_cohort_half_a_round_apart_is_not_waited_for():
    q = BatchQueue(max_batch_tokens=64, gather=1.5, max_gather_s=0.15)
    for k in "ab":
        q.add(work(k, 1), 0.0)
    q.complete(q.next_batch(), 0.1, now=0.1)
    for k in "cd":
        q.add(work(k, 1), 0.4)
    q.complete(q.next_batch(), 0.1, now=0.5)  # c, d: served 0.4 s after a, b
    q.add(work("a", 1), 1.0)
    assert q.launch_at(1.0) == pytest.approx(1.15)  # b (served with a) is due: wait for it
    q.add(work("b", 1), 1.01)
    assert q.launch_at(1.01) == 1.01  # c and d are due ~0.4 s later: a and b go now
    assert [p.work.key for p in q.next_batch()] == list("ab")
