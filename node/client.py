"""The swarm client: runs prompts through the swarm. ``SwarmClient`` is the async engine (the node's
HTTP API and `swarmlm ask` use it); ``swarmlm.Client`` (``node/sdk.py``) wraps it for plain Python.

A generation: tokenize locally (the chat template too), plan a route over the servers the swarm
state lists (``node/routing.py``), open a ``PipelineSession`` and step it token by token, streaming
text. On a failed hop: ban the peer, re-plan keeping the healthy hops, replay the history exactly
(``node/pipeline.py``) and go on; after ``max_failovers`` give up with a clear error.
"""

from __future__ import annotations

import logging
import secrets
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

import trio

from swarmlm.node.generation import (BadRequest, BusyError, GenerationChunk, GenerationError, GenerationRequest,
                                     GenerationSummary, HopTiming, ModelCard, NoRouteError, UnknownModel)
from swarmlm.node.pipeline import Bans, HopFailed, HopPlan, PipelineSession, single_leaf
from swarmlm.node.verify import VerificationFailed

log = logging.getLogger("swarmlm.client")

MAX_PROMPT_TOKENS = 32768


@dataclass
class ClientOptions:
    max_failovers: int = 5
    step_timeout_s: float = 30.0
    ban_s: float = 60.0
    route_mode: str = "latency"
    wire_dtype: str | None = None  # "fp16"/"bf16": down-cast activations between servers (half the bytes)
    check_fraction: float = 0.0  # verified shards: the share of steps re-run on a replica (docs/RELIABILITY.md)
    verify_final: bool = False  # also check the whole history before a verified generation ends
    verdict_ban_s: float = 3600.0  # peers with a "fail" verdict record this recent are not routed to
    prefer: tuple[str, ...] = ()  # peers the first plan favours (tests, benches)
    busy_backoff_s: float = 0.25  # first back-off after a "busy" answer with no other server (then doubling)
    busy_retries: int = 3  # "busy" answers a generation absorbs before it gives up with BusyError (HTTP 429)


