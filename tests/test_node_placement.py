"""Auto layer placement: joining an empty swarm, filling gaps with exactly one move, and no flapping."""

from __future__ import annotations

import math
import random

import pytest

from swarmlm.node.server.placement import (Move, choose_range, layer_throughput, rebalance_candidates,
                                    should_rebalance)
from swarmlm.node.directory import ServerView

M = "builtin:smollm2-135m"


def srv(peer: str, start: int, end: int, ms: float = 1.0, alive: bool = True) -> ServerView:
    return ServerView(peer, M, start, end, ms, 10_000, alive=alive)


@pytest.mark.parametrize("n", [30, 32, 7])
def test_three_nodes_joining_an_empty_swarm_each_take_a_third(n):
    k = math.ceil(n / 3)
    swarm: list[ServerView] = []
    for name in ("a", "b", "c"):
        start, end = choose_range(n, swarm, k)
        swarm.append(srv(name, start, end))
    ranges = [(s.start, s.end) for s in swarm]
    assert ranges[0] == (0, k) and ranges[1] == (k, 2 * k)
    assert ranges[2] == (n - k, n)  # the last window is pushed back to fit, covering the rest
    assert min(layer_throughput(n, swarm)) > 0


def test_a_lone_node_with_room_for_everything_serves_the_whole_model():
    assert choose_range(30, [], 30) == (0, 30)
    assert choose_range(30, [], 100, my_ms_per_layer=2.0) == (0, 30)
    # dead servers do not count
    assert choose_range(30, [srv("dead", 0, 30, alive=False)], 10) == (0, 10)


def test_choose_range_is_weighted_by_measured_throughput():
    # two replicas of [0, 10), one slow server on [10, 20), one fast on [20, 30): [10, 20) is the worst
    swarm = [srv("a", 0, 10, 1.0), srv("b", 0, 10, 1.0), srv("c", 10, 20, 4.0), srv("d", 20, 30, 0.5)]
    assert layer_throughput(30, swarm)[:1] == [2.0]
    assert choose_range(30, swarm, 10) == (10, 20)
    # a tie in min and sum goes to the lowest start
    assert choose_range(30, [srv("a", 0, 10), srv("b", 10, 20), srv("c", 20, 30)], 10) == (0, 10)
    # an unmeasured server counts with the median of the measured ones (here 1.0), not as infinitely fast
    swarm = [srv("a", 0, 10, 1.0), srv("new", 10, 20, 0.0), srv("c", 20, 30, 4.0)]
    assert layer_throughput(30, swarm)[10] == pytest.approx(1 / 2.5)
    assert choose_range(30, swarm, 10) == (20, 30)


def test_bad_arguments():
    with pytest.raises(ValueError):
        choose_range(0, [], 3)
    with pytest.raises(ValueError):
        choose_range(10, [], 0)
    with pytest.raises(ValueError):
        should_rebalance(10, [], "a", (0, 10), 10, hysteresis=0.9)


def _round(n, swarm, caps, waited, hysteresis=1.5):
    """Every live node decides from the same snapshot; moves are applied together. Returns the moves."""
    decisions = {}
    candidates = {m.peer_id for m in rebalance_candidates(n, swarm, max_layers=caps, hysteresis=hysteresis)}
    for s in swarm:
        if not s.alive:
            continue
        new = should_rebalance(n, swarm, s.peer_id, (s.start, s.end), caps[s.peer_id],
                               waited_rounds=waited.get(s.peer_id, 0), hysteresis=hysteresis)
        waited[s.peer_id] = waited.get(s.peer_id, 0) + 1 if new is None and s.peer_id in candidates else 0
        if new is not None:
            decisions[s.peer_id] = new
    if decisions:  # the placement changed: whoever waited for a stuck first candidate starts over
        waited.clear()
    for i, s in enumerate(swarm):
        if s.peer_id in decisions:
            swarm[i] = srv(s.peer_id, *decisions[s.peer_id], s.ms_per_layer)
    return decisions


