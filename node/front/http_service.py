"""The node's HTTP front end as a service: the OpenAI-compatible API (``http_api``) backed by the
node's ``AsyncClient``, the health page, ``/api/swarm`` and ``/metrics`` (``health``, ``metrics``)."""

from __future__ import annotations

import logging
from typing import Any

import trio

from swarmlm.node.config import parse_hostport
from swarmlm.node.front.health import OPEN_PATHS, health_routes
from swarmlm.node.front.http_api import create_app, serve_http
from swarmlm.node.front.metrics import NodeMetrics, instrument

log = logging.getLogger("swarmlm.http")


class HttpService:
    name = "http"

    def __init__(self, address: str, token: str | None = None, allow_hosts: tuple[str, ...] = (),
                 allow_origins: tuple[str, ...] = ()) -> None:
        self.host, self.port = parse_hostport(address, "http")
        self.token = token
        self.allow_hosts, self.allow_origins = tuple(allow_hosts), tuple(allow_origins)
        self.extra_routes: list[Any] = []
        self.node: Any = None
        self.metrics: NodeMetrics | None = None

    def register(self, node: Any) -> None:
        self.node = node
        self.metrics = NodeMetrics(node)
        if node.shard is not None:  # per-step compute time and sampled tokens
            node.shard.step_listeners.append(self.metrics.on_step)

    def hosted_fields(self) -> dict[str, Any]:
        return {}

    async def start(self, node: Any, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        app = create_app(node.client, token=self.token, allow_hosts=self.allow_hosts, allow_origins=self.allow_origins,
                         extra_routes=self.extra_routes + health_routes(node, self.metrics), open_paths=OPEN_PATHS)
        app = instrument(app, self.metrics)  # the health page, /api/swarm and /metrics; requests counted
        async with trio.open_nursery() as nursery:
            addr = await nursery.start(serve_http, app, self.host, self.port)
            node.http_addr = str(addr)
            log.info("HTTP API on http://%s/v1", node.http_addr)
            task_status.started()

    async def close(self, node: Any) -> None:
        pass
