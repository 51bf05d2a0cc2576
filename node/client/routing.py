"""Route planning for pipeline inference: a pure shortest-path planner over layer positions.

A model has ``n`` decoder layers ``[0, n)``. Each server hosts a contiguous range ``[start, end)`` and
can serve any sub-range of it. ``plan_route`` picks a chain of hops ``[0, a1) [a1, a2) ... [ak, n)``
that minimises an estimated per-token cost (see ``docs/ROUTING.md``):

    edge cost = hop overhead (rtt, or ``default_rtt_ms`` when unknown, + ``relay_penalty_ms`` if relayed,
                             + ``hop_ms``, a step's fixed cost beyond the round trip and the compute)
              + layers * ms_per_layer * (1 + session_weight * sessions)
                                                            (* (1 + load_weight * load) in throughput mode)

``sessions`` are the sessions open on the server: a server's step scheduler batches them, so each
one makes every step a little slower for all (``session_weight``); concurrent users spread over
replicas in every mode.

In throughput mode every server's edge cost is also multiplied by one random factor in
``[1 - jitter, 1 + jitter]`` drawn from the caller's ``random.Random``, so independent requests spread
over near-equal replicas. Peers in ``prefer`` get their edge cost discounted by ``prefer_discount``
(after a failover this keeps the healthy part of the old chain, whose KV caches are warm).

Edges go from a position ``a`` to ``b`` for every eligible server with ``start <= a < end`` and every
breakpoint ``b`` (a server's start or end, or ``n``) with ``a < b <= min(end, n)``. Because a chain's
cost is linear in each switch point between two hops, some optimal chain switches servers only at
breakpoints, so the search over breakpoints is exact; it includes the plain "serve to the end of
your range" edges and also "stop where a faster server starts". The graph is a DAG (positions only
grow), solved by one forward pass. Ties go to fewer hops, then to the smaller peer id of the last hop.

Nothing here does I/O; all inputs are plain records (``ServerView``), the output is a ``Route``.
"""

from __future__ import annotations

import bisect
import math
import random
import statistics
from dataclasses import dataclass
from typing import Collection, Iterable, Sequence

from swarmlm.node.directory import ServerView, coverage_gaps, format_layers, measured
from swarmlm.node.generation import NoRouteError

MODES = ("latency", "throughput")

__all__ = ["MODES", "CostModel", "Hop", "Route", "plan_route", "replan_after_failure", "route_is_valid"]


@dataclass(frozen=True)
class Hop:
    peer_id: str
    start: int
    end: int

    @property
    def layers(self) -> int:
        return self.end - self.start


@dataclass
class Route:
    hops: list[Hop]
    est_ms_per_token: float  # sum of hop overheads and compute; no load penalty, jitter or preference
    mode: str = "latency"

    def peer_ids(self) -> list[str]:
        return [h.peer_id for h in self.hops]

    def hop_of(self, peer_id: str) -> Hop | None:
        return next((h for h in self.hops if h.peer_id == peer_id), None)


@dataclass(frozen=True)
class CostModel:
    """The constants of the cost model (milliseconds per token unless said otherwise)."""

    default_rtt_ms: float = 50.0  # hop overhead for a server whose RTT the client has not measured
    relay_penalty_ms: float = 30.0  # added to the hop overhead of a relayed server
    # every hop's fixed cost per token beyond its echo round trip and layer compute (receiving, decoding,
    # dispatching and forwarding a step): ~2 ms measured on loopback (docs/ROUTING.md, "The cost model")
    hop_ms: float = 2.0
    default_ms_per_layer: float = 5.0  # compute estimate when no eligible server has a measurement
    load_weight: float = 1.0  # throughput mode: compute * (1 + load_weight * load)
    session_weight: float = 0.15  # every mode: compute * (1 + session_weight * open sessions)
    jitter: float = 0.1  # throughput mode: per-server random factor in [1 - jitter, 1 + jitter]
    prefer_discount: float = 0.2  # edges of preferred peers cost (1 - prefer_discount) times as much