def test_a_gap_left_by_a_departing_node_is_filled_by_exactly_one_move():
    n = 30
    swarm = [srv("a", 0, 10), srv("d", 0, 10), srv("b", 10, 20), srv("c", 20, 30)]
    caps = {s.peer_id: 10 for s in swarm}
    waited: dict[str, int] = {}
    assert _round(n, swarm, caps, waited) == {}  # a settled swarm stays put
    swarm[3] = srv("c", 20, 30, alive=False)  # c leaves
    moves = _round(n, swarm, caps, waited)
    assert len(moves) == 1 and list(moves.values()) == [(20, 30)]
    assert set(moves) <= {"a", "d"}  # one of the two replicas, never b (the only server of 10-19)
    assert min(layer_throughput(n, swarm)) > 0
    for _ in range(5):
        assert _round(n, swarm, caps, waited) == {}


def test_a_sole_server_does_not_abandon_its_range_for_an_equal_gap():
    swarm = [srv("a", 0, 10), srv("b", 10, 20)]
    assert should_rebalance(30, swarm, "a", (0, 10), 10) is None
    assert should_rebalance(30, swarm, "b", (10, 20), 10) is None


def test_bottleneck_moves_need_more_than_the_hysteresis():
    # a, b, c on [0, 10) and d on [10, 20): moving one of a, b, c to [10, 20) doubles the bottleneck (1 -> 2)
    swarm = [srv("a", 0, 10), srv("b", 0, 10), srv("c", 0, 10), srv("d", 10, 20)]
    moves = rebalance_candidates(20, swarm)
    assert [m.new for m in moves] == [(10, 20)] * 3 and moves[0].reason == "bottleneck"
    assert moves[0].bottleneck_after == pytest.approx(2 * moves[0].bottleneck_before)
    mover = moves[0].peer_id
    # a bottleneck move (unlike a gap) must stay worthwhile for `confirm` extra checks first
    assert should_rebalance(20, swarm, mover, (0, 10), 10) is None
    assert should_rebalance(20, swarm, mover, (0, 10), 10, waited_rounds=1, confirm=2) is None
    assert should_rebalance(20, swarm, mover, (0, 10), 10, waited_rounds=2, confirm=2) == (10, 20)
    assert should_rebalance(20, swarm, mover, (0, 10), 10, confirm=0) == (10, 20)
    assert should_rebalance(20, swarm, mover, (0, 10), 10, confirm=0, hysteresis=2.5) is None
    # a 1.25x gain (1 -> 1.25) is not worth a move at the default 1.5
    swarm = [srv("a", 0, 10, 1.0), srv("b", 0, 10, 4.0), srv("c", 10, 20, 1.0)]
    assert rebalance_candidates(20, swarm) == []


def test_lookahead_escapes_a_single_move_local_optimum():
    # layers 12-23 only have slow n1 (0.5 tokens/ms/layer); no single move raises that bottleneck (any one
    # node moving there leaves part of 12-23 at 0.5), but a move followed by another one doubles it
    swarm = [srv("n0", 0, 12, 1.0), srv("n1", 12, 24, 2.0), srv("n2", 0, 8, 1.5), srv("n3", 0, 8, 3.0),
             srv("n4", 0, 6, 1.0)]
    assert rebalance_candidates(24, swarm, lookahead=0) == []
    moves = rebalance_candidates(24, swarm)
    assert moves and all(m.reason == "lookahead" for m in moves)
    assert moves[0].bottleneck_after == pytest.approx(0.5)  # not worse right after the move
    assert moves[0].bottleneck_expected == pytest.approx(1.0)


def test_only_the_first_candidate_moves_unless_it_keeps_not_moving():
    swarm = [srv("a", 0, 10), srv("d", 0, 10), srv("b", 10, 20)]
    moves = rebalance_candidates(30, swarm)
    assert [m.new for m in moves] == [(20, 30), (20, 30)]
    assert all(isinstance(m, Move) and m.reason == "gap" for m in moves)
    first, second = moves[0].peer_id, moves[1].peer_id
    assert should_rebalance(30, swarm, first, (0, 10), 10) == (20, 30)
    assert should_rebalance(30, swarm, second, (0, 10), 10) is None
    assert should_rebalance(30, swarm, second, (0, 10), 10, waited_rounds=2, patience=3) is None
    assert should_rebalance(30, swarm, second, (0, 10), 10, waited_rounds=3, patience=3) == (20, 30)


