"""Prometheus metrics of one node: its own ``CollectorRegistry`` (several nodes can share a process).

Counted where they happen:

- ``swarmlm_http_requests_total{path,method,code}``  every HTTP request (ASGI wrapper, ``instrument``);
- ``swarmlm_tokens_generated_total``                 tokens sampled by this node (it holds the LM head);
- ``swarmlm_hop_compute_seconds``                    compute time of each step this node serves (histogram;
                                                     ``on_step`` listens to the shard service's steps);
- ``swarmlm_route_hop_seconds``                      per-hop step time of the routes this node's client used.

Read from the node at scrape time (a custom collector, so nothing else has to change): RPC calls,
errors, rejected frames/streams, bytes in/out (RPC and state sync), sessions open, cache tokens
used/budget, tokens computed, steps served, state updates rejected, connected and online peers,
per-model layer coverage, uptime, and the NAT state (``swarmlm_nat_state{state="public"} 1``).
"""

from __future__ import annotations

import time
from typing import Any

import trio

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

CONTENT_TYPE = CONTENT_TYPE_LATEST
NAT_STATES = ("public", "relayed", "punched", "private", "unknown")
HOP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
KNOWN_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/api/swarm/fragment", "/api/swarm",
               "/metrics", "/static", "/")


class NodeMetrics:
    def __init__(self, node: Any) -> None:
        self.node = node
        self.registry = CollectorRegistry(auto_describe=True)
        self.http_requests = Counter("swarmlm_http_requests", "HTTP requests served",
                                     ["path", "method", "code"], registry=self.registry)
        self.tokens_generated = Counter("swarmlm_tokens_generated", "Tokens sampled by this node (LM-head hop)",
                                        registry=self.registry)
        self.hop_compute = Histogram("swarmlm_hop_compute_seconds", "Compute time of one step on this node's layers",
                                     buckets=HOP_BUCKETS, registry=self.registry)
        self.route_hop = Histogram("swarmlm_route_hop_seconds", "Per-hop step time on routes this node's client used",
                                   buckets=HOP_BUCKETS, registry=self.registry)
        self._routes_seen = 0.0  # "at" of the newest client route already observed
        self.registry.register(_NodeCollector(node))

    # -- events --------------------------------------------------------------------------------
    def on_step(self, seconds: float, answered: bool) -> None:
        self.hop_compute.observe(seconds)
        if answered:
            self.tokens_generated.inc()

    def _sync_routes(self) -> None:
        client = getattr(self.node, "client", None)
        for route in getattr(client, "recent_routes", None) or []:
            at = float(route.get("at", 0.0))
            if at <= self._routes_seen:
                continue
            self._routes_seen = at
            for hop in route.get("hops", []):
                if isinstance(hop.get("ms"), (int, float)):
                    self.route_hop.observe(hop["ms"] / 1000.0)

    def render(self) -> bytes:
        self._sync_routes()
        return generate_latest(self.registry)


def _path_label(path: str) -> str:
    for p in KNOWN_PATHS:
        if path == p or (p != "/" and path.startswith(p + "/")):
            return p
    return "other"


