"""Automatic layer placement (``--layers auto``): which contiguous block range a node should host.

- ``layer_throughput``: per-layer throughput of a swarm, ``sum(1 / ms_per_layer)`` over live servers
  hosting the layer (0 for an unserved layer).
- ``choose_range``: the window of ``min(my_max_layers, n)`` layers the swarm serves worst: the one with
  the smallest minimum throughput, then the smallest sum, then the lowest start.
- ``rebalance_candidates`` / ``should_rebalance``: whether a serving node should move (to the window
  the *other* nodes serve worst). A move is worth it only if it reduces the number of unserved
  layers ("gap"), or if it never lowers the swarm's bottleneck (its minimum per-layer throughput) and
  raises it by more than ``hysteresis`` times (1.5 by default) -- right away ("bottleneck"), or after
  the greedy follow-up moves of the other nodes that a short simulation predicts ("lookahead": it
  escapes configurations no single move improves). Gap moves go at once; bottleneck moves only
  after staying worthwhile for ``confirm`` extra checks, so one noisy measurement cannot move a node.
- Stagger: every node evaluates the same rule for every live node from the same shared state and
  ranks the nodes that would gain from moving (fewest unserved layers after the move, then the
  highest expected bottleneck, then SHA-256 of the peer id). Only the first one moves; the others
  see the gap filled on their next check. A node that keeps being a candidate without moving may go
  after ``patience`` checks per rank ahead of it (``waited_rounds``), so a first candidate that never
  moves (stuck, or with a stale view) cannot block the rest forever.

The servers passed in are one model's ``ServerView``s (from ``swarmlm.node.directory``); nothing here
does I/O. A server whose ``ms_per_layer`` is not measured yet counts with the median of the others.
"""

from __future__ import annotations

import hashlib
import math
import statistics
from collections import deque
from dataclasses import dataclass, replace
from typing import Sequence

from swarmlm.node.directory import ServerView, measured

DEFAULT_HYSTERESIS = 1.5
DEFAULT_PATIENCE = 3
DEFAULT_CONFIRM = 2  # extra checks a bottleneck move must stay worthwhile for (gaps move at once)
DEFAULT_LOOKAHEAD = 3  # greedy passes to estimate what a bottleneck-neutral move leads to
_EPS = 1e-9
_FALLBACK_MS = 1.0  # only when nobody has a measurement: then only the count of servers matters

Range = tuple[int, int]


def _fill_ms(servers: Sequence[ServerView]) -> list[ServerView]:
    """Live servers with an ``ms_per_layer`` to count with (unmeasured ones get the median)."""
    live = [s for s in servers if s.alive]
    known = [s.ms_per_layer for s in live if measured(s.ms_per_layer)]
    fallback = statistics.median(known) if known else _FALLBACK_MS
    return [s if measured(s.ms_per_layer) else replace(s, ms_per_layer=fallback) for s in live]


def layer_throughput(n_layers: int, servers: Sequence[ServerView]) -> list[float]:
    """Per-layer throughput: the sum of ``1 / ms_per_layer`` over live servers hosting each layer."""
    tp = [0.0] * n_layers
    for s in _fill_ms(servers):
        for layer in range(max(s.start, 0), min(s.end, n_layers)):
            tp[layer] += 1.0 / s.ms_per_layer
    return tp


def _best_window(tp: list[float], length: int) -> Range:
    """The window of ``length`` layers with the smallest (min, sum), lowest start on ties; O(n)."""
    prefix = [0.0]
    for t in tp:
        prefix.append(prefix[-1] + t)
    best_min, best_sum, best_start = math.inf, math.inf, 0
    window_min: deque[int] = deque()  # indices of increasing throughput: the front is the window's min
    for i, t in enumerate(tp):
        while window_min and tp[window_min[-1]] >= t:
            window_min.pop()
        window_min.append(i)
        start = i - length + 1
        if start < 0:
            continue
        if window_min[0] < start:
            window_min.popleft()
        lo, total = tp[window_min[0]], prefix[i + 1] - prefix[start]
        # strictly better (beyond float noise) only: ties keep the lowest start
        if lo < best_min - _EPS or (lo <= best_min + _EPS and total < best_sum - _EPS * (1 + abs(best_sum))):
            best_min, best_sum, best_start = lo, total, start
    return best_start, best_start + length


