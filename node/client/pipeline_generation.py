"""One pipeline generation: the token loop over a route, with failover and optional verification.

``PipelineGeneration.produce`` runs in the background of ``PipelineGenerator.generate`` and feeds a
channel the caller iterates (text chunks, then ``summary``). Its parts:

- the loop (``_run``): open a ``PipelineSession`` on the planned route, replay the history so far
  (nothing on the first attempt), then step token by token until EOS, a stop string or the length
  (with ``ClientOptions.server_loop`` the servers feed the tokens themselves: ``server_loop.py``);
- verification (``node/client/verify.py``, on by default): a ``Verifier`` checks the route's hops in
  the background; ``_on_round`` learns which positions were confirmed. Only tokens sampled from
  confirmed positions count as verified (``summary.verified_tokens``); text is streamed once its
  tokens are *settled* (confirmed, or checked while no replica could answer: ``unverifiable_steps``);
  the tail no round covered is sent at the end and not counted as verified;
- text (``models.textstream.TextStream``): detokenization and stop strings;
- failures (``node/client/failover.py``): a failed, busy or lying hop ends the session; with
  verification the tokens after the last settled one are dropped; the policy bans or routes around
  the peer and the loop replays the history on the new route, so the tokens are identical to an
  undisturbed run;
- timings (``RouteTimings``): per-hop compute per decode step for the summary and the health page.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any

import torch
import trio

from swarmlm.errors import SwarmError, root_cause
from swarmlm.models.textstream import TextStream
from swarmlm.node.client.failover import Failover
from swarmlm.node.client.server_loop import loop_spec, run_server_loop
from swarmlm.node.client.session import HopFailed, HopPlan, PipelineSession, StepResult, single_leaf
from swarmlm.node.client.speculative import Speculation
from swarmlm.node.client.verify import VerificationFailed, Verifier
from swarmlm.node.generation import GenerationChunk, GenerationError, GenerationRequest, GenerationSummary, HopTiming
from swarmlm.node.wire import EE_PREFIX

log = logging.getLogger("swarmlm.client")


def _ids(ids: list[int]) -> torch.Tensor:
    return torch.tensor([ids], dtype=torch.long)


class RouteTimings:
    """Per-hop step times; the prompt's prefill is kept apart from the decode steps."""

    def __init__(self) -> None:
        self.decode: dict[tuple[str, int, int], list[float]] = {}
        self.prefill: dict[tuple[str, int, int], list[float]] = {}

    def add(self, timings: list[list[Any]], decoding: bool) -> None:
        acc = self.decode if decoding else self.prefill
        for peer, a, b, ms in timings:
            acc.setdefault((peer, a, b), []).append(ms)

    def summary(self, route: Any) -> list[HopTiming]:
        """Mean per-hop times of the hops of ``route`` (decode steps, or the prefill when none)."""
        on_route = {h.peer_id for h in route.hops}
        return sorted((HopTiming(peer, a, b, sum(v) / len(v)) for (peer, a, b), v in (self.decode or self.prefill).items()
                       if peer in on_route), key=lambda h: h.start)


