"""The client side of a pipeline inference session, with failover.

``PipelineSession`` opens one ``session`` stream per hop of a route (each server learns its
``prev`` and ``next``), then ``step(ids, pos)`` sends the input to the first hop only: activations
flow server to server and only the hop holding the LM head answers (a token, or logits). If a
server reports that it could not reach the next one, the client relays that link itself.

Any hop error, stream loss or step timeout raises ``HopFailed(peer)``; the generation
(``node/client/pipeline.py``, policy in ``node/client/failover.py``) bans that peer for a while,
plans a new route (keeping the healthy hops), opens a new session and replays the history exactly
as it was first computed (the prompt as one prefill, then each generated token as one decode step),
so greedy output — and seeded sampling, whose seed is derived per position — is identical to an
undisturbed run. Message shapes are in ``swarmlm.node.wire``.
"""

from __future__ import annotations

import logging
import secrets
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import trio

from swarmlm.crypto.identity import verify_by_peer_id
from swarmlm.errors import SwarmError
from swarmlm.net.rpc import RpcError, StreamClosedError
from swarmlm.node.verification import HopTaps, Tap
from swarmlm.node.wire import SHARD_PROTOCOL, TAP_FLUSH, SessionOpen, StepItem, retry_after, tap_digest
from swarmlm.node.wire_loop import LoopSpec

log = logging.getLogger("swarmlm.pipeline")


class HopFailed(SwarmError):
    """A server of the route failed, timed out or refused; ``peer`` names it."""

    def __init__(self, peer: str, reason: str, busy: bool = False, transient: bool = False) -> None:
        super().__init__(f"server {peer} failed: {reason}")
        self.peer = peer
        self.reason = reason
        self.busy = busy
        self.transient = transient  # a broken link between servers, not proof the peer is down
        self.retry_after = retry_after(reason) if busy else None  # the busy server's hint (s)


@dataclass
class HopPlan:
    peer_id: str
    start: int
    end: int


@dataclass
class StepResult:
    token: int | None
    logits: torch.Tensor | None
    timings: list[list[Any]]
    tokens: list[int] | None = None  # a verify pass: the head's token at every position


