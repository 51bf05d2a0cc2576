"""One inference session on a shard server: its KV cache, its inbox, and the loop that computes it.

A session is opened by a client's ``session`` call (``node/server/shard.py``); its inputs arrive on
that stream (the first hop, or when the client relays) or on a ``relay`` stream from the previous
server. ``SessionRunner.process`` submits each input, in order, to the service's step scheduler
(``node/server/batcher.py``), which computes it in a batch with the other sessions' ready steps
(a long prompt in chunks) while the stream readers keep reading; then it either answers the client
with the token sampled in the batch's worker thread (the hop holding the LM head), or sends the
hidden states on to the next server over a ``relay`` stream. When the next server cannot be reached, outputs go back to the client
(``relay_failed``), which relays them itself. Message shapes are in ``swarmlm.node.wire``.
"""

from __future__ import annotations

import logging
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import trio

from swarmlm.errors import SwarmError
from swarmlm.models.sampling import Sampler, SamplingParams
from swarmlm.net.rpc import BAD_REQUEST, BUSY, RpcError
from swarmlm.net.rpc_server import ServerCall
from swarmlm.node.dial import ensure_connected
from swarmlm.node.server.scheduler import Work
from swarmlm.node.wire import (SHARD_PROTOCOL, TAP_FLUSH, SessionOpen, StepItem, WireError, hidden_answer,
                               logits_answer, relay_failed_notice, step_seed, tap_digest, tap_message, taps_message,
                               token_answer, tokens_answer)

log = logging.getLogger("swarmlm.shard")

WIRE_TORCH_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class ServerSession:
    session_id: str
    client: str
    prev: str | None
    next: str | None
    next_session: str | None
    view: Any
    cache: Any
    sampling: dict | None
    want_logits: bool
    inbox_send: trio.MemorySendChannel
    inbox_recv: trio.MemoryReceiveChannel
    relay: Any = None
    relay_failed: bool = False
    tap: bool = False  # send the client a signed copy of each step's input and output (verification)
    tap_batch: int = 1  # taps per message; ``held``: signed taps not sent yet (at most tap_batch - 1)
    held: list = field(default_factory=list)
    wire: str | None = None  # "fp16"/"bf16": hidden states are down-cast before they travel
    steps: int = 0
    opened: float = field(default_factory=time.monotonic)
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)  # cancelled when it expires idle

    @classmethod
    def open(cls, o: SessionOpen, client: str, view: Any, cache: Any, inbox_size: int = 64) -> "ServerSession":
        send, recv = trio.open_memory_channel[Any](inbox_size)
        return cls(o.session_id, client, o.prev, o.next, o.next_session, view, cache, o.sampling, o.logits,
                   send, recv, tap=o.tap, tap_batch=o.tap_batch, wire=o.wire)


def sample_token(sess: ServerSession, logits: Any, pos: int) -> int:
    """The token at ``pos`` with the session's sampling, seeded per position (``wire.step_seed``)."""
    sp = dict(sess.sampling or {})
    seed = int(sp.get("seed") or 0)
    params = SamplingParams.from_dict({**sp, "seed": step_seed(seed, pos), "max_new_tokens": 1})
    return Sampler(params).sample(logits[0, -1])


def sample_tokens(sess: ServerSession, logits: Any, pos: int) -> list[int]:
    """A verify pass: the token at every position ``pos + i``, each as ``sample_token`` would pick it."""
    return [sample_token(sess, logits[:, i:i + 1], pos + i) for i in range(logits.shape[1])]