class PipelineGeneration:
    """One generation: iterate it for chunks; ``summary`` is complete when iteration ends."""

    def __init__(self, client: Any, request: GenerationRequest, prompt_ids: list[int], tokenizer: Any) -> None:
        self.client = client  # the PipelineGenerator
        self.request = request
        self.prompt_ids = list(prompt_ids)
        self.tok = tokenizer
        self.summary = GenerationSummary(model=request.model, prompt_tokens=len(prompt_ids))
        self.route: Any = None
        self.text = TextStream(tokenizer, request.params.stop)
        self.timings = RouteTimings()
        self.verifier: Verifier | None = None
        self.unverifiable = False  # verification asked for, but no replica of any hop to check on
        self.settled_n = 0  # with verification: tokens whose check concluded (the text streamed so far)
        self.verified: list[list[int]] = []  # token ranges [a, b) every hop's check confirmed
        self._base = 0  # the first token the current route session sampled (earlier ones were replayed)
        self.sampling: dict[str, Any] = {}
        self._send, self._recv = trio.open_memory_channel[Any](1024)
        self._t_first: float | None = None
        self.held: list[str] = []  # the peers the client counts this generation's sessions on
        self.spec: Speculation | None = None  # speculative decoding (ClientOptions.speculative)

    def _checkable(self, route: Any) -> bool:
        """Whether some hop of ``route`` has a replica a check could run on (another server holding its
        layers; the swarm's signed state says who serves what, so no peer can hide a replica)."""
        servers = self.client.servers(self.request.model)
        return any(s.peer_id != h.peer_id and s.start <= h.start and h.end <= s.end
                   for h in route.hops for s in servers)

    @property
    def token_ids(self) -> list[int]:
        return self.text.tokens

    @property
    def verified_tokens(self) -> int:
        n = len(self.token_ids)
        return sum(max(0, min(b, n) - a) for a, b in self.verified)

    def __aiter__(self) -> "PipelineGeneration":
        return self

    async def __anext__(self) -> GenerationChunk:
        try:
            item = await self._recv.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
        if isinstance(item, BaseException):
            raise item
        return item

    async def produce(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async with self._send:
            try:
                await self._run()
            except Exception as exc:  # a nursery's group is unwrapped: the front end gets one clear error
                cause = root_cause(exc)
                if isinstance(cause, GenerationError):
                    await self._send.send(cause)
                elif isinstance(cause, SwarmError):  # HopFailed and the like: the message says it all
                    await self._send.send(GenerationError(str(cause)))
                else:
                    log.error("generation failed", exc_info=exc)
                    await self._send.send(GenerationError(f"{type(cause).__name__}: {cause}"))

    # -- the loop -----------------------------------------------------------------------------------
    def _sampling(self) -> dict[str, Any]:
        p = self.request.params
        return {"temperature": p.temperature, "top_k": p.top_k, "top_p": p.top_p,
                "seed": p.seed if p.seed is not None else secrets.randbits(62)}

    async def _run(self) -> None:
        c, p = self.client, self.request.params
        if p.max_new_tokens == 0:
            self.summary.finish_reason = "length"
            return
        max_length = len(self.prompt_ids) + p.max_new_tokens
        self.sampling = sampling = self._sampling()
        t_start = time.perf_counter()
        route = self.route or c.plan(self.request.model, max_length)
        c.hold(self, route)
        fraction = c.options.check_fraction if self.request.check_fraction is None else self.request.check_fraction
        if fraction > 0 and not self._checkable(route):
            # no other server holds any hop's layers: no check could run, so no taps are asked for
            log.info("verification: no second replica serves any layers of the route; the answer is unverifiable")
            self.unverifiable = True
        elif fraction > 0:
            self.verifier = Verifier(c, self.request.model, sampling, max_length, fraction, c.options.verify_final,
                                     self._on_round)
        failover = Failover(c.options, c.bans, c.rng)
        while True:
            try:
                await self._session(route, max_length)
                break
            except (HopFailed, VerificationFailed) as exc:
                if self.verifier is not None:
                    self._roll_back(exc)
                model = self.request.model
                c.hold(self, None)  # our own session there is over: do not count it against the replan
                if isinstance(exc, HopFailed) and not (exc.busy or exc.transient):
                    await c.recheck(exc.peer)  # a vanished peer: every client here routes around it
                route = await failover.next_route(exc, route, c.servers(model), c.n_layers(model), max_length,
                                                  lambda: c.plan(model, max_length))
                c.hold(self, route)
        await self._finish(route, t_start, failover.failovers)

    def _roll_back(self, exc: BaseException) -> None:
        """Drop the tokens whose check had not concluded: the next route samples them again (the
        same tokens from honest servers) and its checks cover them."""
        keep = min(self.settled_n, len(self.token_ids))
        if keep < len(self.token_ids):
            log.warning("%s; keeping the %d settled tokens of %d", exc, keep, len(self.token_ids))
            self.text.truncate(keep)
            self.summary.finish_reason = "length"
        self.verified = [[a, min(b, keep)] for a, b in self.verified if a < keep]

    def _on_round(self, end: int, confirmed: bool) -> None:
        """A verification round checked every position before ``end`` (``confirmed``: on every hop)."""
        hi = end - len(self.prompt_ids) + 1  # tokens sampled from positions before ``end``
        self.summary.checks += 1
        if hi <= self._base:
            return
        self.settled_n = max(self.settled_n, hi)
        if confirmed:
            if self.verified and self.verified[-1][0] == self._base:
                self.verified[-1][1] = max(self.verified[-1][1], hi)
            else:
                self.verified.append([self._base, hi])

    async def _session(self, route: Any, max_length: int) -> None:
        """Generate on ``route`` until the generation ends; raises ``HopFailed`` /
        ``VerificationFailed`` when a hop fails (the caller fails over and calls again)."""
        c, v = self.client, self.verifier
        hops = [HopPlan(h.peer_id, h.start, h.end) for h in route.hops]
        for h in hops:
            if not await c.ensure_connected(h.peer_id):
                raise HopFailed(h.peer_id, "unreachable at every address the swarm state lists")
        loop = None
        if v is None and c.options.server_loop and not self.request.model.startswith(EE_PREFIX):
            # the server token loop, unverified and unencrypted (the head drafts when speculative)
            loop = loop_spec(self.tok.eos_token_ids, c.options.draft_k_max if c.options.speculative else 0,
                             self.prompt_ids + self.token_ids)
        async with PipelineSession(c.host.rpc, self.request.model, hops, max_length, self.sampling,
                                   step_timeout_s=c.options.step_timeout_s, open_timeout_s=c.options.open_timeout_s,
                                   tap=v is not None, wire=c.options.wire_dtype,
                                   tap_batch=v.tap_batches([h.peer_id for h in hops]) if v else None,
                                   loop=loop) as sess:
            if loop is not None:  # the head drafts itself when speculative; a local draft model is not used here
                res = await self._replay(sess)
                self._base = len(self.token_ids)
                await run_server_loop(self, sess, res)
                return
            body = self._loop
            if c.options.speculative or c.options.draft_model:  # verify passes of k+1 positions
                self.spec = self.spec or await Speculation.create(c.options, self.tok)
                body = self._speculate
            if v is None:
                await body(sess)
                return
            try:
                async with trio.open_nursery() as nursery:
                    loop = trio.CancelScope()
                    await nursery.start(v.run, sess, loop.cancel)
                    with loop:
                        await body(sess)
                        await v.settle()
            except BaseExceptionGroup as group:  # the loop's own error (a hop failed), unwrapped
                leaf = single_leaf(group)
                if leaf is None:
                    raise
                raise leaf from None
            if v.failure is not None:
                raise v.failure

    async def _loop(self, sess: PipelineSession) -> None:
        res = await self._replay(sess)
        self._base = len(self.token_ids)
        while True:
            if self.verifier is not None:
                self.verifier.answered(sess.last_step)
            if not await self._take(res):
                break
            pos = len(self.prompt_ids) + len(self.token_ids) - 1
            res = await sess.step(_ids([self.token_ids[-1]]), pos)

    async def _speculate(self, sess: PipelineSession) -> None:
        res = await self._replay(sess)
        self._base = len(self.token_ids)
        self.spec = self.spec or Speculation()
        await self.spec.run(self, sess, res)

    async def _take(self, res: StepResult) -> bool:
        """Use the head's answer to a step: record timings, stream text; False once the generation ended."""
        self.timings.add(res.timings, decoding=bool(self.token_ids))
        tok = int(res.token)
        if tok in self.tok.eos_token_ids:
            self.summary.finish_reason = "stop"
            return False
        if self._t_first is None:
            self._t_first = time.perf_counter()
        self.text.push(tok)
        chunk = self.text.release(self.settled_n if self.verifier is not None else None)
        if chunk:
            await self._send.send(GenerationChunk(chunk, [tok]))
        if self.text.stopped:
            self.summary.finish_reason = "stop"
            return False
        if len(self.token_ids) >= self.request.params.max_new_tokens:
            self.summary.finish_reason = "length"
            return False
        return True

    async def _replay(self, sess: PipelineSession) -> StepResult:
        """Rebuild the caches of a fresh session exactly as first computed; the next token's answer."""
        n_prompt, gen = len(self.prompt_ids), self.token_ids
        res = await sess.step(_ids(self.prompt_ids), 0, want=not gen)
        for i, t in enumerate(gen):
            res = await sess.step(_ids([t]), n_prompt + i, want=i == len(gen) - 1)
        return res

    async def _finish(self, route: Any, t_start: float, failovers: int) -> None:
        rest = self.text.finish()
        if rest:
            await self._send.send(GenerationChunk(rest, []))
        s, now = self.summary, time.perf_counter()
        s.text = self.text.text
        s.completion_tokens = len(self.token_ids)
        s.failovers = failovers
        if self.verifier is not None:
            s.verified_tokens = self.verified_tokens
            s.unverifiable_steps = max(0, min(self.settled_n, len(self.token_ids)) - s.verified_tokens)
        elif self.unverifiable:
            s.unverifiable_steps = len(self.token_ids)
        s.ttft_ms = ((self._t_first or now) - t_start) * 1000.0
        decode_s = now - (self._t_first or t_start)
        s.tokens_per_s = (len(self.token_ids) - 1) / decode_s if len(self.token_ids) > 1 and decode_s > 0 else 0.0
        s.route = self.timings.summary(route)
        if self.spec is not None:
            s.speculative = self.spec.summary()
            self.spec.close()
        self.client.record_route({"model": s.model, "hops": [h.__dict__ for h in s.route],
                                  "tokens_per_s": s.tokens_per_s, "at": time.time(),
                                  "tokens": s.prompt_tokens + s.completion_tokens})
