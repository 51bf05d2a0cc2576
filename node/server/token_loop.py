"""The server token loop: the hop holding the LM head feeds each sampled token straight to the first hop.

A client that opens its route with ``SessionOpen.loop`` (``wire.LoopSpec``; only with verification
and encryption off) takes itself off the critical path: a token costs one trip per hop instead of
hops + 1. The client still gets every token (the head answers it as before), acks them, and ends the
loop by ``loop_stop`` or by closing its session streams. One ``LoopRunner`` (a ``SessionRunner``)
per session plays the roles its ``LoopSpec`` names:

- **the head** (``spec.first``): after answering the client a sampled token, it hands the token to
  its loop task (in the session's nursery), which sends it to the first hop over a ``loop`` stream
  as the next step's input (into its own inbox when it is the first hop too). The loop ends on an
  EOS id, at the session's max length, on the client's ``loop_stop``, when ``window`` answers stay
  unacknowledged for ``ACK_TIMEOUT_S`` (a client that went silent), after ``LOOP_MAX_S``, or with
  the session (the client closed it: the session's cancel scope ends the task). When it ends
  without the client's word (no acks, the deadline, a broken loop stream) it tells the client
  (``loop_failed_notice``), which fails over without a ban and replays.
- **the first hop** (``spec.head``): accepts ``loop`` tokens only from the peer the client named as
  the route's head, for the head session the client named, on one stream per session, with strictly increasing positions inside the
  session's length and ids inside the vocabulary; each becomes a one-token ``StepItem`` in the
  session's inbox, computed like a client's step.

``TokenLoops`` is the service's registry: the bounds on running loops (per client peer and in
total), the first hops' runners by session id, and the ``loop`` stream handler.
"""

from __future__ import annotations

import logging
from collections import Counter
from contextlib import AsyncExitStack
from typing import Any, Awaitable, Callable

import torch
import trio

from swarmlm.net.rpc import BAD_REQUEST, BUSY, UNAVAILABLE, RpcError
from swarmlm.net.rpc_server import ServerCall
from swarmlm.models.speculative import AdaptiveK, PromptLookup, accept_exact
from swarmlm.node.server.session import ServerSession, SessionRunner
from swarmlm.node.wire import SHARD_PROTOCOL, SessionOpen, StepItem, busy_message
from swarmlm.node.wire_loop import (MAX_LOOP_CONTEXT, LoopSpec, LoopWireError, loop_answer, loop_failed_notice,
                                    loop_token, parse_loop_token)

log = logging.getLogger("swarmlm.shard")

LOOPS_PER_PEER = 16  # head loops one client peer may run here at once
ACK_TIMEOUT_S = 30.0  # a loop whose client acked nothing for this long (window full) ends
LOOP_MAX_S = 3600.0  # no loop runs longer than this


class TokenLoops:
    """The shard service's token loops (``svc``: the ``ShardService``)."""

    def __init__(self, svc: Any) -> None:
        self.svc = svc
        self.running: Counter[str] = Counter()  # client peer -> head loops running here
        self.firsts: dict[str, "LoopRunner"] = {}  # session id -> the runner of a loop's first hop
        self.tokens_fed = 0  # tokens our head loops sent on (counters for tests and the health page)

    @property
    def active(self) -> int:
        return sum(self.running.values())

    def register(self, rpc: Any) -> None:
        rpc.add_stream(SHARD_PROTOCOL, "loop", self._loop)

    def check_open(self, o: SessionOpen, peer: str) -> LoopSpec | None:
        """The session's loop, or None; refuses a loop this session cannot run (BAD_REQUEST) or that
        is over the bounds (BUSY)."""
        try:
            spec = LoopSpec.parse(o.loop)
        except LoopWireError as exc:
            raise RpcError(BAD_REQUEST, str(exc)) from None
        if spec is None:
            return None
        view = self.svc.view(o.start, o.end)
        if o.tap:
            raise RpcError(BAD_REQUEST, "the server token loop runs only without verification (tap off)")
        if spec.head is not None and not view.has_embedding:
            raise RpcError(BAD_REQUEST, "only the first hop (layer 0) takes loop tokens")
        if spec.first is not None:
            if not view.has_head or o.logits or o.sampling is None:
                raise RpcError(BAD_REQUEST, "only the hop holding the LM head, sampling, runs the token loop")
            if self.running[peer] >= LOOPS_PER_PEER or self.active >= self.svc.max_sessions:
                raise RpcError(BUSY, busy_message(f"{self.running[peer]} token loops of yours run here "
                                                  f"(at most {LOOPS_PER_PEER} per peer)", self.svc.retry_hint_s()))
        return spec

    def runner(self, call: ServerCall, sess: ServerSession, spec: LoopSpec | None) -> SessionRunner:
        if spec is None:
            return SessionRunner(self.svc, call, sess)
        return LoopRunner(self, call, sess, spec)

    async def _loop(self, call: ServerCall, args: Any) -> Any:
        """The head's stream of tokens into a session whose first hop we are."""
        sid = args.get("session_id") if isinstance(args, dict) else None
        runner = self.firsts.get(sid) if isinstance(sid, str) else None
        if runner is None:
            raise RpcError(UNAVAILABLE, "no token-loop session here by that id")
        if runner.spec.head != call.ctx.peer or args.get("from_session") != runner.spec.head_session:
            raise RpcError(BAD_REQUEST, "only the head of this session's route may feed its token loop")
        if runner.feeding:
            raise RpcError(BAD_REQUEST, "this session's token loop is already fed")
        runner.feeding = True
        try:
            with runner.feed_scope:  # cancelled when the session ends
                async for item in call:
                    await runner.feed(item)
        finally:
            runner.feeding = False
        return {}


