"""The client's and the placement's view of the swarm: servers per model, from the swarm state.

``servers_for(state, model, now, peers)`` turns the replicated peer entries (what each peer hosts,
its measured throughput, free cache, load, heartbeat) into ``ServerView``s for the planner, adding
the RTTs this node measured itself (``PeerTable``).
"""

from __future__ import annotations

from typing import Any

from swarmlm.node.routing import ServerView


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
            rtt = info.rtt_ms if info is not None else None
        out.append(ServerView(peer_id=entry.peer_id, model=model, start=hosted.start, end=hosted.end,
                              ms_per_layer=ms_per_layer_from(entry.throughput, layers),
                              free_cache_tokens=int(entry.free_kv), load=float(entry.load), rtt_ms=rtt,
                              alive=True, relayed=entry.reach == "relayed"))
    return out


def model_layers(state: Any, model: str, now: float) -> int | None:
    info = state.models(now).get(model)
    if info is not None:
        return info.layers
    return None