class SwarmClient:
    """Plans routes from the swarm state and runs generations; lives on a running ``SwarmHost``."""

    def __init__(self, host: Any, state: Any, options: ClientOptions | None = None, self_peer: str | None = None) -> None:
        self.host = host
        self.state_service = state
        self.options = options or ClientOptions()
        self.bans = Bans(self.options.ban_s)
        self._tokenizers: dict[str, Any] = {}
        self.recent_routes: list[dict[str, Any]] = []
        self.verify_stats: dict[str, Any] = {}
        import random

        self.rng = random.Random()

    # -- swarm view -------------------------------------------------------------------------------
    @property
    def state(self) -> Any:
        return self.state_service.state

    async def list_models(self) -> list[ModelCard]:
        from swarmlm.node.routing import coverage_gaps

        now = time.time()
        cards = []
        for model_id, info in sorted(self.state.models(now).items()):
            servers = self.servers(model_id)
            if not servers:
                continue
            gaps = coverage_gaps(servers, info.layers)
            cards.append(ModelCard(model_id, info.layers, 1.0 - len(gaps) / max(1, info.layers),
                                   len({s.peer_id for s in servers})))
        return cards

    def servers(self, model: str) -> list[Any]:
        from swarmlm.node.directory import servers_for

        bad = self.convicted()
        return [s for s in servers_for(self.state, model, time.time(), self.host.peers) if s.peer_id not in bad]

    def convicted(self) -> set[str]:
        """Peers a recent signed "fail" verdict record in the swarm state names: routing avoids them."""
        from swarmlm.node.verify import VERDICT_KIND

        since = time.time() - self.options.verdict_ban_s
        return {r.body["subject"] for r in self.state.records(kind=VERDICT_KIND)
                if isinstance(r.body, dict) and r.body.get("verdict") == "fail" and isinstance(r.body.get("subject"), str)
                and r.created >= since and r.author != r.body["subject"]}

    def n_layers(self, model: str) -> int:
        info = self.state.models(time.time()).get(model)
        if info is None:
            known = sorted(self.state.models(time.time()))
            raise UnknownModel(f"no peer serves model {model!r}" + (f"; the swarm serves: {', '.join(known)}"
                                                                     if known else "; the swarm serves no models yet"))
        return info.layers

    def plan(self, model: str, need_tokens: int, prefer: tuple[str, ...] = ()) -> Any:
        from swarmlm.node.routing import plan_route

        return plan_route(self.servers(model), self.n_layers(model), need_cache_tokens=need_tokens,
                          banned=self.bans.active(), mode=self.options.route_mode, rng=self.rng,
                          prefer=prefer or self.options.prefer)

    async def ensure_connected(self, peer: str) -> None:
        if peer == self.host.peer_id or self.host.is_connected(peer):
            return
        entry = self.state.peer(peer)
        for addr in (entry.addrs if entry else ()):
            try:
                await self.host.connect(addr if "/p2p/" in addr else f"{addr}/p2p/{peer}")
                return
            except Exception as exc:
                log.debug("dial %s via %s failed: %s", peer[-8:], addr, exc)

    # -- tokenizer ----------------------------------------------------------------------------------
    async def tokenizer(self, model: str) -> Any:
        if model in self._tokenizers:
            return self._tokenizers[model]
        from swarmlm.models.tokenizer import Tokenizer

        model_dir = await self._tokenizer_dir(model)
        tok = await trio.to_thread.run_sync(Tokenizer.from_dir, model_dir)
        self._tokenizers[model] = tok
        return tok

    async def _tokenizer_dir(self, model: str) -> Path:
        from swarmlm.models.registry import BUILTINS, cache_dir, resolve

        if model in BUILTINS or Path(model).expanduser().is_dir():
            return await trio.to_thread.run_sync(resolve, model)
        # a model only the swarm has: fetch its tokenizer files (never weights) from a server
        import hashlib

        from swarmlm.node.shard_service import SHARD_PROTOCOL, TOKENIZER_FILES

        d = cache_dir() / "remote-tokenizers" / hashlib.sha256(model.encode()).hexdigest()[:16]
        if (d / "tokenizer.json").exists():
            return d
        for s in self.servers(model):
            try:
                await self.ensure_connected(s.peer_id)
                files = await self.host.rpc.call(s.peer_id, SHARD_PROTOCOL, "files", None, timeout=30)
            except Exception as exc:
                log.debug("tokenizer from %s: %s", s.peer_id[-8:], exc)
                continue
            if not isinstance(files, dict) or "tokenizer.json" not in files:
                continue
            d.mkdir(parents=True, exist_ok=True)
            for name, data in files.items():
                if name in TOKENIZER_FILES and isinstance(data, bytes):
                    (d / name).write_bytes(data)
            return d
        raise NoRouteError(f"no server of {model!r} could send its tokenizer")

    # -- generation ------------------------------------------------------------------------------------
    @asynccontextmanager
    async def generate(self, request: GenerationRequest) -> AsyncIterator["PipelineGeneration"]:
        if request.mode != "pipeline":
            raise BadRequest(f"mode {request.mode!r} is not served by this client")
        self.n_layers(request.model)  # unknown model -> clear error before anything else
        tok = await self.tokenizer(request.model)
        if request.messages is not None:
            prompt_ids = tok.encode_chat(request.messages)
        elif request.prompt is not None:
            prompt_ids = tok.encode(request.prompt)
        else:
            raise BadRequest("give a prompt or messages")
        if not prompt_ids:
            raise BadRequest("the prompt is empty")
        if len(prompt_ids) > MAX_PROMPT_TOKENS:
            raise BadRequest(f"the prompt has {len(prompt_ids)} tokens; at most {MAX_PROMPT_TOKENS} are allowed")
        request.params.validate()
        gen = PipelineGeneration(self, request, prompt_ids, tok)
        # plan now, so "no route" is an error before the first chunk (HTTP: a status, not a broken stream)
        gen.route = self.plan(request.model, len(prompt_ids) + max(1, request.params.max_new_tokens))
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(gen.produce)
                try:
                    yield gen
                finally:
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            leaf = single_leaf(group)
            if leaf is None:
                raise
            raise leaf from None


