"""The health page's operator view of the node serving it: what an operator looks for first.

``operator_view(node, metrics, proc)``: the address to hand out as ``--bootstrap`` (a direct one,
not loopback when there is a choice: ``net.addrs.best_for_sharing``), this process's CPU and memory
and the machine's RAM (psutil), open inference sessions, and request and error counts (HTTP, from
the node's metrics; RPC, from its RPC server). ``served_routes(node)``: the routes of the sessions
this node served for any client (`swarmlm ask`, the SDK, other nodes), which carry the whole route.
"""

from __future__ import annotations

from typing import Any

import psutil

from swarmlm.net.addrs import best_for_sharing

MB = 1 << 20


class ProcessStats:
    """CPU share since the previous reading (psutil needs a first call to start measuring) and memory."""

    def __init__(self) -> None:
        self.proc = psutil.Process()
        self.proc.cpu_percent(None)

    def read(self) -> dict[str, Any]:
        try:
            mem = psutil.virtual_memory()
            return {"cpu_percent": round(self.proc.cpu_percent(None), 1),
                    "rss_mb": round(self.proc.memory_info().rss / MB, 1),
                    "ram_total_mb": round(mem.total / MB), "ram_used_percent": round(mem.percent, 1)}
        except (psutil.Error, OSError):  # no /proc here: the page shows "-"
            return {"cpu_percent": None, "rss_mb": None, "ram_total_mb": None, "ram_used_percent": None}


def http_counts(metrics: Any) -> tuple[int, int]:
    """(HTTP requests, of which errors: status 5xx) counted by the node's metrics."""
    total = errors = 0
    if metrics is None:
        return 0, 0
    for family in metrics.http_requests.collect():
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            total += int(sample.value)
            if str(sample.labels.get("code", "")).startswith("5"):
                errors += int(sample.value)
    return total, errors


def operator_view(node: Any, metrics: Any, proc: ProcessStats | None) -> dict[str, Any]:
    addrs = list(node.host.addrs)
    requests, errors = http_counts(metrics)
    rpc = getattr(getattr(node.host, "rpc_server", None), "stats", None)
    shard = getattr(node, "shard", None)
    return {"bootstrap": best_for_sharing(addrs), **(proc.read() if proc is not None else {}),
            "sessions_open": len(shard.sessions) if shard is not None else 0,
            "steps_served": getattr(shard, "steps_served", 0) if shard is not None else 0,
            "http_requests": requests, "http_errors": errors,
            "rpc_calls": getattr(rpc, "calls", 0), "rpc_errors": getattr(rpc, "errors", 0)}


def served_routes(node: Any) -> list[dict[str, Any]]:
    """Routes of sessions this node served for other clients (newest first), shaped like the client's."""
    shard = getattr(node, "shard", None)
    out = []
    for s in reversed(list(getattr(shard, "served", None) or [])):
        if s.get("client") == node.peer_id:
            continue  # our own client's asks are listed from the client, with its timings
        hops = [{"peer_id": h[0], "start": h[1], "end": h[2],
                 "ms": s.get("ms_per_step") if h[0] == node.peer_id else None} for h in s.get("route") or []]
        out.append({"model": s.get("model"), "at": s.get("at"), "client": s.get("client"), "hops": hops,
                    "steps": s.get("steps"), "tokens_per_s": None, "source": "served"})
    return out
