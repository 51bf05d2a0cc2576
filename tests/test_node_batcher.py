"""The step scheduler's trio side on a real shard (builtin:tiny, no network): a long prompt is computed
in chunks between another session's decodes with identical results, and a session cancelled while its
step is in the running batch leaves without disturbing the others."""

from __future__ import annotations

import threading

import torch
import trio

from swarmlm.models.registry import resolve
from swarmlm.models.shard import load_shard
from swarmlm.node.server.batcher import Batcher
from swarmlm.node.server.scheduler import BatchQueue, Work
from swarmlm.node.server.shard import ShardService

MODEL = "builtin:tiny"


def setup(prefill_chunk: int = 8):
    svc = ShardService(MODEL)
    shard = load_shard(resolve(MODEL))
    # gather generously: sessions in these tests come back within the same trio tick
    queue = BatchQueue(max_batch_tokens=64, prefill_chunk=prefill_chunk, gather=1e6, max_gather_s=5.0)
    return svc, shard, queue


def solo_decode(shard, prompt: list[int], steps: int) -> list[int]:
    sess = shard.new_session(64)
    toks = [int(shard.forward(torch.tensor([prompt]), sess, 0, last_only=True)[0, -1].argmax())]
    for i in range(steps - 1):
        toks.append(int(shard.forward(torch.tensor([[toks[-1]]]), sess, len(prompt) + i, last_only=True)[0, -1].argmax()))
    return toks


async def decode(batcher: Batcher, shard, key: str, prompt: list[int], steps: int, out: list[int]) -> None:
    sess = shard.new_session(64)
    x, pos = torch.tensor([prompt]), 0
    try:
        for _ in range(steps):
            w = await batcher.submit(Work(key, shard, sess, x, pos, last_only=True,
                                          post=lambda o: int(o[0, -1].argmax())))
            out.append(w.result)
            pos += x.shape[1]
            x = torch.tensor([[w.result]])
    finally:
        await batcher.leave(key)


async def test_a_long_prompt_interleaves_with_decodes_and_equals_one_prefill():
    svc, shard, queue = setup(prefill_chunk=8)
    batches: list[list[tuple[str, int]]] = []

    def compute(pieces):
        batches.append([(p.work.key, p.n) for p in pieces])
        return svc.compute(pieces)

    batcher = Batcher(queue, compute)
    prompt = torch.randint(0, 200, (1, 64), generator=torch.Generator().manual_seed(3))
    toks: list[int] = []
    long_out = {}

    async def long_prompt() -> None:
        await trio.sleep(0)  # the decoder goes first
        sess = shard.new_session(64)
        w = await batcher.submit(Work("long", shard, sess, prompt, 0, last_only=True))
        long_out["logits"] = w.output
        await batcher.leave("long")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(batcher.run)
        async with trio.open_nursery() as clients:
            clients.start_soon(decode, batcher, shard, "dec", [5, 6, 7], 20, toks)
            clients.start_soon(long_prompt)
        nursery.cancel_scope.cancel()

    chunks = [b for b in batches if any(k == "long" for k, _ in b)]
    assert [n for b in chunks for k, n in b if k == "long"] == [8] * 8  # the prompt in 8 chunks
    assert all(any(k == "dec" for k, _ in b) for b in chunks)  # each chunk shared its batch with a decode step
    assert toks == solo_decode(shard, [5, 6, 7], 20)
    ref = shard.forward(prompt, shard.new_session(64), 0, last_only=True)
    assert (ref - long_out["logits"]).abs().max().item() < 1e-5


async def test_a_session_cancelled_mid_batch_leaves_the_others_correct():
    svc, shard, queue = setup()
    gate = threading.Event()
    order: list[str] = []

    def compute(pieces):
        if len(pieces) == 3 and not gate.is_set():
            order.append("batch of 3 running")
            gate.wait(10)  # hold the batch in its worker thread until the victim was cancelled
            order.append("batch of 3 done")
        return svc.compute(pieces)

    batcher = Batcher(queue, compute)
    outs: dict[str, list[int]] = {"a": [], "b": [], "victim": []}
    prompts = {"a": [1, 2], "b": [3, 4, 5, 6], "victim": [7]}

    async def victim(task_status=trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            await decode(batcher, shard, "victim", prompts["victim"], 10, outs["victim"])
        order.append("victim left")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(batcher.run)
        async with trio.open_nursery() as clients:
            scope = await clients.start(victim)
            for k in ("a", "b"):
                clients.start_soon(decode, batcher, shard, k, prompts[k], 10, outs[k])
            while "batch of 3 running" not in order:
                await trio.sleep(0.001)
            scope.cancel()  # its step is in the running batch
            await trio.sleep(0.05)
            order.append("released")
            gate.set()
        nursery.cancel_scope.cancel()

    # the victim's leave() waited for the batch its step was in (its cache stayed valid until then)
    assert order.index("victim left") > order.index("batch of 3 done") > order.index("released")
    assert len(outs["victim"]) < 10 and queue.queued == 0
    for k in ("a", "b"):
        assert outs[k] == solo_decode(shard, prompts[k], 10)


async def test_a_session_that_leaves_is_not_waited_for():
    svc, shard, _ = setup()
    queue = BatchQueue(max_batch_tokens=64, gather=1e6, max_gather_s=600.0)  # would wait 10 min for "gone"
    batcher = Batcher(queue, svc.compute)
    toks: list[int] = []

    async def gone() -> None:  # one step, a pause (the scheduler waits for its next step), then it leaves
        await batcher.submit(Work("gone", shard, shard.new_session(64), torch.tensor([[1, 2]]), 0, last_only=True))
        await trio.sleep(0.2)
        await batcher.leave("gone")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(batcher.run)
        with trio.fail_after(300):  # a hang guard: the steps take milliseconds
            async with trio.open_nursery() as clients:
                clients.start_soon(gone)
                clients.start_soon(decode, batcher, shard, "stays", [3, 4], 3, toks)
        nursery.cancel_scope.cancel()
    assert toks == solo_decode(shard, [3, 4], 3)
