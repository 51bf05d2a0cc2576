"""The I/O side of a shard server's step scheduler: one trio task that runs batches in a worker thread.

Sessions ``submit`` a ``Work`` (``node/server/scheduler.py``) and wait for it; ``run`` asks the
``BatchQueue`` for the next batch, slices each piece's input, runs the whole batch as one
``compute(pieces) -> outputs`` call in a worker thread (behind the service's compute limiter, so
verification re-computations and consensus do not run beside it), joins a step's chunk outputs and
runs its ``post`` (sampling) there too, then wakes the sessions whose steps are done. Session stream
readers keep reading meanwhile.

A batch that raises is re-run piece by piece, so only the piece that fails gets the error (a step
rewrites its own positions, so re-running is exact). A session that leaves (cancelled, timed out,
failed) calls ``leave``: its queued step is dropped, and if its step is in the running batch, ``leave``
waits for that batch to end before the caller frees the session's cache.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import torch
import trio

from swarmlm.node.server.scheduler import BatchQueue, Piece, Work

log = logging.getLogger("swarmlm.shard")


class Batcher:
    def __init__(self, queue: BatchQueue, compute: Callable[[list[Piece]], list[Any]],
                 limiter: trio.CapacityLimiter | None = None,
                 on_batch: Callable[[list[Piece], float], None] | None = None) -> None:
        self.queue = queue
        self.compute = compute
        self.limiter = limiter
        self.on_batch = on_batch
        self._done: dict[str, trio.Event] = {}
        self._wake = trio.Event()
        self._batch_over = trio.Event()
        self.stats = {"batches": 0, "pieces": 0, "max_pieces": 0}

    async def submit(self, work: Work) -> Work:
        """Queue ``work`` and wait until all its positions are computed; raises the piece's error."""
        ev = trio.Event()
        self.queue.add(work, trio.current_time())
        self._done[work.key] = ev
        self._wake.set()
        try:
            await ev.wait()
        except BaseException:
            self.queue.remove(work.key)  # a step of the running batch stays until ``leave``
            self._done.pop(work.key, None)
            raise
        if work.error is not None:
            raise work.error
        return work

    async def leave(self, key: str) -> None:
        """The session ``key`` is gone: drop its queued step; wait out a running batch it is in."""
        self.queue.remove(key)
        self._done.pop(key, None)
        with trio.CancelScope(shield=True):
            while self.queue.in_flight(key):
                await self._batch_over.wait()
        self.queue.forget(key)
        self._wake.set()  # the scheduler may have been waiting for this session's next step

    async def run(self) -> None:
        while True:
            now = trio.current_time()
            at = self.queue.launch_at(now)
            if at is None or at > now:
                self._wake = trio.Event()
                with trio.move_on_at(at if at is not None else float("inf")):
                    await self._wake.wait()
                continue
            batch = self.queue.next_batch()
            if not batch:
                continue
            t0 = time.perf_counter()
            failed = await trio.to_thread.run_sync(self._run_batch, batch, limiter=self.limiter)
            seconds = time.perf_counter() - t0
            done = self.queue.complete(batch, seconds, trio.current_time(), failed)
            self.stats["batches"] += 1
            self.stats["pieces"] += len(batch)
            self.stats["max_pieces"] = max(self.stats["max_pieces"], len(batch))
            if self.on_batch is not None:
                self.on_batch(batch, seconds)
            for w in done:
                ev = self._done.pop(w.key, None)
                if ev is not None:
                    ev.set()
            self._batch_over.set()
            self._batch_over = trio.Event()

    # -- in the worker thread ------------------------------------------------------------------------
    def _run_batch(self, batch: list[Piece]) -> dict[str, BaseException]:
        """Compute ``batch``; returns the errors of the pieces that failed, by session id."""
        failed: dict[str, BaseException] = {}
        try:
            outs = self.compute(batch)
        except Exception as exc:
            if len(batch) == 1:
                return {batch[0].work.key: exc}
            log.warning("a batch of %d steps failed (%s); computing them one by one", len(batch), exc)
            outs = []
            for p in batch:
                try:
                    outs.append(self.compute([p])[0])
                except Exception as one:
                    failed[p.work.key] = one
                    outs.append(None)
        for p, out in zip(batch, outs):
            w = p.work
            if w.key in failed:
                continue
            w.outputs = [out] if w.last_only else w.outputs + [out]  # the head answers from the last chunk
            if not p.last:
                continue
            try:
                w.output = w.outputs[0] if len(w.outputs) == 1 else torch.cat(w.outputs, 1)
                w.outputs = []
                if w.post is not None:
                    w.result = w.post(w.output)
            except Exception as exc:
                failed[w.key] = exc
        return failed