def choose_range(n_layers: int, servers: Sequence[ServerView], my_max_layers: int,
                 my_ms_per_layer: float | None = None) -> Range:
    """The range ``[start, end)`` of ``min(my_max_layers, n_layers)`` layers the swarm serves worst.

    ``servers`` should not contain the calling node itself. ``my_ms_per_layer`` does not change the
    choice (adding one node's throughput to a window raises every layer of it by the same amount, so
    the order of windows by their minimum and sum is the same); it is accepted so callers can pass
    the same arguments here and to ``should_rebalance``."""
    if n_layers <= 0:
        raise ValueError(f"n_layers must be positive, got {n_layers}")
    if my_max_layers <= 0:
        raise ValueError(f"my_max_layers must be positive, got {my_max_layers}")
    del my_ms_per_layer
    length = min(my_max_layers, n_layers)
    return _best_window(layer_throughput(n_layers, servers), length)


@dataclass(frozen=True)
class Move:
    """A move one node would gain from, with the numbers it was judged on."""

    peer_id: str
    old: Range
    new: Range
    unserved_before: int
    unserved_after: int
    bottleneck_before: float
    bottleneck_after: float  # right after this move
    bottleneck_expected: float  # after the follow-up moves of the lookahead (= bottleneck_after if none)
    reason: str  # "gap" | "bottleneck" | "lookahead"

    def rank_key(self) -> tuple[int, float, str]:
        return (self.unserved_after, -round(self.bottleneck_expected, 9),
                hashlib.sha256(self.peer_id.encode()).hexdigest())


@dataclass
class _Node:
    peer_id: str
    start: int
    end: int
    tp: float  # 1 / ms_per_layer
    cap: int  # the most layers it can host


def _add(tp: list[float], node: _Node, sign: float) -> None:
    for i in range(node.start, node.end):
        tp[i] += sign * node.tp


def _min_with(base: list[float], r: Range, extra: float) -> float:
    """min over layers of ``base`` plus ``extra`` on the layers of ``r``, without building the list."""
    inside = min(base[r[0]:r[1]]) + extra
    outside = min(base[:r[0]] + base[r[1]:], default=inside)
    return min(inside, outside)


def _settle(n_layers: int, nodes: list[_Node], fixed: str, passes: int) -> float:
    """The bottleneck after up to ``passes`` greedy rounds in which every node but ``fixed`` (in peer id
    order) moves to its best window when that does not lower the bottleneck (nodes are copied)."""
    nodes = [_Node(m.peer_id, m.start, m.end, m.tp, m.cap) for m in nodes]
    tp = [0.0] * n_layers
    for m in nodes:
        _add(tp, m, 1.0)
    for _ in range(passes):
        changed = False
        for m in sorted(nodes, key=lambda x: x.peer_id):
            if m.peer_id == fixed:
                continue
            _add(tp, m, -1.0)
            new = _best_window(tp, min(m.cap, n_layers))
            if new != (m.start, m.end) and _min_with(tp, new, m.tp) >= _min_with(tp, (m.start, m.end), m.tp):
                m.start, m.end = new
                changed = True
            _add(tp, m, 1.0)
        if not changed:
            break
    return min(tp)


def _evaluate(n_layers: int, nodes: list[_Node], me: _Node, hysteresis: float, lookahead: int) -> Move | None:
    """Would ``me`` (one of ``nodes``) gain from moving to the window the others serve worst?"""
    base = [0.0] * n_layers
    for m in nodes:
        if m is not me:
            _add(base, m, 1.0)
    old: Range = (me.start, me.end)
    new = _best_window(base, min(me.cap, n_layers))
    if new == old:
        return None
    ub = sum(1 for i, t in enumerate(base) if t <= 0 and not old[0] <= i < old[1])
    ua = sum(1 for i, t in enumerate(base) if t <= 0 and not new[0] <= i < new[1])
    bb, ba = _min_with(base, old, me.tp), _min_with(base, new, me.tp)
    expected = ba
    if ub > 0:
        if ua >= ub:
            return None
        reason = "gap"
    elif ua > 0 or ba < bb:  # never open a gap or lower the bottleneck
        return None
    elif ba > hysteresis * bb:
        reason = "bottleneck"
    else:
        if lookahead <= 0:
            return None
        moved = [_Node(m.peer_id, *(new if m is me else (m.start, m.end)), m.tp, m.cap) for m in nodes]
        expected = max(ba, _settle(n_layers, moved, me.peer_id, lookahead))
        if expected <= hysteresis * bb:
            return None
        reason = "lookahead"
    return Move(me.peer_id, old, new, ub, ua, bb, ba, expected, reason)