class SessionRunner:
    """Computes one session's inputs in order and sends each result where it goes.

    ``svc`` is the ``ShardService`` (its compute limiter, fault injection, counters and the node);
    ``call`` the client's stream."""

    def __init__(self, svc: Any, call: ServerCall, sess: ServerSession) -> None:
        self.svc, self.call, self.sess = svc, call, sess
        self.node = svc.node

    async def pump_client(self) -> None:
        async for item in self.call:
            await self.sess.inbox_send.send(item)
        await self.sess.inbox_send.send(None)  # the client ended the session

    async def _send_tap(self, item: StepItem, x_out: Any, token: int | None) -> None:
        sess = self.sess
        sampling = sess.sampling if sess.view.has_head else None  # the head signs how it sampled
        sig = self.node.identity.sign(tap_digest(sess.session_id, item.step, item.pos, item.x, x_out, token, sampling))
        sess.held.append(tap_message(item.step, item.pos, item.x, x_out, token, sig))
        if len(sess.held) >= sess.tap_batch:
            await self._flush_taps()

    async def _flush_taps(self) -> None:
        held, self.sess.held = self.sess.held, []
        if held:
            await self.call.send(taps_message(held))

    async def reach(self, peer: str) -> None:
        """Connect to ``peer`` (the next hop, or the loop's first hop) at the addresses its swarm-state
        entry lists when no connection is open: a replacement hop after a failover may be a peer this
        node never talked to, whose addresses its libp2p peerstore does not hold."""
        state = getattr(self.node, "state", None)
        if state is not None:
            await ensure_connected(self.node.host, state.state, peer)

    async def _watch_relay(self) -> None:
        """The next server answers a relay stream only when it ends or fails: tell the client."""
        sess = self.sess
        reason, busy = "the next server closed the relay", False
        try:
            async for _ in sess.relay:
                pass
        except Exception as exc:
            reason, busy = f"{type(exc).__name__}: {exc}", getattr(exc, "code", None) == BUSY
        sess.relay_failed = True
        log.warning("session %s: relay to %s ended: %s", sess.session_id[:8], sess.next[-8:], reason)
        try:
            await self.call.send(relay_failed_notice(sess.next, reason, busy))
        except Exception:
            pass

    async def _compute(self, item: StepItem) -> tuple[Any, int | None, float]:
        """``item`` computed in a batch: (output, sampled token or None, compute ms)."""
        sess = self.sess
        head = sess.view.has_head
        samples = head and item.want and not (sess.want_logits or sess.sampling is None)
        verify = samples and item.verify  # a speculative verify pass: the head's token at every position
        post = None
        if samples:
            post = (lambda out, pos=item.pos: sample_tokens(sess, out, pos)) if verify else \
                (lambda out, pos=item.pos: sample_token(sess, out, pos))
        if item.rollback is not None:  # speculative decoding: forget the rejected drafts' positions
            try:
                sess.cache.truncate(item.rollback)
            except SwarmError as exc:
                raise RpcError(BAD_REQUEST, str(exc)) from None
        work = Work(sess.session_id, sess.view, sess.cache, item.x, item.pos, last_only=head and not verify, post=post,
                    owner=sess.client)
        try:
            await self.svc.batcher.submit(work)
        except SwarmError as exc:  # bad positions, wrong hidden size...: the client's error
            raise RpcError(BAD_REQUEST, str(exc)) from None
        return work.output, work.result, work.seconds * 1000.0

    async def process(self, stack: AsyncExitStack, nursery: trio.Nursery,
                      on_step: Callable[[float, bool], None]) -> None:
        sess, svc = self.sess, self.svc
        me = self.node.peer_id
        while True:
            raw = await sess.inbox_recv.receive()
            if raw is None:
                return
            if raw == TAP_FLUSH:  # the client is about to end: the taps held back so far
                await self._flush_taps()
                continue
            try:
                item = StepItem.parse(raw)
            except WireError as exc:
                raise RpcError(BAD_REQUEST, str(exc)) from None
            if svc.fault == "drop":
                continue  # swallow the step: the client's deadline and failover must handle it
            if svc.fault == "slow":
                await trio.sleep(2.0)
            out, tok, ms = await self._compute(item)
            sess.steps += 1
            svc.count_step(item.x.shape[1])
            on_step(ms / 1000.0, item.want and sess.view.has_head)
            timings = item.timings + [[me, sess.view.start, sess.view.end, round(ms, 3)]]
            if sess.view.has_head:
                await self._answer_head(item, out, tok, timings)
            else:
                await self._pass_on(item, out, timings, stack, nursery)

    async def _answer_head(self, item: StepItem, out: Any, tok: int | None, timings: list) -> None:
        sess = self.sess
        if item.want:
            if isinstance(tok, list):
                await self.call.send(tokens_answer(item.step, tok, timings))
            elif tok is None:
                await self.call.send(logits_answer(item.step, out[0, -1].float(), timings))
            else:
                await self.call.send(token_answer(item.step, tok, timings))
        if sess.tap:  # after the answer: the client's next step does not wait for our signature
            await self._send_tap(item, None, tok)

    async def _pass_on(self, item: StepItem, out: Any, timings: list, stack: AsyncExitStack,
                       nursery: trio.Nursery) -> None:
        sess = self.sess
        if sess.wire:  # before the tap: what verification sees is what the next hop gets
            out = out.to(WIRE_TORCH_DTYPES[sess.wire])
        await self._hand_on(item, out, timings, stack, nursery)
        if sess.tap:  # after the relay: the next hop computes while we sign
            await self._send_tap(item, out, None)

    async def _hand_on(self, item: StepItem, out: Any, timings: list, stack: AsyncExitStack,
                       nursery: trio.Nursery) -> None:
        """Our output to the next hop (or, when the relay broke or we are the last hop, to the client)."""
        sess = self.sess
        if sess.next and not sess.relay_failed:
            try:
                if sess.relay is None:
                    log.debug("session %s: opening relay to %s", sess.session_id[:8], sess.next[-8:])
                    await self.reach(sess.next)
                    cm = self.node.host.rpc.stream(sess.next, SHARD_PROTOCOL, "relay",
                                                   {"session_id": sess.next_session})
                    sess.relay = await stack.enter_async_context(cm)
                    nursery.start_soon(self._watch_relay)
                await sess.relay.send(hidden_answer(item, out, timings))
                return
            except Exception as exc:
                log.warning("session %s: relay to %s failed (%s); the client relays from now on",
                            sess.session_id[:8], sess.next[-8:], exc)
                sess.relay_failed = True
                await self.call.send(hidden_answer(item, out, timings, relay_failed=sess.next))
                return
        await self.call.send(hidden_answer(item, out, timings))
