"""Malformed and hostile requests to the HTTP API (raw httpx): each gets an OpenAI-style 4xx/5xx
error body and the node keeps serving."""

from __future__ import annotations

import httpx
import pytest
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from helpers_http import MODEL, FakeGenerator, api_server, in_thread
from swarmlm.errors import SwarmError
from swarmlm.node.generation import BadRequest, BusyError, GenerationError, NoRouteError, UnknownModel

CHAT = "/v1/chat/completions"
OK_MSGS = [{"role": "user", "content": "hi"}]


def chat(**kw):
    return {"model": MODEL, "messages": OK_MSGS, **kw}


_CLIENT = None


def client() -> httpx.Client:
    """One keep-alive client for the module (building one costs ~0.1 s; servers differ by port)."""
    global _CLIENT
    if _CLIENT is None:
        _CLIENT = httpx.Client(trust_env=False, timeout=60)
    return _CLIENT


def post(url: str, path: str, *, json=None, content=None, headers=None) -> httpx.Response:
    return client().post(url + path, json=json, content=content, headers=headers)


def get(url: str, path: str, headers=None) -> httpx.Response:
    return client().get(url + path, headers=headers)


def assert_error(r: httpx.Response, status: int, param: str | None = None, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    if param is not None:
        assert err["param"] == param
    if code is not None:
        assert err["code"] == code
    return err


BAD_CHAT = [
    ({"messages": OK_MSGS}, "model"),
    (chat(model=7), "model"),
    (chat(messages=None), "messages"),
    (chat(messages=[]), "messages"),
    (chat(messages="hi"), "messages"),
    (chat(messages=["hi"]), "messages[0]"),
    (chat(messages=[{"role": "wizard", "content": "x"}]), "messages[0].role"),
    (chat(messages=[{"role": "user", "content": 5}]), "messages[0].content"),
    (chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]), "messages[0].content"),
    (chat(temperature=-0.5), "temperature"),
    (chat(temperature="hot"), "temperature"),
    (chat(temperature=True), "temperature"),
    (chat(temperature=2.5), "temperature"),
    (chat(top_p=0), "top_p"),
    (chat(top_p=1.5), "top_p"),
    (chat(top_k=-1), "top_k"),
    (chat(top_k=1.5), "top_k"),
    (chat(max_tokens=0), "max_tokens"),
    (chat(max_tokens=10**12), "max_tokens"),
    (chat(max_tokens="10"), "max_tokens"),
    (chat(max_completion_tokens=5000), "max_completion_tokens"),
    (chat(max_tokens=5, max_completion_tokens=6), "max_completion_tokens"),
    (chat(seed=-1), "seed"),
    (chat(seed=1 << 64), "seed"),
    (chat(stop=""), "stop"),
    (chat(stop=["a", 1]), "stop"),
    (chat(stop=["a", "b", "c", "d", "e"]), "stop"),
    (chat(n=2), "n"),
    (chat(n=0), "n"),
    (chat(logprobs=True), "logprobs"),
    (chat(top_logprobs=3), "top_logprobs"),
    (chat(tools=[{"type": "function", "function": {"name": "f"}}]), "tools"),
    (chat(response_format={"type": "json_object"}), "response_format"),
    (chat(logit_bias={"50256": -100}), "logit_bias"),
    (chat(presence_penalty=3), "presence_penalty"),
    (chat(stream="yes"), "stream"),
    (chat(stream_options={"include_usage": True}), "stream_options"),
    (chat(stream=True, stream_options={"include_usage": "yes"}), "include_usage"),
    (chat(stream=True, stream_options=[1]), "stream_options"),
    (chat(mode="anarchy"), "mode"),
    (chat(swarm={"mode": "vote"}), "swarm.mode"),
    (chat(swarm={"mode": "consensus", "k": 1}), "k"),
    (chat(swarm={"mode": "consensus", "k": 1000}), "k"),
    (chat(swarm={"mode": "consensus", "kk": 3}), "swarm"),
    (chat(swarm="consensus"), "swarm"),
    (chat(mode="pipeline", swarm={"mode": "consensus"}), "mode"),
    (chat(messages=[{"role": "user", "content": "x"}] * 257), "messages"),
]


async def test_bad_chat_bodies_get_400_with_param():
    gen = FakeGenerator()
    async with api_server(gen, max_tokens_cap=4096) as url:
        def call():
            return [post(url, CHAT, json=body) for body, _ in BAD_CHAT]
        responses = await in_thread(call)
        ok = await in_thread(lambda: post(url, CHAT, json=chat()))
    for (body, param), r in zip(BAD_CHAT, responses):
        err = assert_error(r, 400, param)
        assert err["type"] == "invalid_request_error"
    assert len(gen.requests) == 1  # only the well-formed request reached the generator
    assert ok.status_code == 200


BAD_COMPLETION = [
    ({"model": MODEL}, "prompt"),
    ({"model": MODEL, "prompt": 5}, "prompt"),
    ({"model": MODEL, "prompt": ["a", "b"]}, "prompt"),
    ({"model": MODEL, "prompt": [1, 2, 3]}, "prompt"),
    ({"model": MODEL, "prompt": "x", "echo": True}, "echo"),
    ({"model": MODEL, "prompt": "x", "logprobs": 2}, "logprobs"),
    ({"model": MODEL, "prompt": "x", "best_of": 3}, "best_of"),
    ({"model": MODEL, "prompt": "x", "suffix": "end"}, "suffix"),
]