def rebalance_candidates(n_layers: int, servers: Sequence[ServerView], *, hysteresis: float = DEFAULT_HYSTERESIS,
                         max_layers: dict[str, int] | None = None, lookahead: int = DEFAULT_LOOKAHEAD) -> list[Move]:
    """Every live node's worthwhile move, best first (the stagger order; see the module docstring).

    A node's maximum is taken from ``max_layers`` when given, else assumed to be the length of the
    range it hosts now (what the swarm state shows). ``lookahead`` is the number of greedy passes used
    to estimate the gain of a move that does not raise the bottleneck by itself (0: no lookahead)."""
    nodes = []  # in peer id order: every node computes the same floats in the same order, so the same ranking
    for s in sorted(_fill_ms(servers), key=lambda x: (x.peer_id, x.start, x.end)):
        start, end = max(s.start, 0), min(s.end, n_layers)
        cap = (max_layers or {}).get(s.peer_id, end - start)
        if start < end and cap > 0:
            nodes.append(_Node(s.peer_id, start, end, 1.0 / s.ms_per_layer, cap))
    moves = [m for me in nodes if (m := _evaluate(n_layers, nodes, me, hysteresis, lookahead)) is not None]
    return sorted(moves, key=Move.rank_key)


def should_rebalance(n_layers: int, servers: Sequence[ServerView], my_peer_id: str, my_range: Range,
                     my_max_layers: int, *, hysteresis: float = DEFAULT_HYSTERESIS,
                     my_ms_per_layer: float | None = None, waited_rounds: int = 0,
                     patience: int = DEFAULT_PATIENCE, confirm: int = DEFAULT_CONFIRM,
                     lookahead: int = DEFAULT_LOOKAHEAD) -> Range | None:
    """The range this node should move to now, or None to stay.

    ``servers`` is the swarm as the state shows it (this node's own entry may be present or not; it is
    replaced by ``my_range`` and ``my_ms_per_layer``, or the entry's measurement when that is None).
    The node moves if its move is worthwhile (fewer unserved layers, or a bottleneck gain above
    ``hysteresis``) and its rank among all worthwhile moves is at most ``w // patience``, where ``w`` is
    ``waited_rounds`` for a gap move and ``waited_rounds - confirm`` (must be >= 0) for a bottleneck
    move: normally only the first candidate moves. The caller keeps ``waited_rounds``: +1 after a
    check in which it appeared in ``rebalance_candidates`` but got None here, 0 after it moved, was no
    candidate, or saw the swarm's placement change. A node hosting nothing yet uses ``choose_range``."""
    if hysteresis < 1.0:
        raise ValueError(f"hysteresis must be >= 1, got {hysteresis}")
    entry = next((s for s in servers if s.peer_id == my_peer_id), None)
    ms = my_ms_per_layer if my_ms_per_layer is not None and measured(my_ms_per_layer) else (
        entry.ms_per_layer if entry is not None else float("nan"))
    model = entry.model if entry is not None else (servers[0].model if servers else "")
    me = ServerView(my_peer_id, model, my_range[0], my_range[1], ms, 0, alive=True)
    view = [s for s in servers if s.peer_id != my_peer_id] + [me]
    caps = {s.peer_id: max(s.end, 0) - max(s.start, 0) for s in view}
    caps[my_peer_id] = my_max_layers
    moves = rebalance_candidates(n_layers, view, hysteresis=hysteresis, max_layers=caps, lookahead=lookahead)
    for rank, m in enumerate(moves):
        if m.peer_id != my_peer_id:
            continue
        waited = waited_rounds if m.reason == "gap" else waited_rounds - confirm
        return m.new if waited >= 0 and rank <= waited // max(patience, 1) else None
    return None
