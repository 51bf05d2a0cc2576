"""The node's OpenAI-compatible HTTP API: a starlette app and a hypercorn (trio worker) runner.

- ``create_app(generator, *, token=None, extra_routes=None, ...) -> Starlette``: ``GET /v1/models``,
  ``GET /v1/models/{id}``, ``POST /v1/chat/completions``, ``POST /v1/completions`` (JSON or SSE
  streaming), OpenAI-style errors for every failure, an optional bearer token (constant-time
  compare), a request body limit (413), JSON bodies only (415), ``Host``/``Origin`` checks against
  DNS rebinding and cross-site requests (``http_guard``), plus any ``extra_routes`` (health page, metrics, ...).
- ``serve_http(app, host, port, *, shutdown_trigger=None, task_status=...)``: binds the socket itself
  (clear ``HttpServeError`` when it cannot), hands it to ``hypercorn.trio.serve`` as ``fd://N`` and
  reports the bound ``HttpAddress(host, port)`` via ``task_status`` (real port when 0 was asked).
  Cancelling the surrounding scope stops it; ``shutdown_trigger`` returning stops it gracefully.

Request parsing and response shapes live in ``swarmlm.node.front.http_schema``; see docs/HTTP_API.md.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from swarmlm.errors import SwarmError
from swarmlm.node.generation import Generator, GenerationSummary, ModelCard
from swarmlm.node.front.http_guard import HostOriginGuard
from swarmlm.node.front.http_schema import (
    ApiError, Limits, ParsedRequest, api_error_from, chunk_body, completion_body, dumps, new_id, now,
    parse_chat, parse_completion, swarm_extension, usage_dict,
)

log = logging.getLogger("swarmlm.http")

DEFAULT_MAX_BODY = 1 << 20
DRAIN_LIMIT = 16 << 20  # read (and drop) up to this much of an oversized body so the client sees the 413
SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
               (b"x-accel-buffering", b"no")]


class HttpServeError(SwarmError):
    """The HTTP API could not bind its address."""


class _JSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        return dumps(content)


def error_response(err: ApiError, headers: dict[str, str] | None = None) -> Response:
    return _JSON(err.body(), status_code=err.status, headers=headers)


# -- auth ------------------------------------------------------------------------------------------

class BearerAuth:
    """ASGI middleware: every HTTP path except ``open_paths`` needs ``Authorization: Bearer <token>``."""

    def __init__(self, app: Any, token: str, open_paths: frozenset[str] = frozenset()) -> None:
        self.app, self.open_paths = app, open_paths
        self.digest = hashlib.sha256(token.encode()).digest()

    def allowed(self, headers: list[tuple[bytes, bytes]]) -> bool:
        value = b""
        for k, v in headers:
            if k.lower() == b"authorization":
                value = v
        scheme, _, cred = value.strip().partition(b" ")
        ok = hmac.compare_digest(hashlib.sha256(cred.strip()).digest(), self.digest)
        return ok and scheme.lower() == b"bearer"

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] not in self.open_paths and not self.allowed(scope["headers"]):
            err = ApiError(401, "missing or wrong API key: send 'Authorization: Bearer <token>'",
                           code="invalid_api_key")
            await error_response(err, {"www-authenticate": "Bearer"})(scope, receive, send)
            return
        await self.app(scope, receive, send)


# -- request body ------------------------------------------------------------------------------------

async def read_json(request: Request, max_bytes: int) -> Any:
    """The body decoded as JSON; ``ApiError`` 413 above ``max_bytes``, 400 when it is not JSON."""
    too_big = ApiError(413, f"request body larger than {max_bytes} bytes", code="request_too_large")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        if int(declared) <= DRAIN_LIMIT:
            async for _ in request.stream():
                pass
        raise too_big
    buf = bytearray()
    seen = 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > max_bytes:
            if seen > DRAIN_LIMIT:
                break
            continue
        buf += chunk
    if seen > max_bytes:
        raise too_big
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise ApiError(415, f"send the body as JSON with 'Content-Type: application/json' (got {ctype or 'none'!r})",
                       code="unsupported_media_type")
    if not buf.strip():
        raise ApiError(400, "the request body is empty: send a JSON object", code="invalid_json")
    try:
        return json.loads(bytes(buf))
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {str(exc)[:200]}", code="invalid_json") from None


# -- generation responses ------------------------------------------------------------------------------

async def _watch_disconnect(receive: Any, scope: trio.CancelScope) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return


async def _no_receive() -> dict:
    raise RuntimeError("a generation response does not read the request")


class GenerationResponse(Response):
    """Runs one generation while the client is connected and sends it as JSON or as SSE chunks.

    Errors before the first byte go out as an OpenAI error with the mapped status; errors mid-stream as
    a final ``data: {"error": ...}`` event. A client disconnect cancels the generation.
    """

    def __init__(self, generator: Generator, parsed: ParsedRequest, chat: bool) -> None:
        self.generator, self.parsed, self.chat = generator, parsed, chat
        self.background = None
        self.rid, self.created = new_id(chat), now()
        self.model = parsed.request.model
        self.started = False

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_disconnect, receive, nursery.cancel_scope)
            try:
                await self._run(scope, send)
            finally:
                nursery.cancel_scope.cancel()

    async def _run(self, scope: dict, send: Any) -> None:
        try:
            async with self.generator.generate(self.parsed.request) as generation:
                if self.parsed.stream:
                    await self._stream(generation, send)
                else:
                    texts = [chunk.text async for chunk in generation]
                    s: GenerationSummary = generation.summary
                    text = "".join(texts) or s.text
                    body = completion_body(self.chat, self.rid, self.created, s.model or self.model, text, s,
                                           self.parsed.request.mode)
                    await _JSON(body)(scope, _no_receive, send)
                    self.started = True
        except Exception as exc:  # noqa: BLE001 - every failure becomes an OpenAI error
            err = api_error_from(exc)
            if err.status >= 500:
                log.warning("generation failed (%s): %s", err.status, exc, exc_info=not isinstance(exc, SwarmError))
            if not self.started:
                await error_response(err)(scope, _no_receive, send)
            else:
                await self._event(send, err.body())
                await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _event(self, send: Any, obj: Any) -> None:
        payload = b"data: " + (obj if isinstance(obj, bytes) else dumps(obj)) + b"\n\n"
        await send({"type": "http.response.body", "body": payload, "more_body": True})

    async def _begin(self, send: Any) -> None:
        if not self.started:
            await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
            self.started = True
            if self.chat:
                await self._chunk(send, role=True)

    async def _chunk(self, send: Any, **kw: Any) -> None:
        await self._event(send, chunk_body(self.chat, self.rid, self.created, self.model,
                                           usage_null=self.parsed.include_usage, **kw))

    async def _stream(self, generation: Any, send: Any) -> None:
        sent_text = False
        async for chunk in generation:
            if not chunk.text:
                continue
            await self._begin(send)
            await self._chunk(send, text=chunk.text)
            sent_text = True
        s: GenerationSummary = generation.summary
        await self._begin(send)
        if not sent_text and s.text:
            await self._chunk(send, text=s.text)
        last = chunk_body(self.chat, self.rid, self.created, self.model, finish=s.finish_reason,
                          usage_null=self.parsed.include_usage)
        last["swarm"] = swarm_extension(s, self.parsed.request.mode)
        await self._event(send, last)
        if self.parsed.include_usage:
            tail = {"id": self.rid, "object": last["object"], "created": self.created, "model": self.model,
                    "choices": [], "usage": usage_dict(s)}
            await self._event(send, tail)
        await self._event(send, b"[DONE]")
        await send({"type": "http.response.body", "body": b"", "more_body": False})


# -- the app -------------------------------------------------------------------------------------------

def _model_obj(card: ModelCard) -> dict[str, Any]:
    return {"id": card.id, "object": "model", "created": 0, "owned_by": "swarmlm",
            "swarm": {"num_layers": card.num_layers, "coverage": card.coverage, "peers": card.peers}}


def create_app(generator: Generator, *, token: str | None = None, extra_routes: list[BaseRoute] | None = None,
               max_body_bytes: int = DEFAULT_MAX_BODY, max_tokens_cap: int = 4096, default_max_tokens: int = 256,
               max_messages: int = 256, open_paths: tuple[str, ...] = (), allow_hosts: tuple[str, ...] = (),
               allow_origins: tuple[str, ...] = ()) -> Starlette:
    """The HTTP API app. ``token``: require it as a bearer token on every path but ``open_paths``.
    ``allow_hosts`` / ``allow_origins``: names and web origins answered besides loopback and IP
    addresses (``http_guard``). ``extra_routes`` are appended after the ``/v1`` routes.
    ``app.state.generator`` / ``.limits`` are set."""
    limits = Limits(max_tokens_cap=max_tokens_cap, default_max_tokens=default_max_tokens, max_messages=max_messages)

    async def list_models(request: Request) -> Response:
        try:
            cards = await generator.list_models()
        except Exception as exc:  # noqa: BLE001
            return error_response(api_error_from(exc))
        return _JSON({"object": "list", "data": [_model_obj(c) for c in cards]})

    async def get_model(request: Request) -> Response:
        model_id = request.path_params["model"]
        try:
            cards = await generator.list_models()
        except Exception as exc:  # noqa: BLE001
            return error_response(api_error_from(exc))
        for card in cards:
            if card.id == model_id:
                return _JSON(_model_obj(card))
        raise ApiError(404, f"unknown model {model_id!r}", param="model", code="model_not_found")

    async def chat_completions(request: Request) -> Response:
        parsed = parse_chat(await read_json(request, max_body_bytes), limits)
        return GenerationResponse(generator, parsed, chat=True)

    async def completions(request: Request) -> Response:
        parsed = parse_completion(await read_json(request, max_body_bytes), limits)
        return GenerationResponse(generator, parsed, chat=False)

    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(exc)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        detail = exc.detail if exc.status_code != 404 else f"no such endpoint: {request.method} {request.url.path}"
        return error_response(ApiError(exc.status_code, str(detail), code=code), exc.headers)

    async def on_crash(request: Request, exc: Exception) -> Response:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(api_error_from(exc))

    routes: list[BaseRoute] = [
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", get_model, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        *(extra_routes or []),
    ]
    middleware = [Middleware(HostOriginGuard, allow_hosts=allow_hosts, allow_origins=allow_origins)]
    if token:
        middleware.append(Middleware(BearerAuth, token=token, open_paths=frozenset(open_paths)))
    app = Starlette(routes=routes, middleware=middleware, exception_handlers={
        ApiError: on_api_error, HTTPException: on_http_error, Exception: on_crash})
    app.state.generator = generator
    app.state.limits = limits
    return app


# -- the server ----------------------------------------------------------------------------------------

class HttpAddress(NamedTuple):
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self}"


async def bind_socket(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket bound to (host, port); ``HttpServeError`` when that fails."""
    where = str(HttpAddress(host, port))
    try:
        try:
            family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
        except ValueError:
            infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            family = infos[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.bind((host, port))
        except BaseException:
            sock.close()
            raise
    except OSError as exc:
        raise HttpServeError(f"cannot serve the HTTP API on {where}: {exc.strerror or exc}") from None
    return sock


async def serve_http(app: Any, host: str = "127.0.0.1", port: int = 0, *,
                     shutdown_trigger: Callable[[], Awaitable[Any]] | None = None,
                     task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``app`` on host:port until cancelled (or ``shutdown_trigger`` returns); ``task_status``
    gets the bound ``HttpAddress`` once hypercorn is accepting connections."""
    sock = await bind_socket(host, port)
    bound = sock.getsockname()
    addr = HttpAddress(str(bound[0]), int(bound[1]))
    config = Config()
    config.bind = [f"fd://{sock.detach()}"]  # hypercorn owns the descriptor from here on
    config.accesslog = None
    config.errorlog = log
    config.graceful_timeout = 3.0
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: serve(app, config, shutdown_trigger=shutdown_trigger,
                                                      task_status=task_status))
        log.info("HTTP API on %s", addr.url)
        task_status.started(addr)