class PipelineSession:
    """One inference session over a route. Use as ``async with PipelineSession(...) as s``."""

    def __init__(self, rpc: Any, model: str, hops: Sequence[HopPlan], max_length: int,
                 sampling: dict | None, *, step_timeout_s: float = 30.0, open_timeout_s: float = 20.0,
                 want_logits: bool = False, tap: bool = False, wire: str | None = None,
                 tap_batch: Sequence[int] | None = None, loop: LoopSpec | None = None) -> None:
        if not hops:
            raise SwarmError("a route needs at least one hop")
        self.rpc = rpc
        self.model = model
        self.hops = list(hops)
        self.max_length = max_length
        self.sampling = sampling
        self.want_logits = want_logits
        self.step_timeout_s = step_timeout_s
        self.open_timeout_s = open_timeout_s
        self.session_ids = [secrets.token_hex(16) for _ in self.hops]
        self.tap = tap
        self.tap_batch = list(tap_batch or [1] * len(self.hops))  # per hop: taps it sends per message
        self.wire = wire  # fp16/bf16: activations down-cast on the wire (None: the compute dtype)
        self.loop = loop  # the server token loop (node/client/server_loop.py): the head's settings
        self.taps = [HopTaps(h.peer_id, sid, h.start, h.end, i == len(self.hops) - 1)
                     for i, (h, sid) in enumerate(zip(self.hops, self.session_ids))]
        self._calls: list[Any] = []
        self._results_send, self._results_recv = trio.open_memory_channel[Any](4096 if tap else 256)
        self._step = 0
        self._sent_steps = 0
        self._nursery: trio.Nursery | None = None
        self._nursery_cm: Any = None
        self._stack: Any = None
        self._tap_arrived = trio.Event()  # set (and replaced) whenever a tap is stored or a hop breaks
        self._broken: HopFailed | None = None  # the first hop failure the readers saw (taps wait on it)
        self.answered: dict[int, Any] = {}  # with taps: step -> the token the head answered
        self._unsigned: list[set[int]] = [set() for _ in self.hops]  # per hop: taps whose signature is unchecked
        self.sent: dict[int, torch.Tensor] = {}  # with taps: step -> what we fed the first hop

    async def __aenter__(self) -> "PipelineSession":
        self._stack = AsyncExitStack()
        await self._stack.__aenter__()
        try:
            self._nursery = await self._stack.enter_async_context(trio.open_nursery())
            # open all hops concurrently: each server's relay waits for the next one's session
            self._calls = [None] * len(self.hops)
            with trio.fail_after(self.open_timeout_s):
                async with trio.open_nursery() as opener:
                    for i in range(len(self.hops)):
                        opener.start_soon(self._open_hop, i)
            for i in range(len(self.hops)):
                self._nursery.start_soon(self._read_hop, i)
        except BaseException as exc:
            failure = self._open_failure(exc)
            try:  # closing the exit stack re-raises exc (wrapped in a group by the nursery): one error out
                await self._stack.__aexit__(type(exc), exc, exc.__traceback__)
            except BaseException as again:
                failure = failure or self._open_failure(again)
                if failure is None:
                    raise
            if failure is not None:
                raise failure from None
            raise
        return self

    def _open_failure(self, exc: BaseException) -> HopFailed | None:
        """The one ``HopFailed`` an error while opening amounts to, or None (a cancellation from
        outside, or a bug: those propagate as they are)."""
        if isinstance(exc, HopFailed):
            return exc
        if isinstance(exc, trio.TooSlowError):
            late = next((h for h, c in zip(self.hops, self._calls) if c is None), self.hops[-1])
            return HopFailed(late.peer_id, f"opening the session took over {self.open_timeout_s:.0f} s")
        if isinstance(exc, BaseExceptionGroup):
            failed, rest = exc.split((HopFailed, trio.TooSlowError))
            if failed is not None and (rest is None or not rest.subgroup(trio.Cancelled)):
                return self._open_failure(_leaves(failed)[0])
        return None

    async def _open_hop(self, i: int) -> None:
        hop = self.hops[i]
        last = i == len(self.hops) - 1
        args = SessionOpen(self.session_ids[i], self.model, hop.start, hop.end, self.max_length,
                           prev=self.hops[i - 1].peer_id if i else None,
                           next=None if last else self.hops[i + 1].peer_id,
                           next_session=None if last else self.session_ids[i + 1],
                           sampling=self.sampling if last else None, logits=self.want_logits and last,
                           tap=self.tap, tap_batch=self.tap_batch[i], wire=self.wire,
                           route=[[h.peer_id, h.start, h.end] for h in self.hops], loop=self._loop_spec(i)).to_args()
        try:
            cm = self.rpc.stream(hop.peer_id, SHARD_PROTOCOL, "session", args, timeout=3600)
            self._calls[i] = await self._stack.enter_async_context(cm)
        except Exception as exc:  # RpcError, OSError, or whatever the transport raises for a dead peer
            raise HopFailed(hop.peer_id, f"cannot open session: {type(exc).__name__}: {exc}",
                            busy=getattr(exc, "code", "") == "busy") from None

    def _loop_spec(self, i: int) -> dict | None:
        """The server token loop's part for hop ``i``: the first hop learns the head, the head the first hop."""
        last = len(self.hops) - 1
        if self.loop is None or i not in (0, last):
            return None
        return LoopSpec(head=self.hops[last].peer_id if i == 0 else None,
                        head_session=self.session_ids[last] if i == 0 else None,
                        first=self.hops[0].peer_id if i == last else None,
                        first_session=self.session_ids[0] if i == last else None,
                        eos=list(self.loop.eos) if i == last else [], window=self.loop.window,
                        draft_k=self.loop.draft_k if i == last else 0,
                        context=list(self.loop.context) if i == last else []).to_args()

    async def receive(self) -> tuple[int, Any]:
        """The next message any hop sent: (hop index, message); raises the ``HopFailed`` a reader saw."""
        i, msg, err = await self._results_recv.receive()
        if err is not None:
            raise err
        return i, msg

    async def send_to(self, i: int, msg: Any) -> None:
        """Send ``msg`` on hop ``i``'s session stream (the server loop's acks and stop)."""
        try:
            await self._calls[i].send(msg)
        except Exception as exc:  # whatever a vanished peer raises
            raise HopFailed(self.hops[i].peer_id, f"{type(exc).__name__}: {exc}") from None

    async def _read_hop(self, i: int) -> None:
        call = self._calls[i]
        try:
            async for msg in call:
                if isinstance(msg, dict) and msg.get("tap"):  # stored here: a step never waits for taps
                    batch = msg.get("taps", [msg])
                    if not isinstance(batch, list) or not 0 < len(batch) <= self.tap_batch[i]:
                        raise HopFailed(self.hops[i].peer_id, "sent a malformed batch of taps")
                    for tap in batch:
                        self._store_tap(i, tap)
                    self._tapped()
                    continue
                await self._results_send.send((i, msg, None))
            await self._fail(HopFailed(self.hops[i].peer_id, "session ended early"))
        except HopFailed as exc:  # a malformed or badly signed tap
            await self._fail(exc)
        except (RpcError, StreamClosedError) as exc:
            await self._fail(HopFailed(self.hops[i].peer_id, str(exc), busy=getattr(exc, "code", "") == "busy"))
        except trio.Cancelled:
            raise
        except Exception as exc:
            await self._fail(HopFailed(self.hops[i].peer_id, f"{type(exc).__name__}: {exc}"))

    def _tapped(self) -> None:
        self._tap_arrived.set()
        self._tap_arrived = trio.Event()

    async def _fail(self, exc: HopFailed) -> None:
        """A hop broke: the step loop (through the results) and whoever waits for taps learn it."""
        self._broken = self._broken or exc
        self._tapped()
        await self._results_send.send((None, None, exc))

    async def flush_taps(self) -> None:
        """Ask every hop that batches its taps for those it holds back (the session is about to end)."""
        for i, call in enumerate(self._calls):
            if self.tap and self.tap_batch[i] > 1:
                try:
                    await call.send(TAP_FLUSH)
                except Exception as exc:  # RpcError, a closed or reset stream
                    raise HopFailed(self.hops[i].peer_id, f"{type(exc).__name__}: {exc}") from None

    async def taps_through(self, step: int) -> None:
        """Wait until every hop's signed taps of steps ``<= step`` are stored (their shape checked as
        they arrive, their signatures when a round reads them: ``check_signatures``); ``HopFailed``
        when a hop broke or sends none within the step timeout."""
        with trio.move_on_after(self.step_timeout_s):
            while not all(h.complete(step) for h in self.taps):
                if self._broken is not None:
                    raise self._broken
                await self._tap_arrived.wait()
            return
        late = next(h.peer for h in self.taps if not h.complete(step))
        raise HopFailed(late, f"sent no tap within {self.step_timeout_s:.0f} s")

    async def __aexit__(self, *exc: Any) -> None:
        if self._nursery is not None:
            # end our side of every stream (servers close their sessions), then stop the readers
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                for call in self._calls:
                    if call is not None and not call.done:
                        try:
                            await call.end()
                        except Exception:
                            pass
            self._nursery.cancel_scope.cancel()
        try:
            await self._stack.__aexit__(*exc)
        except BaseExceptionGroup as group:  # trio wraps the body's error: hand the caller the error itself
            leaf = single_leaf(group)
            if leaf is None:  # several errors at once (a hop died while the stream to it broke...):
                failed, rest = group.split(HopFailed)  # a hop failure is what the caller fails over on,
                if failed is None or (rest is not None and rest.subgroup(trio.Cancelled)):  # unless cancelled
                    raise
                leaf = _leaves(failed)[0]
            raise leaf from None

    @property
    def last_step(self) -> int:
        """The number of the last step sent (-1 before the first)."""
        return self._step - 1

    async def step(self, x: torch.Tensor, pos: int, want: bool = True, verify: bool = False) -> StepResult | None:
        """Feed ``x`` ([1, T] ids) at ``pos``; with ``want`` wait for and return the head's answer.
        ``verify``: a speculative verify pass (every hop first drops its cache from ``pos`` on; the
        answer's ``tokens`` hold the head's token at every position)."""
        step = self._step
        self._step += 1
        if self.tap:  # the first hop's signed input must be this (``Verifier``)
            self.sent[step] = x
        try:
            await self._calls[0].send(StepItem(step, pos, x, want, verify=verify,
                                               rollback=pos if verify else None).to_msg())
            self._sent_steps += 1
        except Exception as exc:  # RpcError, a closed or reset stream: whatever a vanished peer raises
            raise HopFailed(self.hops[0].peer_id, f"{type(exc).__name__}: {exc}") from None
        if not want:
            return None
        answer: StepResult | None = None
        with trio.move_on_after(self.step_timeout_s) as scope:
            while answer is None:  # taps are stored by the readers (``taps_through``)
                i, msg, err = await self._results_recv.receive()
                if err is not None:
                    raise err
                if isinstance(msg, dict) and msg.get("step") == -1 and msg.get("relay_failed"):
                    bad = msg["relay_failed"]
                    raise HopFailed(bad if isinstance(bad, str) else self.hops[min(i + 1, len(self.hops) - 1)].peer_id,
                                    f"relay from {self.hops[i].peer_id[-8:]} broke: {msg.get('error')}",
                                    busy=msg.get("busy") is True, transient=True)
                if not isinstance(msg, dict) or msg.get("step") != step:
                    if isinstance(msg, dict) and isinstance(msg.get("step"), int) and msg["step"] < step:
                        continue  # a late answer to an earlier step
                    raise HopFailed(self.hops[i].peer_id, "answered out of order")
                if "tokens" in msg:
                    toks = msg["tokens"]
                    if not verify or not isinstance(toks, list) or len(toks) != x.shape[1] or not all(
                            isinstance(t, int) for t in toks):
                        raise HopFailed(self.hops[i].peer_id, "sent a malformed verify answer")
                    answer = StepResult(None, None, msg.get("timings") or [], toks)
                    continue
                if "token" in msg or "logits" in msg:
                    answer = StepResult(msg.get("token"), msg.get("logits"), msg.get("timings") or [])
                    if self.tap:  # the head's signed tap must name this same token (``Verifier``)
                        self.answered[step] = msg.get("token")
                    continue
                if "x" in msg and i + 1 < len(self.hops):  # the server could not relay: we do it
                    if msg.get("relay_failed"):
                        log.info("relaying %s -> %s through the client", self.hops[i].peer_id[-8:],
                                 self.hops[i + 1].peer_id[-8:])
                    try:
                        await self._calls[i + 1].send(StepItem(step, msg["pos"], msg["x"], msg.get("want", True),
                                                               msg.get("timings", []), verify=verify,
                                                               rollback=pos if verify else None).to_msg())
                    except Exception as exc:  # the next server vanished too
                        raise HopFailed(self.hops[i + 1].peer_id, f"{type(exc).__name__}: {exc}") from None
                    continue
                raise HopFailed(self.hops[i].peer_id, "sent a malformed answer")
        if not scope.cancelled_caught:
            return answer
        raise HopFailed(await self.suspect(step), f"no answer within {self.step_timeout_s:.0f} s")

    def _store_tap(self, i: int, msg: dict) -> None:
        hop = self.taps[i]
        if not isinstance(msg, dict):
            raise HopFailed(hop.peer, "sent a malformed tap")
        step, pos, x_in, x_out, sig = msg.get("step"), msg.get("pos"), msg.get("in"), msg.get("out"), msg.get("sig")
        tok = msg.get("token")
        if (not isinstance(step, int) or not isinstance(pos, int) or not isinstance(x_in, torch.Tensor)
                or not isinstance(sig, bytes) or (not hop.head and not isinstance(x_out, torch.Tensor))
                or step in hop.taps or step >= self._step):
            raise HopFailed(hop.peer, "sent a malformed tap")
        if not (tok is None or isinstance(tok, int)
                or (isinstance(tok, list) and all(isinstance(t, int) for t in tok))):  # a verify pass: a token per row
            raise HopFailed(hop.peer, "sent a malformed tap")
        hop.taps[step] = Tap(step, pos, x_in, x_out, tok, sig)
        self._unsigned[i].add(step)  # its signature is checked when a round reads it (``check_signatures``)

    def check_signatures(self, upto: int) -> None:
        """Check the signature of every stored tap of steps ``<= upto`` not checked yet; raises
        ``HopFailed`` for a bad one. The verifier calls it before a round reads those taps (every tap a
        round compares or puts in evidence), so a tap no round reads costs no signature check."""
        for i, hop in enumerate(self.taps):
            for step in sorted(s for s in self._unsigned[i] if s <= upto):
                t = hop.taps[step]
                digest = tap_digest(hop.session_id, step, t.pos, t.x_in, t.x_out, t.token,
                                    self.sampling if hop.head else None)
                if not verify_by_peer_id(hop.peer, digest, t.sig):
                    raise HopFailed(hop.peer, f"sent a tap with a bad signature (step {step})")
                self._unsigned[i].discard(step)

    async def suspect(self, step: int) -> str:
        """Which hop stalled: the first that does not answer, or the first that is behind."""
        progress: list[int | None] = [None] * len(self.hops)

        async def ask(i: int) -> None:
            try:
                with trio.fail_after(3):
                    r = await self.rpc.call(self.hops[i].peer_id, SHARD_PROTOCOL, "progress",
                                            {"session_id": self.session_ids[i]}, timeout=3)
                progress[i] = int(r.get("steps", -1))
            except Exception:
                progress[i] = None

        async with trio.open_nursery() as n:
            for i in range(len(self.hops)):
                n.start_soon(ask, i)
        log.info("step %d stalled; progress per hop: %s (sent %d)", step,
                 [(h.peer_id[-8:], p) for h, p in zip(self.hops, progress)], self._sent_steps)
        for i, p in enumerate(progress):
            if p is None or p < self._processed_needed(step):
                return self.hops[i].peer_id
        return self.hops[-1].peer_id

    def _processed_needed(self, step: int) -> int:
        return max(self._sent_steps, step + 1) if self.loop is not None else self._sent_steps


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    out: list[BaseException] = []
    for e in group.exceptions:
        out.extend(_leaves(e) if isinstance(e, BaseExceptionGroup) else [e])
    return out


def single_leaf(group: BaseExceptionGroup) -> BaseException | None:
    excs = list(group.exceptions)
    while len(excs) == 1 and isinstance(excs[0], BaseExceptionGroup):
        excs = list(excs[0].exceptions)
    return excs[0] if len(excs) == 1 else None