DEFAULT_COST = CostModel()


def _skip_reason(s: ServerView, n_layers: int, need_cache_tokens: int, banned: Collection[str],
                 model: str | None, have_cache: Collection[str]) -> str | None:
    """Why ``s`` cannot be used (a short phrase), or None if it is eligible."""
    if model is not None and s.model != model:
        return "other model"
    if max(s.start, 0) >= min(s.end, n_layers):
        return "no layers"
    if not s.alive:
        return "offline"
    if s.peer_id in banned:
        return "banned"
    if s.peer_id not in have_cache and s.free_cache_tokens < need_cache_tokens:
        return "cache full"
    return None


def _no_route_message(all_servers: Sequence[ServerView], uncovered: list[int], n_layers: int,
                      model_name: str, reasons: dict[int, str], need_cache_tokens: int) -> str:
    msg = f"no live server with free cache covers layers {format_layers(uncovered)} of {model_name}"
    missing = set(uncovered)
    counts: dict[str, int] = {}
    for i, s in enumerate(all_servers):
        why = reasons.get(i)
        if why in (None, "other model", "no layers"):
            continue
        if missing.intersection(range(max(s.start, 0), min(s.end, n_layers))):
            counts[why] = counts.get(why, 0) + 1
    if counts:
        labels = {"offline": "offline", "banned": "excluded",
                  "cache full": f"without {need_cache_tokens} free cache tokens"}
        detail = ", ".join(f"{counts[k]} {labels[k]}" for k in ("offline", "banned", "cache full") if k in counts)
        msg += f" (servers there: {detail})"
    return msg


