"""The HTTP API through the official ``openai`` client: models, chat and completions, streaming and
not, sampling mapping, the ``swarm`` extension (pipeline and consensus), errors and the bearer token."""

from __future__ import annotations

import openai
import pytest

from helpers_http import ANSWER, MODEL, ROUTE, SCORES, FakeGenerator, api_server, in_thread, openai_client
from swarmlm.node.generation import BusyError, GenerationError, NoRouteError

MSGS = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there swarm"}]


async def test_models_list_and_retrieve():
    async with api_server(FakeGenerator()) as url:
        def call():
            c = openai_client(url)
            return c.models.list(), c.models.retrieve(MODEL)
        models, one = await in_thread(call)
    assert [m.id for m in models.data] == [MODEL]
    assert models.data[0].owned_by == "swarmlm"
    assert models.data[0].model_extra["swarm"] == {"num_layers": 30, "coverage": 1.0, "peers": 3}
    assert one.id == MODEL


async def test_chat_non_streaming_maps_sampling_and_returns_swarm_extension():
    gen = FakeGenerator()
    async with api_server(gen) as url:
        resp = await in_thread(lambda: openai_client(url).chat.completions.create(
            model=MODEL, messages=MSGS, temperature=0.7, top_p=0.9, max_tokens=50, seed=42, stop="\n\n",
            extra_body={"top_k": 40}))
    assert resp.object == "chat.completion"
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.content == ANSWER
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage.prompt_tokens == 5 and resp.usage.completion_tokens == len(ANSWER.split())
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    swarm = resp.model_extra["swarm"]
    assert swarm["mode"] == "pipeline" and swarm["round_id"] is None
    assert swarm["route"] == [{"peer_id": h.peer_id, "start": h.start, "end": h.end, "ms": h.ms} for h in ROUTE]
    assert swarm["ttft_ms"] == 12.5
    (req,) = gen.requests
    assert req.messages == MSGS and req.prompt is None and req.mode == "pipeline"
    p = req.params
    assert (p.temperature, p.top_p, p.top_k, p.seed, p.max_new_tokens, p.stop) == (0.7, 0.9, 40, 42, 50, ["\n\n"])


async def test_chat_streaming_with_usage():
    gen = FakeGenerator()
    async with api_server(gen) as url:
        def call():
            stream = openai_client(url).chat.completions.create(
                model=MODEL, messages=MSGS, stream=True, stream_options={"include_usage": True},
                max_completion_tokens=3, stop=["x", "y"])
            return list(stream)
        chunks = await in_thread(call)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == " ".join(ANSWER.split()[:3])
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0].choices[0].finish_reason == "length"
    assert finish[0].model_extra["swarm"]["route"][0]["peer_id"] == ROUTE[0].peer_id
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 3
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1
    assert gen.requests[0].params.stop == ["x", "y"] and gen.requests[0].params.max_new_tokens == 3


async def test_chat_streaming_without_usage_has_no_usage_chunk():
    async with api_server(FakeGenerator()) as url:
        chunks = await in_thread(lambda: list(openai_client(url).chat.completions.create(
            model=MODEL, messages=MSGS, stream=True)))
    assert all(c.choices for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == ANSWER


async def test_completions_non_streaming_and_streaming():
    gen = FakeGenerator()
    async with api_server(gen) as url:
        def call():
            c = openai_client(url)
            one = c.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=4, temperature=0)
            many = list(c.completions.create(model=MODEL, prompt=["Once"], stream=True,
                                             stream_options={"include_usage": True}))
            return one, many
        one, many = await in_thread(call)
    assert one.object == "text_completion"
    assert one.choices[0].text == " ".join(ANSWER.split()[:4]) and one.choices[0].finish_reason == "length"
    assert one.usage.prompt_tokens == 4 and one.model_extra["swarm"]["mode"] == "pipeline"
    assert "".join(c.choices[0].text for c in many if c.choices) == ANSWER
    assert many[-1].usage.completion_tokens == len(ANSWER.split())
    assert gen.requests[0].prompt == "Once upon a time" and gen.requests[0].params.temperature == 0.0
    assert gen.requests[1].prompt == "Once" and gen.requests[1].params.temperature == 1.0  # OpenAI default


