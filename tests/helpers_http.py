"""Fakes and helpers for the HTTP API tests: fake ``Generator``s and an in-process server."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import trio

from swarmlm.node.generation import (
    GenerationChunk, GenerationRequest, GenerationSummary, HopTiming, ModelCard, UnknownModel,
)
from swarmlm.node.front.http_api import create_app, serve_http

MODEL = "smollm2-135m"
ANSWER = "The swarm answers in several small words"
ROUTE = [HopTiming("12D3KooWPeerA", 0, 15, 1.5), HopTiming("12D3KooWPeerB", 15, 30, 2.25)]
SCORES = [{"peer_id": "12D3KooWPeerA", "score": 0.7, "text_hash": "aa"},
          {"peer_id": "12D3KooWPeerB", "score": 0.3, "text_hash": "bb"}]


class FakeGeneration:
    """Streams the words of ``answer`` (one chunk each) up to ``max_new_tokens``."""

    def __init__(self, request: GenerationRequest, answer: str, fail_at: int | None, exc: BaseException | None,
                 hold: trio.Event | None, waiting: trio.Event) -> None:
        self.request, self.answer, self.fail_at, self.exc, self.hold = request, answer, fail_at, exc, hold
        self.waiting = waiting  # set when the first chunk has been consumed and the fake waits on ``hold``
        self.summary = GenerationSummary(model=request.model)

    def __aiter__(self) -> AsyncIterator[GenerationChunk]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[GenerationChunk]:
        words = self.answer.split(" ")
        limit = self.request.params.max_new_tokens
        for i, word in enumerate(words[:limit]):
            if self.fail_at == i:
                assert self.exc is not None
                raise self.exc
            yield GenerationChunk(text=(" " if i else "") + word, token_ids=[i])
            if self.hold is not None:
                self.waiting.set()
                await self.hold.wait()
            await trio.sleep(0)
        s = self.summary
        s.completion_tokens = min(len(words), limit)
        s.finish_reason = "length" if limit < len(words) else "stop"
        s.text = " ".join(words[:limit])
        prompt = self.request.prompt or " ".join(m["content"] for m in self.request.messages or [])
        s.prompt_tokens = len(prompt.split())
        s.route = list(ROUTE)
        s.ttft_ms, s.tokens_per_s = 12.5, 40.0
        if self.request.mode == "consensus":
            s.round_id, s.scores = "round-0001", [dict(x) for x in SCORES]


class FakeGenerator:
    """A ``Generator`` over one model; records requests; can fail on enter or at chunk ``fail_at``."""

    def __init__(self, answer: str = ANSWER, *, exc: BaseException | None = None, fail_at: int | None = None,
                 hold: trio.Event | None = None, models_exc: BaseException | None = None) -> None:
        self.answer, self.exc, self.fail_at, self.hold, self.models_exc = answer, exc, fail_at, hold, models_exc
        self.requests: list[GenerationRequest] = []
        self.entered = 0
        self.exited = trio.Event()
        self.waiting = trio.Event()

    async def list_models(self) -> list[ModelCard]:
        if self.models_exc is not None:
            raise self.models_exc
        return [ModelCard(id=MODEL, num_layers=30, coverage=1.0, peers=3)]

    @asynccontextmanager
    async def generate(self, request: GenerationRequest) -> AsyncIterator[FakeGeneration]:
        self.requests.append(request)
        if request.model != MODEL:
            raise UnknownModel(f"unknown model {request.model!r}; this swarm serves {MODEL}")
        if self.exc is not None and self.fail_at is None:
            raise self.exc
        self.entered += 1
        try:
            yield FakeGeneration(request, self.answer, self.fail_at, self.exc, self.hold, self.waiting)
        finally:
            self.exited.set()


@asynccontextmanager
async def api_server(generator: Any, **kw: Any) -> AsyncIterator[str]:
    """Serve ``create_app(generator, **kw)`` on 127.0.0.1:<free port>; yields the base URL."""
    app = create_app(generator, **kw)
    async with trio.open_nursery() as nursery:
        addr = await nursery.start(serve_http, app, "127.0.0.1", 0)
        try:
            yield addr.url
        finally:
            nursery.cancel_scope.cancel()


def openai_client(url: str, key: str = "sk-anything") -> Any:
    import httpx
    import openai

    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60,
                         http_client=httpx.Client(trust_env=False, timeout=60))


async def in_thread(fn: Any, *args: Any) -> Any:
    return await trio.to_thread.run_sync(fn, *args)
