"""The step scheduler of a shard server, sans-I/O: which queued steps run together as one batch.

Every open session of a ``ShardService`` queues at most one step at a time (a ``Work``: its input,
its KV cache, the shard view it runs on); whether it is the first, a middle or the last hop of a
pipeline, or the whole model, makes no difference here. ``BatchQueue.next_batch()`` picks the
``Piece``s of work that run as one ``Shard.forward_batch``:

- only works on the same view (layer range) batch together; the view of the oldest queued work goes;
- short steps (decodes, and multi-token steps of up to ``short_step`` tokens, e.g. speculative
  verification) go first, whole, oldest first;
- then longer steps (prefills) in arrival order, in chunks of at most ``prefill_chunk`` tokens, while
  the batch has room under ``max_batch_tokens``; a prompt goes on where its last chunk ended, so a
  long prompt holds up the others' decoding for one chunk at a time;
- beside decodes, prompts fill the batch up to ``max_batch_tokens`` (its default is what the server
  computes in about 250 ms, ``speed.default_batch_tokens``: a decoding user's step is held up by at
  most that much per hop while prompts arrive, as in vLLM's chunked prefill). ``prefill_ratio > 0``
  bounds the multi-token positions beside ``d`` decodes to ``max(MIN_CHUNK, prefill_ratio x d)``;
  off by default: with 16 short prompts arriving at once, a ratio of 1 let one prompt in per round
  behind the first one's decodes, so prompts trickled in over seconds (time to first token p95
  1.6-2.9 s vs 1.2-1.3 s with the budget alone, and more of the decoding gaps inflated:
  ``docs/BENCHMARKS.md``, serve);
- the first piece of a batch is always taken, so ``max_batch_tokens=1`` runs one session per batch
  (batching off);
- **fair per peer**: within each of the two kinds, works take turns by ``owner`` (the peer that opened
  the session): every owner's oldest work before anyone's second, so a peer with many sessions gets no
  more of a full batch than a peer with one while others wait. A peer's queued steps are bounded by its
  sessions (one each), and sessions by the server's ``max_sessions`` and per-peer share (``shard.py``).

``launch_at(now)`` says when the next batch should start: at once, unless recently served sessions
have not queued their next step yet (their answers are on their way round the pipeline): then up to
``gather`` x the last batch's duration (at most ``max_gather_s``) is spent waiting for them, so that a
cohort of decoding sessions stays one batch instead of splitting up. The wait counts from the first of
them coming back (before that, from the end of the last batch): on a pipeline hop the cohort comes back
a whole round later, and counting from the end of the last batch would launch its first member alone.
"Recently served" spans batches: sessions served up to one such window after the first one back are
waited for (they are due about that much later), so a cohort served in two consecutive batches
(prompts that did not fit one, a late member) merges into one batch on the next round; sessions served
long after it (another cohort, e.g. half a round apart on a pipeline) are not waited for. A session that does not come back within
``PENDING_ROUNDS`` x the usual return delay (a decaying average of the observed ones; 1 s before any)
is no longer waited for; one that leaves is forgotten at once, and one whose step filled its cache to
within a position of its ``max_length`` is not waited for at all (a client opens ``max_length`` = prompt
+ new tokens, so that was its last step).

``complete(batch, failed, seconds)`` records what each piece computed and returns the works that are
done (all positions computed, or failed). The queue holds no tensors of its own and does no compute:
the I/O side (``node/server/batcher.py``) slices inputs per piece and joins the outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

DEFAULT_PREFILL_CHUNK = 256
SHORT_STEP = 16  # steps of at most this many tokens are never chunked and go before prefills
PREFILL_RATIO = 0.0  # > 0: multi-token positions beside n decodes in one batch at most max(MIN_CHUNK, ratio x n)
PENDING_ROUNDS = 3.0  # a served session is waited for up to this many usual return delays
PENDING_FIRST_S = 1.0  # before any session came back
PENDING_MAX_S = 5.0  # and never longer than this
MIN_CHUNK = 16  # a prefill piece squeezed into the room left in a batch is at least this long


@dataclass(eq=False)
class Work:
    """One step of one session: ``x`` ([1, T] ids or [1, T, H] hidden states) at position ``pos``."""

    key: str  # the session id: one queued work per session
    group: Hashable  # works batch only with works of the same group (the shard view they run on)
    session: Any  # its KV cache (``models.kvcache.Session``)
    x: Any
    pos: int
    last_only: bool = False  # the head: only the last position's logits
    post: Callable[[Any], Any] | None = None  # run on the final output in the worker thread (sampling)
    owner: str = ""  # the peer that opened the session: works take turns by owner
    seq: int = 0  # arrival order (set by the queue)
    arrived: float = 0.0
    done: int = 0  # positions computed so far
    outputs: list = field(default_factory=list)  # per computed piece (the I/O side fills it)
    output: Any = None  # the whole step's output once done
    result: Any = None  # what ``post`` returned
    seconds: float = 0.0  # compute time of the batches this work took part in
    batches: int = 0
    error: BaseException | None = None

    @property
    def tokens(self) -> int:
        return int(self.x.shape[1])

    @property
    def remaining(self) -> int:
        return self.tokens - self.done

    @property
    def finished(self) -> bool:
        return self.error is not None or self.done >= self.tokens


@dataclass(frozen=True)
class Piece:
    """Positions ``[offset, offset + n)`` of a work's input, computed in one batch."""

    work: Work
    offset: int
    n: int

    @property
    def last(self) -> bool:
        return self.offset + self.n >= self.work.tokens