def test_my_own_entry_is_taken_from_my_arguments():
    # the state still shows "a" on [0, 10) (stale: a gap at 20-29), the node knows it now serves [20, 30)
    swarm = [srv("a", 0, 10), srv("b", 0, 10), srv("c", 10, 20)]
    assert rebalance_candidates(30, swarm)  # judged on the stale entry, a or b would move
    assert should_rebalance(30, swarm, "a", (20, 30), 10, my_ms_per_layer=1.0) is None
    # a node not in the state at all is evaluated too (one of two candidates: rank <= 1 after waiting)
    swarm = [srv("b", 0, 10), srv("c", 10, 20)]
    assert should_rebalance(30, swarm, "z", (0, 10), 10, my_ms_per_layer=1.0, waited_rounds=3) == (20, 30)


def _simulate(seed: int, rounds: int, leave_at: int | None = None, concurrent_join: bool = False,
              hysteresis: float = 1.5):
    """5 nodes of different speeds and sizes join an empty 24-layer swarm one by one (or all at once,
    each seeing the empty swarm), then check every round with measurements that have +-15% noise.
    Returns (moves per round, final swarm)."""
    n = 24
    rng = random.Random(seed)
    true_ms = {"n0": 1.0, "n1": 2.0, "n2": 1.5, "n3": 3.0, "n4": 1.0}
    caps = {"n0": 12, "n1": 12, "n2": 8, "n3": 8, "n4": 6}
    ranges: dict[str, tuple[int, int]] = {}
    alive = set(true_ms)

    def snapshot():
        return [srv(p, *ranges[p], true_ms[p] * rng.uniform(0.85, 1.15), alive=p in alive) for p in ranges]

    for p in true_ms:
        ranges[p] = choose_range(n, [] if concurrent_join else snapshot(), caps[p], true_ms[p])
    waited: dict[str, int] = {}
    per_round = []
    for r in range(rounds):
        if r == leave_at:
            alive.discard("n0")
        swarm = snapshot()
        moves = _round(n, swarm, caps, waited, hysteresis)
        for p, new in moves.items():
            ranges[p] = new
        per_round.append(len(moves))
    return per_round, snapshot()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_no_flapping_under_noisy_measurements(seed):
    per_round, swarm = _simulate(seed, 200)
    assert sum(per_round) <= 5, per_round
    assert max(per_round) <= 1  # never two nodes at once
    assert sum(per_round[40:]) == 0, per_round  # settled: no moves after convergence
    assert min(layer_throughput(24, swarm)) > 0


def test_after_a_departure_the_swarm_resettles_without_flapping():
    per_round, swarm = _simulate(4, 200, leave_at=60)
    assert sum(per_round[40:60]) == 0
    assert per_round[60] == 1  # the gap is filled at once, by one node
    assert max(per_round) <= 1
    assert sum(per_round[100:]) == 0, per_round
    assert min(layer_throughput(24, [s for s in swarm if s.alive])) > 0


@pytest.mark.parametrize("seed", [5, 6])
def test_a_concurrent_join_converges_then_stops_moving(seed):
    # all five joined at once seeing an empty swarm: all on [0, cap), layers 12-23 unserved
    per_round, swarm = _simulate(seed, 200, concurrent_join=True)
    assert sum(per_round[:40]) >= 2  # it does rebalance...
    assert max(per_round) <= 1
    assert sum(per_round[40:]) == 0, per_round  # ...and then settles
    assert min(layer_throughput(24, swarm)) > 0


def test_without_hysteresis_the_same_simulation_flaps():
    # the check above has teeth: at hysteresis 1.0 measurement noise alone keeps nodes moving
    per_round, _ = _simulate(1, 200, hysteresis=1.0)
    assert sum(per_round[100:]) >= 3, per_round
