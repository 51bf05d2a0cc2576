"""Who may talk to the node's HTTP API: the ``Host`` and ``Origin`` checks (ASGI middleware).

A browser on the operator's machine can be made to send requests to ``localhost`` by any web page:
by DNS rebinding (a name the attacker controls that resolves to 127.0.0.1, so the browser sends
``Host: evil.example``) or by a cross-origin "simple" request (``Origin: https://evil.example``,
``Content-Type: text/plain``, no preflight). So:

* ``Host`` must be a loopback name (``localhost``, ``*.localhost``), an IP address literal
  (rebinding always uses a name), or one of ``allow_hosts`` (``*``: any) -- otherwise 421;
* a request carrying ``Origin`` must come from the same origin (the health page's own script) or
  from one of ``allow_origins`` (``*``: any) -- otherwise 403; ``Origin: null`` is refused;
* bodies must be JSON (``Content-Type: application/json``), checked where the body is read
  (``http_api.read_json``: 415), which also forces a CORS preflight that this API never answers.

Operators who publish the API under a name add it with ``--http-allow-host`` (and a token).
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any, Iterable
from urllib.parse import urlsplit

LOOPBACK_NAMES = ("localhost",)


def _header(scope: dict, name: bytes) -> str | None:
    for k, v in scope.get("headers", []):
        if k.lower() == name:
            return v.decode("latin-1")
    return None


def split_host(value: str) -> str:
    """``Host`` header -> the host name or address alone, lower-cased (port and brackets removed)."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def host_allowed(host: str, allow: Iterable[str] = ()) -> bool:
    allow = {a.lower() for a in allow}
    if "*" in allow:
        return True
    name = split_host(host)
    if not name:
        return False
    if name in LOOPBACK_NAMES or name.endswith(".localhost") or name in allow:
        return True
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def origin_allowed(origin: str, host: str | None, allow: Iterable[str] = ()) -> bool:
    allow = {a.lower().rstrip("/") for a in allow}
    origin = origin.strip().lower().rstrip("/")
    if "*" in allow or origin in allow:
        return True
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and host is not None and parts.netloc == host.strip().lower()


class HostOriginGuard:
    """ASGI middleware refusing requests with a foreign ``Host`` (421) or ``Origin`` (403)."""

    def __init__(self, app: Any, allow_hosts: Iterable[str] = (), allow_origins: Iterable[str] = ()) -> None:
        self.app = app
        self.allow_hosts = tuple(allow_hosts)
        self.allow_origins = tuple(allow_origins)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            host = _header(scope, b"host")
            origin = _header(scope, b"origin")
            if host is None or not host_allowed(host, self.allow_hosts):
                return await _refuse(send, 421, f"this node does not answer for host {host!r}; "
                                     "use an IP address or localhost, or start it with --http-allow-host NAME",
                                     "host_not_allowed")
            if origin is not None and not origin_allowed(origin, host, self.allow_origins):
                return await _refuse(send, 403, f"requests from web origin {origin!r} are not allowed; "
                                     "start the node with --http-allow-origin ORIGIN to allow it", "origin_not_allowed")
        await self.app(scope, receive, send)


async def _refuse(send: Any, status: int, message: str, code: str) -> None:
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                 "code": code}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
