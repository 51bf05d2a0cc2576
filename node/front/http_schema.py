"""OpenAI-compatible request parsing and response shaping for the HTTP API (no I/O).

- ``ApiError``: a 4xx/5xx with an OpenAI-style body ``{"error": {message, type, param, code}}``;
  ``api_error_from(exc)`` maps a ``GenerationError`` / ``SwarmError`` / anything else to one.
- ``Limits``: the node's caps (``max_tokens_cap``, ``default_max_tokens``, ``max_messages``, ...).
- ``parse_chat(body, limits)`` / ``parse_completion(body, limits)``: a decoded JSON body ->
  ``ParsedRequest`` (a ``GenerationRequest`` plus the stream flags), or ``ApiError(400)``.
- ``completion_body`` / ``chunk_body`` / ``usage_dict`` / ``swarm_extension``: the response JSON.
- ``dumps``: compact JSON with non-finite floats turned into ``null``.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from dataclasses import dataclass
from typing import Any

from swarmlm.errors import SwarmError
from swarmlm.models.errors import ModelError
from swarmlm.models.sampling import SamplingParams
from swarmlm.node.generation import (
    MODES, GenerationError, GenerationRequest, GenerationSummary, UnknownModel,
)

MAX_STOP = 4  # as OpenAI
MAX_CONSENSUS_K = 16
MAX_SEED = (1 << 63) - 1
CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _leaf(exc: BaseException) -> BaseException:
    """The first SwarmError inside (nested) exception groups, else the first leaf."""
    if isinstance(exc, BaseExceptionGroup):
        leaves = [_leaf(e) for e in exc.exceptions]
        return next((e for e in leaves if isinstance(e, (SwarmError, ApiError))), leaves[0])
    return exc


def api_error_from(exc: BaseException) -> ApiError:
    exc = _leaf(exc)
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, GenerationError):
        code = "model_not_found" if isinstance(exc, UnknownModel) else None
        return ApiError(exc.status, str(exc) or type(exc).__name__, type=exc.type, code=code)
    if isinstance(exc, ModelError) and type(exc).__name__ == "SamplingError":
        return ApiError(400, str(exc))
    if isinstance(exc, SwarmError):
        return ApiError(500, str(exc) or type(exc).__name__, type="server_error")
    return ApiError(500, "internal error in the node (see its log)", type="server_error")


@dataclass
class Limits:
    max_tokens_cap: int = 4096
    default_max_tokens: int = 256
    max_messages: int = 256


@dataclass
class ParsedRequest:
    request: GenerationRequest
    stream: bool = False
    include_usage: bool = False


def _bad(message: str, param: str | None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


def _number(body: dict, key: str, lo: float, hi: float, *, lo_open: bool = False) -> float | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _bad(f"'{key}' must be a number, got {type(v).__name__}", key, "invalid_type")
    if not math.isfinite(v) or v > hi or v < lo or (lo_open and v == lo):
        rng = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
        raise _bad(f"'{key}' must be in {rng}, got {v!r}", key)
    return float(v)


def _integer(body: dict, key: str, lo: int, hi: int, *, hi_msg: str | None = None) -> int | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, float) and math.isfinite(v) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise _bad(f"'{key}' must be an integer, got {type(v).__name__}", key, "invalid_type")
    if v > hi and hi_msg:
        raise _bad(hi_msg.format(key=key, v=v, hi=hi), key)
    if not lo <= v <= hi:
        raise _bad(f"'{key}' must be an integer in [{lo}, {hi}], got {v}", key)
    return v


def _bool(body: dict, key: str) -> bool | None:
    v = body.get(key)
    if v is not None and not isinstance(v, bool):
        raise _bad(f"'{key}' must be a boolean, got {type(v).__name__}", key, "invalid_type")
    return v


def _stop(body: dict) -> list[str]:
    v = body.get("stop")
    if v is None:
        return []
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or not all(isinstance(s, str) and s for s in items):
        raise _bad("'stop' must be a non-empty string or a list of non-empty strings", "stop", "invalid_type")
    if len(items) > MAX_STOP:
        raise _bad(f"'stop' may hold at most {MAX_STOP} sequences, got {len(items)}", "stop")
    return list(items)


def _unsupported(message: str, param: str) -> ApiError:
    return ApiError(400, message, param=param, code="unsupported_parameter")


def _sampling(body: dict, limits: Limits) -> SamplingParams:
    temperature = _number(body, "temperature", 0.0, 2.0)
    top_p = _number(body, "top_p", 0.0, 1.0, lo_open=True)
    top_k = _integer(body, "top_k", 0, 1 << 20)
    seed = _integer(body, "seed", 0, MAX_SEED)
    cap_msg = "'{key}' is {v}, above this node's limit of {hi} tokens"
    mt = _integer(body, "max_tokens", 1, limits.max_tokens_cap, hi_msg=cap_msg)
    mct = _integer(body, "max_completion_tokens", 1, limits.max_tokens_cap, hi_msg=cap_msg)
    if mt is not None and mct is not None and mt != mct:
        raise _bad("give either 'max_tokens' or 'max_completion_tokens', not two different values",
                   "max_completion_tokens")
    max_new = mct if mct is not None else mt
    if max_new is None:
        max_new = min(limits.default_max_tokens, limits.max_tokens_cap)
    params = SamplingParams(
        temperature=1.0 if temperature is None else temperature,  # OpenAI's default
        top_k=top_k or 0, top_p=1.0 if top_p is None else top_p, seed=seed,
        max_new_tokens=max_new, stop=_stop(body))
    return params.validate()


def _common(body: Any, limits: Limits, *, chat: bool) -> tuple[str, SamplingParams, str, int, bool, bool]:
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object", None, "invalid_type")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise _bad("'model' is required and must be a non-empty string", "model",
                   "missing_required_parameter" if model is None else "invalid_type")
    n = _integer(body, "n", 1, 1 << 20)
    if n is not None and n != 1:
        raise _unsupported("'n' > 1 is not supported: ask for one choice and repeat the request", "n")
    if chat:
        if _bool(body, "logprobs"):
            raise _unsupported("'logprobs' is not supported by this node", "logprobs")
        if body.get("top_logprobs") is not None:
            raise _unsupported("'top_logprobs' is not supported by this node", "top_logprobs")
        for key in ("tools", "functions"):
            if body.get(key):
                raise _unsupported(f"'{key}' (tool calling) is not supported by this node", key)
        if body.get("tool_choice") not in (None, "none"):
            raise _unsupported("'tool_choice' is not supported by this node", "tool_choice")
        rf = body.get("response_format")
        if rf is not None and rf != {"type": "text"}:
            raise _unsupported("only 'response_format' {\"type\": \"text\"} is supported", "response_format")
    else:
        if body.get("logprobs") not in (None, 0, False):
            raise _unsupported("'logprobs' is not supported by this node", "logprobs")
        if _bool(body, "echo"):
            raise _unsupported("'echo' is not supported by this node", "echo")
        if body.get("suffix"):
            raise _unsupported("'suffix' is not supported by this node", "suffix")
        best_of = _integer(body, "best_of", 1, 1 << 20)
        if best_of not in (None, 1):
            raise _unsupported("'best_of' > 1 is not supported", "best_of")
    if body.get("logit_bias"):
        raise _unsupported("'logit_bias' is not supported by this node", "logit_bias")
    for key in ("presence_penalty", "frequency_penalty"):
        _number(body, key, -2.0, 2.0)  # validated, then ignored
    stream = bool(_bool(body, "stream"))
    include_usage = False
    so = body.get("stream_options")
    if so is not None:
        if not stream:
            raise _bad("'stream_options' is only allowed when 'stream' is true", "stream_options")
        if not isinstance(so, dict) or set(so) - {"include_usage", "include_obfuscation"}:
            raise _bad("'stream_options' must be an object like {\"include_usage\": true}", "stream_options")
        include_usage = bool(_bool(so, "include_usage"))
    mode, k = _swarm(body)
    return model, _sampling(body, limits), mode, k, stream, include_usage


def _swarm(body: dict) -> tuple[str, int]:
    ext = body.get("swarm")
    if ext is None:
        ext = {}
    if not isinstance(ext, dict):
        raise _bad("'swarm' must be an object like {\"mode\": \"consensus\", \"k\": 3}", "swarm", "invalid_type")
    unknown = sorted(set(ext) - {"mode", "k", "check_fraction"})
    if unknown:
        raise _bad(f"unknown key(s) in 'swarm': {', '.join(map(str, unknown))} (known: mode, k, check_fraction)",
                   "swarm")
    top, inner = body.get("mode"), ext.get("mode")
    for where, v in (("mode", top), ("swarm.mode", inner)):
        if v is not None and v not in MODES:
            raise _bad(f"'{where}' must be one of {', '.join(MODES)}, got {v!r}", where)
    if top is not None and inner is not None and top != inner:
        raise _bad(f"'mode' ({top}) and 'swarm.mode' ({inner}) disagree", "mode")
    k = _integer(ext, "k", 2, MAX_CONSENSUS_K)
    return inner or top or "pipeline", 3 if k is None else k


def _check_fraction(body: dict) -> float | None:
    """``swarm.check_fraction``: verification for this request (0 off, 1 every step; docs/RELIABILITY.md)."""
    ext = body.get("swarm")
    return _number(ext, "check_fraction", 0.0, 1.0) if isinstance(ext, dict) else None


def _content(msg: dict, i: int) -> str:
    content = msg.get("content")
    if content is None and msg.get("role") == "assistant":
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise _unsupported(f"messages[{i}].content: only text parts are supported", f"messages[{i}].content")
            parts.append(part["text"])
        return "".join(parts)
    raise _bad(f"messages[{i}].content must be a string or a list of text parts", f"messages[{i}].content",
               "invalid_type")


def parse_chat(body: Any, limits: Limits) -> ParsedRequest:
    model, params, mode, k, stream, usage = _common(body, limits, chat=True)
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise _bad("'messages' is required and must be a non-empty list", "messages",
                   "missing_required_parameter" if msgs is None else "invalid_type")
    if len(msgs) > limits.max_messages:
        raise _bad(f"too many messages: {len(msgs)} > {limits.max_messages}", "messages")
    out: list[dict[str, str]] = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise _bad(f"messages[{i}] must be an object with 'role' and 'content'", f"messages[{i}]", "invalid_type")
        role = m.get("role")
        if role not in CHAT_ROLES:
            raise _bad(f"messages[{i}].role must be one of {', '.join(CHAT_ROLES)}, got {role!r}",
                       f"messages[{i}].role")
        out.append({"role": CHAT_ROLES[role], "content": _content(m, i)})
    req = GenerationRequest(model=model, messages=out, params=params, mode=mode, consensus_k=k,
                            check_fraction=_check_fraction(body))
    return ParsedRequest(req, stream, usage)


def parse_completion(body: Any, limits: Limits) -> ParsedRequest:
    model, params, mode, k, stream, usage = _common(body, limits, chat=False)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        if isinstance(prompt, list) and len(prompt) > 1 and all(isinstance(p, str) for p in prompt):
            raise _unsupported("a batch of prompts is not supported: send one prompt per request", "prompt")
        if isinstance(prompt, list) and prompt and all(isinstance(p, int) for p in prompt):
            raise _unsupported("token-id prompts are not supported: send the prompt as a string", "prompt")
        raise _bad("'prompt' is required and must be a string", "prompt",
                   "missing_required_parameter" if prompt is None else "invalid_type")
    req = GenerationRequest(model=model, prompt=prompt, params=params, mode=mode, consensus_k=k,
                            check_fraction=_check_fraction(body))
    return ParsedRequest(req, stream, usage)


# -- responses -------------------------------------------------------------------------------------

def new_id(chat: bool) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)


def now() -> int:
    return int(time.time())


def usage_dict(s: GenerationSummary) -> dict[str, int]:
    return {"prompt_tokens": s.prompt_tokens, "completion_tokens": s.completion_tokens,
            "total_tokens": s.prompt_tokens + s.completion_tokens}


def swarm_extension(s: GenerationSummary, mode: str) -> dict[str, Any]:
    d = s.to_dict()
    for key in ("model", "text", "prompt_tokens", "completion_tokens", "finish_reason"):
        d.pop(key, None)
    return {"mode": mode, **d}


def completion_body(chat: bool, rid: str, created: int, model: str, text: str, s: GenerationSummary,
                    mode: str) -> dict[str, Any]:
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text},
                  "finish_reason": s.finish_reason, "logprobs": None}
    else:
        choice = {"index": 0, "text": text, "finish_reason": s.finish_reason, "logprobs": None}
    return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": created,
            "model": model, "choices": [choice], "usage": usage_dict(s), "swarm": swarm_extension(s, mode)}


def chunk_body(chat: bool, rid: str, created: int, model: str, *, text: str | None = None,
               role: bool = False, finish: str | None = None, usage_null: bool = False) -> dict[str, Any]:
    if chat:
        delta: dict[str, Any] = {}
        if role:
            delta["role"] = "assistant"
            delta["content"] = ""
        if text is not None:
            delta["content"] = text
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
    else:
        choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
    body = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion", "created": created,
            "model": model, "choices": [choice]}
    if usage_null:
        body["usage"] = None
    return body


def _finite(o: Any) -> Any:
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {str(k): _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    if isinstance(o, (str, int, bool)) or o is None:
        return o
    if isinstance(o, bytes):
        return o.hex()
    return str(o)


def dumps(obj: Any) -> bytes:
    return json.dumps(_finite(obj), ensure_ascii=False, separators=(",", ":")).encode()
