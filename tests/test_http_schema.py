"""Request parsing and error mapping of the HTTP API without a server."""

from __future__ import annotations

import pytest

from swarmlm.errors import SwarmError
from swarmlm.models.sampling import SamplingError
from swarmlm.node.generation import BusyError, UnknownModel
from swarmlm.node.front.http_schema import ApiError, Limits, api_error_from, dumps, parse_chat, parse_completion


def test_chat_defaults_roles_and_text_parts():
    body = {"model": "m", "messages": [
        {"role": "developer", "content": "rules"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": None, "name": "bot"}], "user": "ignored", "presence_penalty": 0.5}
    p = parse_chat(body, Limits(max_tokens_cap=100, default_max_tokens=256))
    r = p.request
    assert r.messages == [{"role": "system", "content": "rules"}, {"role": "user", "content": "ab"},
                          {"role": "assistant", "content": ""}]
    assert r.params.max_new_tokens == 100  # the default is capped too
    assert (r.params.temperature, r.params.top_p, r.params.top_k, r.params.seed) == (1.0, 1.0, 0, None)
    assert (r.mode, r.consensus_k, p.stream, p.include_usage) == ("pipeline", 3, False, False)


def test_completion_prompt_forms_and_equal_token_limits():
    p = parse_completion({"model": "m", "prompt": ["one"], "max_tokens": 7, "max_completion_tokens": 7.0,
                          "stream": True, "stream_options": {"include_usage": True}, "mode": "consensus",
                          "swarm": {"k": 2}}, Limits())
    assert p.request.prompt == "one" and p.request.params.max_new_tokens == 7
    assert (p.request.mode, p.request.consensus_k, p.stream, p.include_usage) == ("consensus", 2, True, True)


def test_error_mapping_unwraps_groups_and_hides_internal_errors():
    assert api_error_from(ExceptionGroup("x", [ValueError("v"), BusyError("busy")])).status == 429
    e = api_error_from(BaseExceptionGroup("x", [ExceptionGroup("y", [UnknownModel("nope")])]))
    assert (e.status, e.code, e.message) == (404, "model_not_found", "nope")
    assert api_error_from(SamplingError("top_p must be in (0, 1]")).status == 400
    assert api_error_from(SwarmError("actionable")).message == "actionable"
    hidden = api_error_from(KeyError("internal"))
    assert hidden.status == 500 and "internal" not in hidden.message.replace("internal error", "")
    assert api_error_from(ApiError(413, "big")).status == 413


def test_dumps_is_strict_json():
    assert dumps({"a": float("nan"), "b": [float("inf"), 1.5], "c": b"\x01", "d": (1, 2)}) == \
        b'{"a":null,"b":[null,1.5],"c":"01","d":[1,2]}'


@pytest.mark.parametrize("body", [None, [], "x", {"model": "m", "messages": [{"role": "user"}]}])
def test_parse_rejects(body):
    with pytest.raises(ApiError) as info:
        parse_chat(body, Limits())
    assert info.value.status == 400