async def test_bad_completion_bodies_get_400():
    async with api_server(FakeGenerator()) as url:
        responses = await in_thread(lambda: [post(url, "/v1/completions", json=b) for b, _ in BAD_COMPLETION])
    for (body, param), r in zip(BAD_COMPLETION, responses):
        assert_error(r, 400, param)


RAW_BODIES = [b"", b"   ", b"{not json", b"[1, 2, 3]", b'"just a string"', b"null", b"\xff\xfe\xfa",
              b"[" * 100_000 + b"]" * 100_000, b'{"model": "m", "max_tokens": 1' + b"0" * 5000 + b"}",
              b'{"model": "%s", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}' % MODEL.encode()]


async def test_invalid_json_and_non_objects_get_400():
    async with api_server(FakeGenerator()) as url:
        responses = await in_thread(lambda: [post(url, CHAT, content=b, headers={"content-type": "application/json"})
                                             for b in RAW_BODIES])
        still = await in_thread(lambda: post(url, CHAT, json=chat()))
    for r in responses:
        assert_error(r, 400)
    assert still.status_code == 200


async def test_oversized_body_is_413_and_node_keeps_serving():
    async with api_server(FakeGenerator(), max_body_bytes=64 * 1024) as url:
        def call():
            big = chat(messages=[{"role": "user", "content": "x" * (200 * 1024)}])
            r1 = post(url, CHAT, json=big)

            def chunks():  # no content-length: chunked transfer encoding
                for _ in range(40):
                    yield b"x" * 4096
            r2 = post(url, CHAT, content=chunks())
            return r1, r2, post(url, CHAT, json=chat())
        r1, r2, r3 = await in_thread(call)
    assert_error(r1, 413, code="request_too_large")
    assert_error(r2, 413, code="request_too_large")
    assert r3.status_code == 200


async def test_unknown_paths_and_methods_get_json_errors():
    async with api_server(FakeGenerator()) as url:
        def call():
            return get(url, "/v1/nothing"), get(url, CHAT), post(url, "/v1/models", json={})
        r404, r405a, r405b = await in_thread(call)
    assert_error(r404, 404, code="not_found")
    assert_error(r405a, 405, code="method_not_allowed")
    assert_error(r405b, 405)


@pytest.mark.parametrize("exc,status,etype,code", [
    (BadRequest("prompt too long for the model (2049 > 2048 tokens)"), 400, "invalid_request_error", None),
    (UnknownModel("unknown model 'x'"), 404, "invalid_request_error", "model_not_found"),
    (BusyError("every peer is at capacity"), 429, "rate_limit_error", None),
    (NoRouteError("no live peer serves layers 12-29"), 503, "service_unavailable", None),
    (GenerationError("the generation failed"), 500, "server_error", None),
    (SwarmError("the swarm is unhappy"), 500, "server_error", None),
])
async def test_generator_errors_map_to_status(exc, status, etype, code):
    async with api_server(FakeGenerator(exc=exc)) as url:
        def call():
            return [post(url, path, json={**body, "stream": stream})
                    for path, body in ((CHAT, chat()), ("/v1/completions", {"model": MODEL, "prompt": "p"}))
                    for stream in (False, True)]
        responses = await in_thread(call)
    for r in responses:
        err = assert_error(r, status, code=code)
        assert err["type"] == etype and err["message"] == str(exc)


async def test_unexpected_exception_is_500_without_details_and_node_survives():
    gen = FakeGenerator(exc=RuntimeError("secret internal detail"))
    async with api_server(gen) as url:
        r = await in_thread(lambda: post(url, CHAT, json=chat()))
        gen.exc = None
        ok = await in_thread(lambda: post(url, CHAT, json=chat()))
    err = assert_error(r, 500)
    assert "secret" not in err["message"] and err["type"] == "server_error"
    assert ok.status_code == 200


async def test_models_error_and_stream_error_event():
    async with api_server(FakeGenerator(models_exc=NoRouteError("not connected to any peer"))) as url:
        r = await in_thread(get, url, "/v1/models")
    assert_error(r, 503)
    gen = FakeGenerator(exc=RuntimeError("hidden"), fail_at=1)
    async with api_server(gen) as url:
        r = await in_thread(lambda: post(url, CHAT, json=chat(stream=True)))
    assert r.status_code == 200
    events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    assert '"error"' in events[-1] and "hidden" not in events[-1] and "[DONE]" not in events


async def test_token_auth_and_extra_routes():
    async def health(request):
        return PlainTextResponse("ok")

    extra = [Route("/", health), Route("/metrics", health)]
    async with api_server(FakeGenerator(), token="tok-123", extra_routes=extra, open_paths=("/",)) as url:
        def call():
            h = {"authorization": "Bearer tok-123"}
            return {
                "none": get(url, "/v1/models"),
                "wrong": get(url, "/v1/models", {"authorization": "Bearer tok-124"}),
                "prefix": get(url, "/v1/models", {"authorization": "Bearer tok-12"}),
                "basic": get(url, "/v1/models", {"authorization": "Basic tok-123"}),
                "ok": get(url, "/v1/models", h),
                "chat_none": post(url, CHAT, json=chat()),
                "chat_ok": post(url, CHAT, json=chat(), headers=h),
                "open": get(url, "/"),
                "metrics_none": get(url, "/metrics"),
                "metrics_ok": get(url, "/metrics", h),
            }
        r = await in_thread(call)
    for key in ("none", "wrong", "prefix", "basic", "chat_none", "metrics_none"):
        assert_error(r[key], 401, code="invalid_api_key")
        assert r[key].headers["www-authenticate"] == "Bearer"
    assert r["ok"].status_code == 200 and r["chat_ok"].status_code == 200
    assert r["open"].text == "ok" and r["metrics_ok"].text == "ok"
