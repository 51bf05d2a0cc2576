"""Route planner: hand-made swarms, failover, throughput spreading, and a hypothesis property test."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from swarmlm.errors import SwarmError
from swarmlm.node.generation import NoRouteError
from swarmlm.node.client.routing import (DEFAULT_COST, CostModel, Hop, Route, plan_route, replan_after_failure,
                                        route_is_valid)
from swarmlm.node.directory import ServerView, coverage_gaps, format_layers

M = "builtin:smollm2-135m"
N = 30


def srv(peer: str, start: int, end: int, ms: float = 1.0, *, cache: int = 10_000, rtt: float | None = 10.0,
        **kw) -> ServerView:
    return ServerView(peer, M, start, end, ms, cache, rtt_ms=rtt, **kw)


def spans(route: Route) -> list[tuple[str, int, int]]:
    return [(h.peer_id, h.start, h.end) for h in route.hops]


def test_single_whole_model_server():
    r = plan_route([srv("a", 0, N, 2.0, rtt=15.0)], N, need_cache_tokens=100)
    assert spans(r) == [("a", 0, N)]
    assert r.est_ms_per_token == pytest.approx(15.0 + DEFAULT_COST.hop_ms + N * 2.0)
    assert route_is_valid(r, N)


def test_three_disjoint_thirds_in_order():
    servers = [srv("c", 20, 30), srv("a", 0, 10), srv("b", 10, 20)]
    r = plan_route(servers, N, need_cache_tokens=100)
    assert spans(r) == [("a", 0, 10), ("b", 10, 20), ("c", 20, 30)]
    assert r.est_ms_per_token == pytest.approx(3 * (10.0 + DEFAULT_COST.hop_ms) + 30 * 1.0)


def test_overlapping_replicas_the_faster_wins():
    servers = [srv("slow", 0, N, 3.0), srv("fast", 0, N, 1.0)]
    assert spans(plan_route(servers, N, need_cache_tokens=1)) == [("fast", 0, N)]
    # the input order does not matter
    assert spans(plan_route(servers[::-1], N, need_cache_tokens=1)) == [("fast", 0, N)]


def test_slow_server_avoided_when_a_detour_is_cheaper():
    # "whole" is one hop but slow; two fast halves cost one extra hop overhead and win
    servers = [srv("whole", 0, N, 5.0), srv("h1", 0, 15, 1.0), srv("h2", 15, N, 1.0)]
    r = plan_route(servers, N, need_cache_tokens=1)
    assert spans(r) == [("h1", 0, 15), ("h2", 15, N)]
    # with expensive hops (slow network) the single server is cheaper again
    far = [srv("whole", 0, N, 1.2, rtt=10.0), srv("h1", 0, 15, 1.0, rtt=200.0), srv("h2", 15, N, 1.0, rtt=200.0)]
    assert spans(plan_route(far, N, need_cache_tokens=1)) == [("whole", 0, N)]


def test_a_slow_server_is_left_early_where_a_faster_one_starts():
    # "a" must serve layer 0-9, but "b" is much faster for 10-29 though "a" hosts them too
    servers = [srv("a", 0, N, 4.0), srv("b", 10, N, 1.0)]
    assert spans(plan_route(servers, N, need_cache_tokens=1)) == [("a", 0, 10), ("b", 10, N)]


def test_banned_peers_are_skipped():
    servers = [srv("fast", 0, N, 1.0), srv("slow", 0, N, 3.0)]
    r = plan_route(servers, N, need_cache_tokens=1, banned={"fast"})
    assert spans(r) == [("slow", 0, N)]
    with pytest.raises(NoRouteError):
        plan_route(servers, N, need_cache_tokens=1, banned={"fast", "slow"})


def test_cache_full_and_dead_peers_are_skipped():
    servers = [srv("full", 0, N, 1.0, cache=100), srv("dead", 0, N, 1.0, alive=False), srv("ok", 0, N, 2.0)]
    assert spans(plan_route(servers, N, need_cache_tokens=101)) == [("ok", 0, N)]
    # exactly enough free cache is enough
    assert spans(plan_route(servers, N, need_cache_tokens=100)) == [("full", 0, N)]


def test_relayed_peer_pays_a_penalty():
    direct, relayed = srv("direct", 0, N, 1.0, rtt=20.0), srv("relayed", 0, N, 0.9, rtt=20.0, relayed=True)
    cost = CostModel(relay_penalty_ms=30.0)
    # 20 + 30 + 27 = 77 > 20 + 30 = 50
    assert spans(plan_route([direct, relayed], N, need_cache_tokens=1, cost=cost)) == [("direct", 0, N)]
    r = plan_route([relayed], N, need_cache_tokens=1, cost=cost)
    assert r.est_ms_per_token == pytest.approx(20.0 + 30.0 + DEFAULT_COST.hop_ms + 0.9 * N)
    # without the penalty the slightly faster relayed one wins
    assert spans(plan_route([direct, relayed], N, need_cache_tokens=1, cost=CostModel(relay_penalty_ms=0.0))) \
        == [("relayed", 0, N)]


def test_unknown_rtt_uses_the_default_overhead():
    servers = [srv("known", 0, N, 1.0, rtt=30.0), srv("unknown", 0, N, 1.0, rtt=None)]
    assert spans(plan_route(servers, N, need_cache_tokens=1, cost=CostModel(default_rtt_ms=50.0))) == [("known", 0, N)]
    assert spans(plan_route(servers, N, need_cache_tokens=1, cost=CostModel(default_rtt_ms=5.0))) == [("unknown", 0, N)]


def test_unmeasured_server_counts_with_the_median():
    servers = [srv("a", 0, N, 1.0), srv("b", 0, N, 3.0), srv("new", 0, N, 0.0, rtt=10.0)]
    r = plan_route([servers[2]], N, need_cache_tokens=1, cost=CostModel(default_ms_per_layer=5.0))
    assert r.est_ms_per_token == pytest.approx(10.0 + DEFAULT_COST.hop_ms + 5.0 * N)
    # median of the measured ones (1, 3) is 2: slower than "a"
    assert spans(plan_route(servers, N, need_cache_tokens=1)) == [("a", 0, N)]


def test_throughput_mode_penalises_load_latency_mode_does_not():
    servers = [srv("busy", 0, N, 1.0, load=1.0), srv("idle", 0, N, 1.5, load=0.0)]
    assert spans(plan_route(servers, N, need_cache_tokens=1, mode="latency")) == [("busy", 0, N)]
    assert spans(plan_route(servers, N, need_cache_tokens=1, mode="throughput")) == [("idle", 0, N)]


def test_throughput_mode_spreads_seeded_requests_over_equal_replicas():
    servers = [srv("r1", 0, N, 1.0), srv("r2", 0, N, 1.0)]
    rng = random.Random(1234)
    picks = Counter(plan_route(servers, N, need_cache_tokens=1, mode="throughput", rng=rng).hops[0].peer_id
                    for _ in range(100))
    assert sum(picks.values()) == 100
    assert 30 <= picks["r1"] <= 70 and 30 <= picks["r2"] <= 70, picks
    # the same seed gives the same sequence of choices
    a = [plan_route(servers, N, need_cache_tokens=1, mode="throughput", rng=random.Random(7)).hops[0].peer_id
         for _ in range(5)]
    b = [plan_route(servers, N, need_cache_tokens=1, mode="throughput", rng=random.Random(7)).hops[0].peer_id
         for _ in range(5)]
    assert a == b


def test_jitter_does_not_pick_a_much_worse_replica():
    servers = [srv("fast", 0, N, 1.0), srv("slow", 0, N, 2.0)]
    rng = random.Random(5)
    assert {plan_route(servers, N, need_cache_tokens=1, mode="throughput", rng=rng).hops[0].peer_id
            for _ in range(50)} == {"fast"}


def test_no_route_names_the_exact_uncovered_layers():
    servers = [srv("a", 0, 10), srv("b", 15, 20), srv("c", 21, N),
               srv("dead", 10, 15, alive=False), srv("full", 20, 21, cache=0)]
    with pytest.raises(NoRouteError) as ei:
        plan_route(servers, N, need_cache_tokens=64)
    msg = str(ei.value)
    assert msg.startswith(f"no live server with free cache covers layers 10-14, 20 of {M}")
    assert "1 offline" in msg and "1 without 64 free cache tokens" in msg
    assert isinstance(ei.value, SwarmError) and ei.value.status == 503


def test_no_route_in_an_empty_swarm_and_bad_arguments():
    with pytest.raises(NoRouteError, match="layers 0-29 of m2"):
        plan_route([], N, need_cache_tokens=1, model="m2")
    with pytest.raises(ValueError):
        plan_route([srv("a", 0, N)], 0, need_cache_tokens=1)
    with pytest.raises(ValueError):
        plan_route([srv("a", 0, N)], N, need_cache_tokens=1, mode="fastest")


def test_other_models_are_ignored_when_a_model_is_named():
    other = ServerView("x", "other", 0, N, 0.1, 10_000, rtt_ms=1.0)
    assert spans(plan_route([other, srv("a", 0, N, 1.0)], N, need_cache_tokens=1, model=M)) == [("a", 0, N)]


def test_failover_keeps_the_healthy_hops():
    servers = [srv("a", 0, 10, 1.0), srv("b", 10, 20, 1.0), srv("c", 20, 30, 1.0),
               srv("d", 10, 20, 1.2),  # a replacement for b's span
               srv("e", 0, 30, 1.0, rtt=28.0)]  # whole model: 60 ms/token vs 68 for a+d+c, within the margin
    old = Route([Hop("a", 0, 10), Hop("b", 10, 20), Hop("c", 20, 30)], 0.0)
    fresh = plan_route([s for s in servers if s.peer_id != "b"], N, need_cache_tokens=1)
    assert spans(fresh) == [("e", 0, N)]  # without preference the whole-model server wins
    # a and c hold this session's cache: even full, they are kept
    servers_full = [srv(s.peer_id, s.start, s.end, s.ms_per_layer, rtt=s.rtt_ms,
                        cache=0 if s.peer_id in "ac" else 10_000) for s in servers]
    r = replan_after_failure(old, "b", servers_full, N, need_cache_tokens=1)
    assert spans(r) == [("a", 0, 10), ("d", 10, 20), ("c", 20, 30)]
    # the failed peer is never used again, even if it looks alive and cheap
    servers_full[1] = srv("b", 10, 20, 0.1)
    assert "b" not in replan_after_failure(old, "b", servers_full, N, need_cache_tokens=1).peer_ids()


def test_failover_gives_up_the_old_hops_when_the_detour_is_far_cheaper():
    servers = [srv("a", 0, 10, 5.0), srv("c", 20, 30, 5.0), srv("d", 10, 20, 5.0), srv("e", 0, 30, 1.0)]
    old = Route([Hop("a", 0, 10), Hop("b", 10, 20), Hop("c", 20, 30)], 0.0)
    assert spans(replan_after_failure(old, "b", servers, N, need_cache_tokens=1)) == [("e", 0, N)]


def test_format_layers_and_gaps():
    assert format_layers([20, 10, 11, 12, 13, 14]) == "10-14, 20"
    assert format_layers([]) == ""
    assert format_layers([3]) == "3"
    assert coverage_gaps([srv("a", 0, 3), srv("b", 5, 9)], 8) == [3, 4]


# --- property test -------------------------------------------------------------------------------

@st.composite
def swarms(draw):
    n = draw(st.integers(1, 12))
    servers = []
    for i in range(draw(st.integers(0, 7))):
        start = draw(st.integers(0, n - 1))
        end = draw(st.integers(start + 1, n + 2))  # may run past n: it is clipped
        servers.append(ServerView(
            f"p{i}", M, start, end,
            ms_per_layer=draw(st.sampled_from([0.0, 0.5, 1.0, 2.0, 7.5])),
            free_cache_tokens=draw(st.sampled_from([0, 50, 100, 1000])),
            load=draw(st.sampled_from([0.0, 0.5, 1.0, 3.0])),
            rtt_ms=draw(st.sampled_from([None, 0.0, 5.0, 80.0])),
            alive=draw(st.booleans()), relayed=draw(st.booleans())))
    banned = draw(st.frozensets(st.sampled_from([f"p{i}" for i in range(8)]), max_size=3))
    need = draw(st.sampled_from([1, 100, 500]))
    mode = draw(st.sampled_from(["latency", "throughput"]))
    return n, servers, banned, need, mode, draw(st.integers(0, 2**32))


@settings(max_examples=300, deadline=None)
@given(swarms())
def test_property_routes_are_contiguous_and_exist_iff_covered(case):
    n, servers, banned, need, mode, seed = case
    eligible = {s.peer_id: s for s in servers if s.alive and s.peer_id not in banned and s.free_cache_tokens >= need}
    covered = not coverage_gaps(eligible.values(), n)
    try:
        r = plan_route(servers, n, need_cache_tokens=need, banned=banned, mode=mode, rng=random.Random(seed))
    except NoRouteError as e:
        assert not covered
        assert format_layers(coverage_gaps(eligible.values(), n)) in str(e)
        return
    assert covered
    assert route_is_valid(r, n)
    for h in r.hops:
        s = eligible[h.peer_id]
        assert s.start <= h.start < h.end <= min(s.end, n)
    assert r.est_ms_per_token > 0
    # the plan does not depend on the order of the input
    shuffled = servers[::-1]
    r2 = plan_route(shuffled, n, need_cache_tokens=need, banned=banned, mode=mode, rng=random.Random(seed))
    assert spans(r2) == spans(r)


def _brute_force_cost(servers: list[ServerView], n: int, cost: CostModel) -> float:
    """Cheapest latency-mode chain over every (a, b) sub-range edge of every server: no breakpoint trick."""
    known = sorted(s.ms_per_layer for s in servers if s.ms_per_layer > 0)
    fallback = (known[(len(known) - 1) // 2] + known[len(known) // 2]) / 2 if known else cost.default_ms_per_layer
    dist = [0.0] + [float("inf")] * n
    for a in range(n):
        for s in servers:
            if not s.start <= a < s.end:
                continue
            ms = s.ms_per_layer if s.ms_per_layer > 0 else fallback
            hop = (cost.default_rtt_ms if s.rtt_ms is None else s.rtt_ms) + cost.hop_ms \
                + (cost.relay_penalty_ms if s.relayed else 0)
            for b in range(a + 1, min(s.end, n) + 1):
                dist[b] = min(dist[b], dist[a] + hop + (b - a) * ms)
    return dist[n]


@settings(max_examples=200, deadline=None)
@given(swarms())
def test_property_latency_plans_are_optimal_over_all_sub_ranges(case):
    n, servers, _, _, _, _ = case
    live = [s for s in servers if s.alive]
    assume(not coverage_gaps(live, n))
    r = plan_route(live, n, need_cache_tokens=0)
    assert r.est_ms_per_token == pytest.approx(_brute_force_cost(live, n, CostModel()), rel=1e-9, abs=1e-9)


def test_a_steps_fixed_cost_keeps_one_hop_where_round_trips_alone_would_pick_two():
    # loopback figures (docs/ROUTING.md): a whole-model server against two faster-pinging halves
    whole = srv("w", 0, 6, 1000 / 860 / 6, rtt=4.5)
    halves = [srv("h1", 0, 3, 1000 / 1282 / 3, rtt=1.8), srv("h2", 3, 6, 1000 / 1660 / 3, rtt=1.5)]
    no_fixed = CostModel(hop_ms=0.0)
    assert [h.peer_id for h in plan_route([whole, *halves], 6, need_cache_tokens=1, cost=no_fixed).hops] == ["h1", "h2"]
    assert [h.peer_id for h in plan_route([whole, *halves], 6, need_cache_tokens=1).hops] == ["w"]