class LoopRunner(SessionRunner):
    """A session of a token loop: its head's loop task, its first hop's feed, the client's acks."""

    def __init__(self, loops: TokenLoops, call: ServerCall, sess: ServerSession, spec: LoopSpec) -> None:
        super().__init__(loops.svc, call, sess)
        self.loops, self.spec = loops, spec
        self.head = spec.first is not None
        self.stopped = False
        self.acked: int | None = None  # the client took the answers up to this step
        self._wake = trio.Event()
        self._tokens_send, self._tokens_recv = trio.open_memory_channel[tuple[int, int, list[int]]](1)
        # a speculative loop (``spec.draft_k``): the head drafts by prompt lookup in the text so far
        self.context = list(spec.context[-MAX_LOOP_CONTEXT:])
        self.drafter = PromptLookup()
        self.adapt = AdaptiveK(k_min=1, k_max=max(1, spec.draft_k), k=min(4, max(1, spec.draft_k)))
        self._drafts: dict[int, list[int]] = {}  # step -> the drafts its verify pass carries
        self.feeding = False
        self.feed_scope = trio.CancelScope()
        self.last_pos = -1  # the first hop: the position of the last loop token fed

    # -- the client's stream: steps, acks, stop ---------------------------------------------------
    async def pump_client(self) -> None:
        async for item in self.call:
            if isinstance(item, dict) and ("loop_ack" in item or "loop_stop" in item):
                self._control(item)
                continue
            await self.sess.inbox_send.send(item)
        await self.sess.inbox_send.send(None)  # the client ended the session

    def _control(self, item: dict) -> None:
        ack = item.get("loop_ack")
        if item.get("loop_stop") is True:
            self.stopped = True
        elif type(ack) is int and self.acked is not None and ack > self.acked:
            self.acked = ack
        self._wake.set()
        self._wake = trio.Event()

    async def process(self, stack: AsyncExitStack, nursery: trio.Nursery,
                      on_step: Callable[[float, bool], None]) -> None:
        sid = self.sess.session_id
        if self.spec.head is not None:
            self.loops.firsts[sid] = self
        if self.head:
            self.loops.running[self.sess.client] += 1  # now, so that check_open counts it at once
            nursery.start_soon(self._run_loop)
        try:
            await super().process(stack, nursery, on_step)
        finally:
            if self.loops.firsts.get(sid) is self:
                del self.loops.firsts[sid]
            self.feed_scope.cancel()

    # -- the head ---------------------------------------------------------------------------------
    async def _answer_head(self, item: StepItem, out: Any, tok: Any, timings: list) -> None:
        drafts = self._drafts.pop(item.step, None) if self.head else None
        kept, nxt = None, None
        if self.head and item.want and type(tok) is int:
            nxt = (item.step + 1, item.pos + int(item.x.shape[1]), [tok])
        elif drafts is not None and item.want and isinstance(tok, list) and len(tok) == len(drafts) + 1:
            a = accept_exact(drafts, tok)  # a verify pass of our loop: keep the drafts the model agrees with
            if drafts:
                self.adapt.update(len(drafts), a)
            kept = drafts[:a] + [tok[a]]
            nxt = (item.step + 1, item.pos + a + 1, kept)
        if nxt is not None and not self.stopped:
            try:  # first the loop (the critical path: it sends at the next checkpoint), then the client
                self._tokens_send.send_nowait(nxt)
            except (trio.BrokenResourceError, trio.WouldBlock):  # the loop has ended, or the client sent
                pass  # steps of its own beside the loop (not ours to drive): the client drives from here
        if kept is not None:
            await self.call.send(loop_answer(item.step, kept, len(drafts or []), timings))
        else:
            await super()._answer_head(item, out, tok, timings)

    async def _run_loop(self) -> None:
        sess, peer = self.sess, self.sess.client
        why = "the session ended"
        try:
            with self._tokens_recv, trio.move_on_after(LOOP_MAX_S) as deadline:
                async with AsyncExitStack() as stack:
                    send: Callable[[dict], Awaitable[None]] | None = None
                    async for step, pos, new in self._tokens_recv:
                        if self.stopped or any(t in self.spec.eos for t in new) or pos >= sess.cache.max_length - 1:
                            why = "stopped" if self.stopped else "the generation is complete"
                            break
                        if self.acked is None:
                            self.acked = step - 2  # the client acks each answer: step - 1 is the first
                        if not await self._credit(step):
                            if self.stopped:
                                why = "stopped"
                            else:  # the client may be alive but slow: it fails over (no ban) and replays
                                why = f"no ack from the client for {ACK_TIMEOUT_S:.0f} s"
                                await self._notify(why)
                            break
                        try:
                            send = send or await self._open_first(stack)
                            await send(self._next_input(step, pos, new))
                        except Exception as exc:  # the first hop went away: the client fails over
                            why = f"the loop stream to the first hop broke: {type(exc).__name__}: {exc}"
                            await self._notify(why)
                            break
                        self.loops.tokens_fed += 1
            if deadline.cancelled_caught:
                why = f"ran {LOOP_MAX_S:.0f} s"
                await self._notify(why)
            log.debug("session %s: token loop ended (%s)", sess.session_id[:8], why)
        finally:
            self.loops.running[peer] -= 1
            if self.loops.running[peer] <= 0:
                del self.loops.running[peer]

    def _next_input(self, step: int, pos: int, new: list[int]) -> dict:
        """The loop's next step: the last token at ``pos``, and in a speculative loop the drafts after it
        (as many as fit before the session's max length)."""
        if not self.spec.draft_k:
            return loop_token(step, pos, new[-1:])
        self.context = (self.context + new)[-MAX_LOOP_CONTEXT:]
        k = min(self.adapt.k, self.spec.draft_k, self.sess.cache.max_length - 1 - pos)
        drafts = self.drafter.draft(self.context, k) if k > 0 else []
        self._drafts[step] = drafts
        return loop_token(step, pos, new[-1:] + drafts, verify=True)

    async def _credit(self, step: int) -> bool:
        """Wait until feeding ``step`` keeps at most ``window`` answers unacknowledged; False: stop."""
        assert self.acked is not None
        with trio.move_on_after(ACK_TIMEOUT_S):
            while not self.stopped and step - self.acked > self.spec.window:
                await self._wake.wait()
            return not self.stopped
        return False

    async def _open_first(self, stack: AsyncExitStack) -> Callable[[dict], Awaitable[None]]:
        """Where this loop's tokens go: the first hop's ``loop`` stream, or our own session."""
        first, sid = self.spec.first, self.spec.first_session
        if first == self.node.peer_id:
            local = self.loops.firsts.get(sid)
            if local is None or local.spec.head != first or local.spec.head_session != self.sess.session_id:
                raise RpcError(UNAVAILABLE, "the first hop's session is not here")
            return local.feed
        await self.reach(first)
        cm = self.node.host.rpc.stream(first, SHARD_PROTOCOL, "loop",
                                       {"session_id": sid, "from_session": self.sess.session_id}, timeout=LOOP_MAX_S)
        return (await stack.enter_async_context(cm)).send

    async def _notify(self, why: str) -> None:
        """Tell the client the loop ended without its stop: it fails over (no ban) and replays."""
        log.warning("session %s: token loop ended: %s", self.sess.session_id[:8], why)
        try:
            await self.call.send(loop_failed_notice(self.spec.first or "", why))
        except Exception:  # the client is gone too
            pass

    # -- the first hop ----------------------------------------------------------------------------
    async def feed(self, raw: Any) -> None:
        """One loop token from the head: checked, then queued as the next step's input."""
        try:
            step, pos, toks, verify = parse_loop_token(raw)
        except LoopWireError as exc:
            raise RpcError(BAD_REQUEST, str(exc)) from None
        if not (self.last_pos < pos and pos + len(toks) <= self.sess.cache.max_length):
            raise RpcError(BAD_REQUEST, f"loop: positions from {pos} are not after {self.last_pos} within the session")
        if max(toks) >= self.sess.view.config.vocab_size:
            raise RpcError(BAD_REQUEST, "loop: a token id is outside the vocabulary")
        self.last_pos = pos
        x = torch.tensor([toks], dtype=torch.long)
        item = StepItem(step, pos, x, verify=verify, rollback=pos if verify else None)
        await self.sess.inbox_send.send(item.to_msg())