class PipelineGeneration:
    """One generation: iterate it for chunks; ``summary`` is complete when iteration ends."""

    def __init__(self, client: SwarmClient, request: GenerationRequest, prompt_ids: list[int], tokenizer: Any) -> None:
        self.client = client
        self.request = request
        self.prompt_ids = list(prompt_ids)
        self.tok = tokenizer
        self.summary = GenerationSummary(model=request.model, prompt_tokens=len(prompt_ids))
        self.token_ids: list[int] = []
        self.route: Any = None
        self._send, self._recv = trio.open_memory_channel[Any](1024)

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
            except (GenerationError, HopFailed, NoRouteError) as exc:
                await self._send.send(exc if isinstance(exc, GenerationError) else GenerationError(str(exc)))
            except Exception as exc:
                from swarmlm.errors import SwarmError

                if not isinstance(exc, SwarmError):
                    log.exception("generation failed")
                await self._send.send(GenerationError(f"{type(exc).__name__}: {exc}"))

    async def _run(self) -> None:
        from swarmlm.models.generate import stop_hold
        from swarmlm.models.tokenizer import IncrementalDecoder

        c, p = self.client, self.request.params
        eos = set(self.tok.eos_token_ids)
        max_new = p.max_new_tokens
        if max_new == 0:
            self.summary.finish_reason = "length"
            return
        max_length = len(self.prompt_ids) + max_new
        sampling = {"temperature": p.temperature, "top_k": p.top_k, "top_p": p.top_p,
                    "seed": p.seed if p.seed is not None else secrets.randbits(62)}
        dec = IncrementalDecoder(self.tok)
        text, emitted = "", 0
        t_start = time.perf_counter()
        t_first: float | None = None
        route = self.route or c.plan(self.request.model, max_length)
        failovers = 0
        timings_acc: dict[tuple[str, int, int], list[float]] = {}
        prefill_acc: dict[tuple[str, int, int], list[float]] = {}
        checker = None
        if c.options.check_fraction > 0:
            from swarmlm.node.verify import SpotChecker

            checker = SpotChecker(c, self.request.model, c.options.check_fraction, sampling, c.rng, c.verify_stats)
        busy_waits = 0
        lens = [0]  # len(text) after n tokens: with verification only verified text is streamed
        verified_n = 0
        while True:
            hops = [HopPlan(h.peer_id, h.start, h.end) for h in route.hops]
            try:
                for h in hops:
                    await c.ensure_connected(h.peer_id)
                async with PipelineSession(c.host.rpc, self.request.model, hops, max_length, sampling,
                                           step_timeout_s=c.options.step_timeout_s, tap=checker is not None,
                                           wire=c.options.wire_dtype) as sess:
                    res = await self._replay(sess)
                    while True:
                        if checker is not None and checker.sample():
                            await checker.check(sess, sess._step - 1)
                            verified_n = len(self.token_ids) + 1
                        # per-hop compute per decode step: the prompt's prefill is kept apart
                        acc = timings_acc if self.token_ids else prefill_acc
                        for peer, a, b, ms in res.timings:
                            acc.setdefault((peer, a, b), []).append(ms)
                        tok = int(res.token)
                        if tok in eos:
                            self.summary.finish_reason = "stop"
                            break
                        self.token_ids.append(tok)
                        if t_first is None:
                            t_first = time.perf_counter()
                        text += dec.push(tok)
                        lens.append(len(text))
                        hit = min((i for i in (text.find(s) for s in p.stop) if i >= 0), default=-1)
                        if hit >= 0:
                            text = text[:hit]
                            if len(text) > emitted:
                                await self._send.send(GenerationChunk(text[emitted:], [tok]))
                            emitted = len(text)
                            self.summary.finish_reason = "stop"
                            break
                        safe = len(text) - stop_hold(text, p.stop)
                        if checker is not None:
                            safe = min(safe, lens[min(verified_n, len(lens) - 1)])
                        if safe > emitted:
                            await self._send.send(GenerationChunk(text[emitted:safe], [tok]))
                            emitted = safe
                        if len(self.token_ids) >= max_new:
                            self.summary.finish_reason = "length"
                            break
                        res = await sess.step(_ids([tok]), len(self.prompt_ids) + len(self.token_ids) - 1)
                    if checker is not None and c.options.verify_final and verified_n < len(self.token_ids) + 1:
                        await checker.check(sess, sess._step - 1)
                break
            except (HopFailed, VerificationFailed) as exc:
                if isinstance(exc, VerificationFailed):  # drop what was not verified; replay from there
                    keep = min(verified_n, len(self.token_ids))
                    log.warning("verification: %s; keeping %d verified tokens of %d", exc, keep, len(self.token_ids))
                    self.token_ids = self.token_ids[:keep]
                    dec = IncrementalDecoder(self.tok)
                    text, lens = "", [0]
                    for t in self.token_ids:
                        text += dec.push(t)
                        lens.append(len(text))
                    self.summary.finish_reason = "length"
                busy = bool(getattr(exc, "busy", False))  # load shedding, not a fault: no ban
                soft = busy or bool(getattr(exc, "transient", False))  # route around it, but no ban
                if busy:
                    busy_waits += 1
                else:
                    failovers += 1
                if not soft:
                    c.bans.ban(exc.peer)
                log.warning("hop %s failed (%s); failover %d", exc.peer[-8:], exc.reason, failovers)
                if busy and busy_waits > c.options.busy_retries:
                    raise BusyError(f"the swarm is busy ({exc.reason}); retry later") from None
                if failovers > c.options.max_failovers:
                    raise GenerationError(f"gave up after {failovers - 1} failovers: {exc}") from None
                from swarmlm.node.routing import replan_after_failure

                try:  # a route around the failed (or busy) peer
                    route = replan_after_failure(route, exc.peer, c.servers(self.request.model),
                                                 c.n_layers(self.request.model), need_cache_tokens=max_length,
                                                 banned=c.bans.active())
                except NoRouteError:
                    if not soft:
                        raise
                    # no other server: back off (jittered, doubling) and try the same one again
                    waits = max(busy_waits, failovers)
                    await trio.sleep(c.options.busy_backoff_s * 2 ** (waits - 1) * (0.5 + c.rng.random()))
                    route = c.plan(self.request.model, max_length)
        if self.summary.finish_reason != "stop" or emitted < len(text):
            text += dec.flush()
            if len(text) > emitted and not (self.summary.finish_reason == "stop" and p.stop and
                                            any(s in text for s in p.stop)):
                await self._send.send(GenerationChunk(text[emitted:], []))
                emitted = len(text)
        elapsed = time.perf_counter() - t_start
        s = self.summary
        s.text = text[:emitted] if emitted else text
        s.completion_tokens = len(self.token_ids)
        s.failovers = failovers
        s.ttft_ms = ((t_first or time.perf_counter()) - t_start) * 1000.0
        decode_s = time.perf_counter() - (t_first or t_start)
        s.tokens_per_s = (len(self.token_ids) - 1) / decode_s if len(self.token_ids) > 1 and decode_s > 0 else 0.0
        s.route = sorted((HopTiming(peer, a, b, sum(v) / len(v)) for (peer, a, b), v in (timings_acc or prefill_acc).items()
                          if any(h.peer_id == peer for h in route.hops)), key=lambda h: h.start)
        c.recent_routes = (c.recent_routes + [{"model": s.model, "hops": [h.__dict__ for h in s.route],
                                              "tokens_per_s": s.tokens_per_s, "at": time.time()}])[-20:]
        del elapsed

    async def _replay(self, sess: PipelineSession) -> Any:
        """Rebuild the caches of a fresh session exactly as first computed; the next token's answer."""
        n_prompt, gen = len(self.prompt_ids), self.token_ids
        res = await sess.step(_ids(self.prompt_ids), 0, want=not gen)
        for i, t in enumerate(gen):
            res = await sess.step(_ids([t]), n_prompt + i, want=i == len(gen) - 1)
        return res


def _ids(ids: list[int]) -> Any:
    import torch

    return torch.tensor([ids], dtype=torch.long)