def plan_route(servers: Sequence[ServerView], n_layers: int, *, need_cache_tokens: int,
               banned: Collection[str] = frozenset(), mode: str = "latency", rng: random.Random | None = None,
               prefer: Iterable[str] = (), model: str | None = None, have_cache: Collection[str] = (),
               cost: CostModel = DEFAULT_COST) -> Route:
    """The cheapest chain of hops covering ``[0, n_layers)``.

    Servers that are not ``alive``, are in ``banned``, have fewer than ``need_cache_tokens`` free cache
    tokens (unless listed in ``have_cache``: they already hold this session's cache), or belong to
    another ``model`` (when given) are skipped. ``mode="throughput"`` adds the load penalty and, with an
    ``rng``, the per-server jitter. Raises ``NoRouteError`` naming the uncovered layers, ``ValueError``
    on a bad ``n_layers`` or ``mode``.
    """
    if n_layers <= 0:
        raise ValueError(f"n_layers must be positive, got {n_layers}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    banned, have_cache, prefer = frozenset(banned), frozenset(have_cache), frozenset(prefer)
    reasons: dict[int, str] = {}
    eligible: list[ServerView] = []
    for i, s in enumerate(servers):
        why = _skip_reason(s, n_layers, need_cache_tokens, banned, model, have_cache)
        if why is None:
            eligible.append(s)
        else:
            reasons[i] = why
    eligible.sort(key=lambda s: (s.peer_id, s.start, s.end))  # the plan must not depend on the input order
    uncovered = coverage_gaps(eligible, n_layers)
    if uncovered:
        names = {s.model for s in servers if model is None or s.model == model}
        model_name = model if model is not None else (names.pop() if len(names) == 1 else "the model")
        raise NoRouteError(_no_route_message(servers, uncovered, n_layers, model_name, reasons, need_cache_tokens))

    known = [s.ms_per_layer for s in eligible if measured(s.ms_per_layer)]
    fallback_ms = statistics.median(known) if known else cost.default_ms_per_layer
    throughput = mode == "throughput"
    jitter: dict[int, float] = {}
    if throughput and rng is not None and cost.jitter > 0:
        for idx in range(len(eligible)):  # one draw per server, in the sorted order
            jitter[idx] = rng.uniform(1.0 - cost.jitter, 1.0 + cost.jitter)

    # each server's edge costs are linear in the number of layers: plan = p0 + p1 * k, real = r0 + r1 * k
    lines: list[tuple[float, float, float, float]] = []
    for idx, s in enumerate(eligible):
        ms = s.ms_per_layer if measured(s.ms_per_layer) else fallback_ms
        rtt = s.rtt_ms if s.rtt_ms is not None and math.isfinite(s.rtt_ms) and s.rtt_ms >= 0 else cost.default_rtt_ms
        overhead = rtt + cost.hop_ms + (cost.relay_penalty_ms if s.relayed else 0.0)
        load = s.load if math.isfinite(s.load) and s.load > 0 else 0.0
        load_factor = (1.0 + cost.load_weight * load) if throughput else 1.0
        load_factor *= 1.0 + cost.session_weight * max(0, s.sessions)
        scale = jitter.get(idx, 1.0) * ((1.0 - cost.prefer_discount) if s.peer_id in prefer else 1.0)
        lines.append((overhead * scale, ms * load_factor * scale, overhead, ms))

    points = sorted({0, n_layers} | {min(max(p, 0), n_layers) for s in eligible for p in (s.start, s.end)})
    # best[b] = (planning cost, hop count, last peer id): costs within 1e-9 are equal and then fewer hops,
    # then the smaller peer id win; full ties keep the first found (servers are sorted, points ascend)
    best: dict[int, tuple[float, int, str]] = {0: (0.0, 0, "")}
    real: dict[int, float] = {0: 0.0}
    back: dict[int, tuple[int, int]] = {}  # b -> (a, server index) of the best hop ending at b
    for i, a in enumerate(points):
        if a == n_layers or a not in best:
            continue
        pcost, nhops, _ = best[a]
        for idx, s in enumerate(eligible):
            if not (s.start <= a < s.end):
                continue
            p0, p1, r0, r1 = lines[idx]
            base = pcost + p0
            for b in points[i + 1:bisect.bisect_right(points, min(s.end, n_layers))]:
                c = base + p1 * (b - a)
                cur = best.get(b)
                if cur is None or c < cur[0] - 1e-9 or (c <= cur[0] + 1e-9 and (nhops + 1, s.peer_id) < cur[1:]):
                    best[b], real[b], back[b] = (c, nhops + 1, s.peer_id), real[a] + r0 + r1 * (b - a), (a, idx)
    hops: list[Hop] = []
    b = n_layers  # reachable: every layer is covered, so from every point some server goes further
    while b > 0:
        a, idx = back[b]
        hops.append(Hop(eligible[idx].peer_id, a, b))
        b = a
    return Route(hops=hops[::-1], est_ms_per_token=real[n_layers], mode=mode)


def replan_after_failure(old_route: Route, failed_peer: str, servers: Sequence[ServerView], n_layers: int, *,
                         need_cache_tokens: int, banned: Collection[str] = frozenset(), mode: str | None = None,
                         rng: random.Random | None = None, model: str | None = None,
                         cost: CostModel = DEFAULT_COST) -> Route:
    """A new route after ``failed_peer`` broke: the failed peer is banned, the old route's other peers are
    preferred (their edges are discounted) and exempt from the free-cache check (they already hold this
    session's cache). ``mode`` defaults to the old route's. Raises ``NoRouteError`` like ``plan_route``."""
    keep = [h.peer_id for h in old_route.hops if h.peer_id != failed_peer]
    return plan_route(servers, n_layers, need_cache_tokens=need_cache_tokens,
                      banned=frozenset(banned) | {failed_peer}, mode=mode or old_route.mode, rng=rng,
                      prefer=keep, model=model, have_cache=keep, cost=cost)


def route_is_valid(route: Route, n_layers: int) -> bool:
    """True if the hops cover ``[0, n_layers)`` contiguously, each non-empty (a check for callers/tests)."""
    pos = 0
    for h in route.hops:
        if h.start != pos or h.end <= h.start:
            return False
        pos = h.end
    return pos == n_layers and bool(route.hops)