@pytest.mark.parametrize("extra", [{"swarm": {"mode": "consensus", "k": 5}}, {"mode": "consensus"},
                                   {"mode": "consensus", "swarm": {"mode": "consensus", "k": 4}}])
async def test_consensus_mode_returns_scores(extra):
    gen = FakeGenerator()
    async with api_server(gen) as url:
        def call():
            c = openai_client(url)
            one = c.chat.completions.create(model=MODEL, messages=MSGS, extra_body=extra)
            streamed = list(c.chat.completions.create(model=MODEL, messages=MSGS, stream=True, extra_body=extra))
            return one, streamed
        one, streamed = await in_thread(call)
    for swarm in (one.model_extra["swarm"], streamed[-1].model_extra["swarm"]):
        assert swarm["mode"] == "consensus" and swarm["round_id"] == "round-0001" and swarm["scores"] == SCORES
    k = extra.get("swarm", {}).get("k", 3)
    assert [(r.mode, r.consensus_k) for r in gen.requests] == [("consensus", k)] * 2


async def test_generator_errors_map_to_openai_exceptions():
    cases = [(BusyError("all peers busy"), openai.RateLimitError, 429),
             (NoRouteError("no peer serves layers 10-20"), openai.InternalServerError, 503),
             (GenerationError("boom"), openai.InternalServerError, 500)]
    for exc, cls, status in cases:
        async with api_server(FakeGenerator(exc=exc)) as url:
            for stream in (False, True):
                def call():
                    r = openai_client(url).chat.completions.create(model=MODEL, messages=MSGS, stream=stream)
                    return list(r) if stream else r
                with pytest.raises(cls) as info:
                    await in_thread(call)
                assert info.value.status_code == status
                assert str(exc) in info.value.message


async def test_unknown_model_is_404():
    async with api_server(FakeGenerator()) as url:
        def call():
            c = openai_client(url)
            with pytest.raises(openai.NotFoundError) as a:
                c.chat.completions.create(model="no-such-model", messages=MSGS)
            with pytest.raises(openai.NotFoundError) as b:
                c.models.retrieve("no-such-model")
            return a.value, b.value
        a, b = await in_thread(call)
    assert a.code == "model_not_found" and "no-such-model" in a.message
    assert b.code == "model_not_found"


async def test_error_mid_stream_reaches_the_client():
    gen = FakeGenerator(exc=NoRouteError("peer 12D3KooWPeerB went away"), fail_at=2)
    async with api_server(gen) as url:
        def call():
            got = []
            with pytest.raises(openai.APIError) as info:
                for c in openai_client(url).chat.completions.create(model=MODEL, messages=MSGS, stream=True):
                    got.append(c)
            return got, info.value
        got, err = await in_thread(call)
    assert "".join(c.choices[0].delta.content or "" for c in got) == " ".join(ANSWER.split()[:2])
    assert "went away" in err.message


async def test_bad_request_through_client_is_400():
    async with api_server(FakeGenerator(), max_tokens_cap=100) as url:
        def call():
            c = openai_client(url)
            out = []
            for kw in ({"max_tokens": 101}, {"temperature": -1}, {"n": 2}, {"logprobs": True}):
                with pytest.raises(openai.BadRequestError) as info:
                    c.chat.completions.create(model=MODEL, messages=MSGS, **kw)
                out.append(info.value)
            return out
        errs = await in_thread(call)
    assert [e.param for e in errs] == ["max_tokens", "temperature", "n", "logprobs"]
    assert "limit of 100" in errs[0].message


async def test_bearer_token():
    async with api_server(FakeGenerator(), token="s3cret") as url:
        def call():
            with pytest.raises(openai.AuthenticationError) as info:
                openai_client(url, key="wrong").models.list()
            ok = openai_client(url, key="s3cret").chat.completions.create(model=MODEL, messages=MSGS)
            return info.value, ok
        err, ok = await in_thread(call)
    assert err.status_code == 401 and err.code == "invalid_api_key"
    assert ok.choices[0].message.content == ANSWER
