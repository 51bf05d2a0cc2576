"""The swarm as clients, placement and the health page see it: servers per model, from the swarm state.

``ServerView`` is what the route planner (``node/client/routing.py``) and auto placement
(``node/server/placement.py``) know of one server. ``servers_for(state, model, now, peers)`` turns
the replicated peer entries (what each peer hosts, its measured throughput, free cache, load and
open sessions, heartbeat) into ``ServerView``s, adding the RTTs this node measured itself (``PeerTable``).
``eligible_hosts`` lists the whole-model hosts a consensus round draws on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable


@dataclass
class ServerView:
    """What the client knows about one server of one model (from the swarm state and its own pings)."""

    peer_id: str
    model: str
    start: int
    end: int
    ms_per_layer: float  # measured compute per layer per token; <= 0 or NaN means "not measured yet"
    free_cache_tokens: int
    load: float = 0.0  # 0..1 utilisation (open sessions / max sessions)
    sessions: int = 0  # sessions open on it now (its heartbeat, or more that this client knows it opened)
    rtt_ms: float | None = None  # the client's measured round trip to it; None if unknown
    alive: bool = True
    relayed: bool = False  # reachable only through a relay


def format_layers(layers: Iterable[int]) -> str:
    """Layers as inclusive ranges: ``[10, 11, 12, 13, 14, 20] -> "10-14, 20"``."""
    parts: list[str] = []
    run: list[int] = []
    for layer in sorted(set(layers)):
        if run and layer == run[-1] + 1:
            run.append(layer)
            continue
        if run:
            parts.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
        run = [layer]
    if run:
        parts.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return ", ".join(parts)


def coverage_gaps(servers: Iterable[ServerView], n_layers: int) -> list[int]:
    """The layers of ``[0, n_layers)`` that no server in ``servers`` hosts (liveness is not checked)."""
    covered = [False] * n_layers
    for s in servers:
        for layer in range(max(s.start, 0), min(s.end, n_layers)):
            covered[layer] = True
    return [layer for layer, c in enumerate(covered) if not c]


def measured(ms: float) -> bool:
    return isinstance(ms, (int, float)) and math.isfinite(ms) and ms > 0


def ms_per_layer_from(throughput_tok_s: float, layers: int) -> float:
    """Peers publish tokens/s through their hosted range; the planner wants ms per layer per token."""
    if throughput_tok_s <= 0 or layers <= 0:
        return float("nan")
    return 1000.0 / throughput_tok_s / layers


def throughput_from(ms_per_layer: float, layers: int) -> float:
    if ms_per_layer <= 0 or layers <= 0:
        return 0.0
    return 1000.0 / (ms_per_layer * layers)


def servers_for(state: Any, model: str, now: float, peers: Any = None, exclude: str | None = None) -> list[ServerView]:
    out = []
    for entry, hosted in state.hosts_of(model, now):
        if entry.peer_id == exclude:
            continue
        layers = hosted.end - hosted.start
        rtt = None
        if peers is not None:
            info = peers.get(entry.peer_id)
            rtt = info.base_rtt_ms if info is not None else None  # the path's delay, not a busy moment's
        out.append(ServerView(peer_id=entry.peer_id, model=model, start=hosted.start, end=hosted.end,
                              ms_per_layer=ms_per_layer_from(entry.throughput, layers),
                              free_cache_tokens=int(entry.free_kv), load=float(entry.load), rtt_ms=rtt,
                              alive=True, relayed=entry.reach == "relayed", sessions=int(entry.sessions)))
    return out


def model_layers(state: Any, model: str, now: float) -> int | None:
    info = state.models(now).get(model)
    if info is not None:
        return info.layers
    return None


def eligible_hosts(state: Any, model: str, now: float) -> list[str]:
    """Online peers hosting all layers ``[0, n)`` of ``model`` (n from the state's model registry):
    the nodes that can answer and judge a consensus round."""
    info = state.models(now).get(model)
    if info is None:
        return []
    return sorted({e.peer_id for e, h in state.hosts_of(model, now) if h.start == 0 and h.end == info.layers})