def instrument(app: Any, metrics: NodeMetrics) -> Any:
    """Wrap an ASGI app so every HTTP request is counted in the node's metrics."""

    async def wrapped(scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await app(scope, receive, send)
            return
        path, method = _path_label(scope.get("path", "")), scope.get("method", "GET")
        counted = []

        async def send_status(message: dict) -> None:
            if message.get("type") == "http.response.start" and not counted:
                counted.append(1)  # counted before the client can see the response
                metrics.http_requests.labels(path, method, str(message.get("status", 500))).inc()
            await send(message)

        try:
            await app(scope, receive, send_status)
        finally:
            if not counted:  # the app failed before answering
                metrics.http_requests.labels(path, method, "500").inc()

    wrapped.state = getattr(app, "state", None)  # type: ignore[attr-defined]
    return wrapped


class _NodeCollector:
    """Gauges and counters read from the node's services when Prometheus scrapes."""

    def __init__(self, node: Any) -> None:
        self.node = node

    def describe(self) -> list:
        return []

    def collect(self):  # noqa: C901 - a flat list of reads
        node = self.node
        host = node.host
        stats = host.rpc_server.stats
        yield CounterMetricFamily("swarmlm_rpc_calls", "RPC calls served", value=stats.calls)
        yield CounterMetricFamily("swarmlm_rpc_errors", "RPC calls that ended in an error", value=stats.errors)
        yield CounterMetricFamily("swarmlm_rejected_frames", "Malformed or oversized RPC frames rejected",
                                  value=stats.rejected_frames)
        yield CounterMetricFamily("swarmlm_rejected_streams", "Incoming streams rejected (unknown protocol/method)",
                                  value=stats.rejected_streams)
        by = CounterMetricFamily("swarmlm_bytes", "Bytes received and sent", labels=["direction", "channel"])
        by.add_metric(["in", "rpc"], stats.bytes_in)
        by.add_metric(["out", "rpc"], stats.bytes_out)
        st = node.state
        if st is not None:
            by.add_metric(["in", "state"], getattr(st, "bytes_in", 0))
            by.add_metric(["out", "state"], getattr(st, "bytes_out", 0))
        yield by
        if st is not None:
            rej = CounterMetricFamily("swarmlm_state_rejected_updates", "Swarm-state updates rejected, by reason",
                                      labels=["reason"])
            for reason, n in sorted(dict(getattr(st.sync, "rejected", {}) or {}).items()):
                rej.add_metric([str(reason)], n)
            yield rej
        shard = node.shard
        sessions = len(shard.sessions) if shard is not None else 0
        yield GaugeMetricFamily("swarmlm_sessions_open", "Inference sessions open on this node", value=sessions)
        cache = getattr(shard, "cache", None)
        used = getattr(cache, "used_tokens", 0) if cache is not None else 0
        budget = getattr(cache, "budget_tokens", 0) if cache is not None else 0
        yield GaugeMetricFamily("swarmlm_cache_tokens_used", "KV-cache tokens in use", value=used)
        yield GaugeMetricFamily("swarmlm_cache_tokens_budget", "KV-cache token budget", value=budget)
        yield CounterMetricFamily("swarmlm_tokens_computed", "Token positions computed through this node's layers",
                                  value=getattr(shard, "tokens_computed", 0) if shard is not None else 0)
        yield CounterMetricFamily("swarmlm_steps_served", "Steps (forward passes) served",
                                  value=getattr(shard, "steps_served", 0) if shard is not None else 0)
        reach = str(getattr(node, "reachability", "unknown"))
        nat = GaugeMetricFamily("swarmlm_nat_state", "Reachability of this node (1 for the current state)",
                                labels=["state"])
        for s in sorted(set(NAT_STATES) | {reach}):
            nat.add_metric([s], 1.0 if s == reach else 0.0)
        yield nat
        try:
            connected = len(host.connected_peers())
        except Exception:  # not running
            connected = 0
        yield GaugeMetricFamily("swarmlm_peers_connected", "Peers with a live connection to this node", value=connected)
        if st is not None:
            now = time.time()
            state = st.state
            yield GaugeMetricFamily("swarmlm_swarm_peers_online", "Peers with a fresh heartbeat in the swarm state",
                                    value=len(state.peers(now)))
            cov = GaugeMetricFamily("swarmlm_model_layer_coverage", "Share of a model's layers served by online peers",
                                    labels=["model"])
            for mid, info in state.models(now).items():
                covered = set()
                for _, h in state.hosts_of(mid, now):
                    covered.update(range(h.start, min(h.end, info.layers)))
                cov.add_metric([mid], len(covered) / info.layers if info.layers else 0.0)
            yield cov
        started = getattr(node, "started_at", 0.0)
        if started:
            try:
                yield GaugeMetricFamily("swarmlm_uptime_seconds", "Seconds since this node started",
                                        value=trio.current_time() - started)
            except RuntimeError:
                pass