def _turns(works: list[Work]) -> list[Work]:
    """``works`` (oldest first) reordered so owners take turns: each owner's first, then each one's
    second, ...; within a round, oldest first."""
    rank: dict[str, int] = {}
    keyed = []
    for w in works:
        r = rank.get(w.owner, 0)
        rank[w.owner] = r + 1
        keyed.append((r, w.seq, w))
    return [w for _, _, w in sorted(keyed, key=lambda t: (t[0], t[1]))]


def _may_return(w: Work) -> bool:
    """False when the step left at most one free position in its session's cache (its last step)."""
    cap = getattr(w.session, "max_length", None)
    return cap is None or w.pos + w.tokens < cap - 1


class BatchQueue:
    """The queued steps of a server's sessions and the batching policy (see the module docstring)."""

    def __init__(self, max_batch_tokens: int, prefill_chunk: int = DEFAULT_PREFILL_CHUNK, *,
                 short_step: int = SHORT_STEP, gather: float = 1.5, max_gather_s: float = 0.15,
                 prefill_ratio: float = PREFILL_RATIO) -> None:
        if max_batch_tokens < 1 or prefill_chunk < 1:
            raise ValueError("max_batch_tokens and prefill_chunk must be >= 1")
        self.max_batch_tokens = int(max_batch_tokens)
        self.prefill_chunk = int(prefill_chunk)
        self.short_step = int(short_step)
        self.gather = float(gather)
        self.max_gather_s = float(max_gather_s)
        self.prefill_ratio = float(prefill_ratio)
        self._queued: dict[str, Work] = {}
        self._in_flight: dict[str, Work] = {}
        self._pending: dict[str, float] = {}  # served sessions whose next step has not come yet: since when
        self._return_s: float | None = None  # decaying average of how long served sessions take to come back
        self._pending_since = 0.0
        self._back_since: float | None = None  # when the first of the pending sessions queued again
        self._back_served = 0.0  # when that one had been served
        self._seq = 0
        self.last_batch_s = 0.0
        self.batches = 0

    # -- state ------------------------------------------------------------------------------------
    @property
    def queued(self) -> int:
        """Steps waiting (not in the running batch)."""
        return len(self._queued)

    @property
    def queued_tokens(self) -> int:
        """Positions the queued steps could put into the next batch (a prompt: one chunk)."""
        return sum(min(w.remaining, self.prefill_chunk) if self._chunked(w) else w.tokens
                   for w in self._queued.values())

    def _chunked(self, w: Work) -> bool:
        return w.tokens > self.short_step or w.done > 0

    def in_flight(self, key: str) -> bool:
        return key in self._in_flight

    @property
    def busy(self) -> bool:
        return bool(self._in_flight)

    # -- sessions come and go -----------------------------------------------------------------------
    def add(self, work: Work, now: float) -> None:
        if work.key in self._queued or work.key in self._in_flight:
            raise ValueError(f"session {work.key[:8]} already has a step queued")
        if work.tokens < 1:
            raise ValueError("a step needs at least one position")
        self._seq += 1
        work.seq, work.arrived = self._seq, now
        self._queued[work.key] = work
        served = self._pending.pop(work.key, None)
        if served is not None:
            delay = max(0.0, now - served)
            self._return_s = delay if self._return_s is None else 0.8 * self._return_s + 0.2 * delay
            if self._back_since is None:
                self._back_since, self._back_served = now, served

    def remove(self, key: str) -> Work | None:
        """Drop a session's queued step (the session left); a step in the running batch stays."""
        self._pending.pop(key, None)
        return self._queued.pop(key, None)

    def forget(self, key: str) -> None:
        """The session is gone: do not wait for its next step."""
        self._pending.pop(key, None)

    # -- the policy -------------------------------------------------------------------------------
    def launch_at(self, now: float) -> float | None:
        """When to start the next batch (``now`` or later), or None when nothing is queued."""
        if not self._queued or self._in_flight:
            return None
        self._expire(now)
        if not self._pending or self.max_batch_tokens <= 1 or self.queued_tokens >= self.max_batch_tokens:
            return now
        window = min(self.max_gather_s, self.gather * self.last_batch_s)
        if self._back_since is None:
            return max(now, self._pending_since + window)
        # wait only for sessions served up to a window after the first one back: they are due about as
        # much later; sessions served long after it (another cohort, half a round apart) are not
        horizon = self._back_served + window
        if not any(t <= horizon for t in self._pending.values()):
            return now
        return max(now, self._back_since + window)

    def _expire(self, now: float) -> None:
        """Stop waiting for sessions that did not come back within PENDING_ROUNDS usual return delays."""
        ttl = PENDING_FIRST_S if self._return_s is None else min(PENDING_MAX_S, PENDING_ROUNDS * self._return_s + 0.01)
        for key in [k for k, t in self._pending.items() if now - t > ttl]:
            del self._pending[key]

    def next_batch(self) -> list[Piece]:
        """The pieces of the next batch (marked as running), or [] when nothing is queued."""
        if not self._queued or self._in_flight:
            return []
        works = sorted(self._queued.values(), key=lambda w: w.seq)
        group = works[0].group
        works = [w for w in works if w.group == group]
        short = _turns([w for w in works if not self._chunked(w)])
        long = _turns([w for w in works if self._chunked(w)])
        batch: list[Piece] = []
        room = self.max_batch_tokens
        decodes = min(room, sum(1 for w in short if w.tokens == 1))
        extra = room if not (decodes and self.prefill_ratio > 0) else max(MIN_CHUNK, int(self.prefill_ratio * decodes))
        for w in short:
            if batch and (w.tokens > room or (w.tokens > 1 and w.tokens > extra)):
                continue
            batch.append(Piece(w, 0, w.tokens))
            room -= w.tokens
            extra -= w.tokens if w.tokens > 1 else 0
        for w in long:
            n = min(self.prefill_chunk, w.remaining)
            if batch:
                n = min(n, room, extra)
                if n < min(MIN_CHUNK, w.remaining, self.prefill_chunk):
                    continue
            batch.append(Piece(w, w.done, n))
            room -= n
            extra -= n
        for p in batch:
            self._in_flight[p.work.key] = self._queued.pop(p.work.key)
        return batch

    def complete(self, batch: list[Piece], seconds: float, now: float,
                 failed: dict[str, BaseException] | None = None) -> list[Work]:
        """Record a batch that finished at ``now`` after ``seconds``: ``failed`` maps session ids to
        the error of their piece. Returns the works that are done (to answer); the others go back to
        the queue for their next chunk."""
        failed = failed or {}
        self.last_batch_s = seconds
        self.batches += 1
        self._pending_since, self._back_since = now, None
        self._expire(now)
        done: list[Work] = []
        for p in batch:
            w = p.work
            self._in_flight.pop(w.key, None)
            w.seconds += seconds
            w.batches += 1
            if w.key in failed:
                w.error = failed[w.key]
            else:
                w.done = p.offset + p.n
            if w.finished:
                done.append(w)
                if w.error is None and _may_return(w):  # its session will likely send its next step soon
                    self._pending[w.key] = now
            else:
                self._queued[w.key] = w
        return done
