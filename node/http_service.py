"""The node's HTTP front end as a service: the OpenAI-compatible API (``http_api``) backed by a
``SwarmClient`` on this node's own host and swarm state, plus the routes other services add."""

from __future__ import annotations

import logging
from typing import Any

import trio

from swarmlm.node.config import parse_hostport

log = logging.getLogger("swarmlm.http")


class HttpService:
    name = "http"

    def __init__(self, address: str, token: str | None = None) -> None:
        self.host, self.port = parse_hostport(address, "http")
        self.token = token
        self.client: Any = None
        self.extra_routes: list[Any] = []

    def register(self, node: Any) -> None:
        self.node = node

    async def start(self, node: Any, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        from swarmlm.node.client import SwarmClient
        from swarmlm.node.http_api import create_app, serve_http

        self.client = SwarmClient(node.host, node.state)
        node.client = self.client
        generator = getattr(node, "generator", None) or self.client
        if node.config.ee_key:  # a trusted local gateway: prompts are encrypted before they leave
            from swarmlm.node.ee_client import wrap_ee

            generator = wrap_ee(self.client, node.config.ee_key)
        from swarmlm.node.health import OPEN_PATHS, health_routes
        from swarmlm.node.metrics import instrument

        app = create_app(generator, token=self.token, extra_routes=self.extra_routes + health_routes(node),
                         open_paths=OPEN_PATHS)
        app = instrument(app, node)  # the health page, /api/swarm and /metrics; requests counted
        async with trio.open_nursery() as nursery:
            addr = await nursery.start(serve_http, app, self.host, self.port)
            node.http_addr = str(addr)
            log.info("HTTP API on http://%s/v1", node.http_addr)
            task_status.started()
