"""Round trips in the peer table: the EMA for display, the least recent ping for routing."""

from __future__ import annotations

import pytest

from swarmlm.net.peers import BASE_WINDOW_S, PeerTable
from swarmlm.node.directory import servers_for


def test_one_busy_ping_moves_the_ema_but_not_the_routing_figure():
    t = PeerTable()
    assert t.get("p") is None
    for i, ms in enumerate([3.0, 3.2, 2.9, 12.0]):  # the last ping caught the peer busy
        t.record_rtt("p", ms, 100.0 + 10 * i)
    info = t.get("p")
    assert info.rtt_ms == pytest.approx(0.7 * (0.7 * (0.7 * 3.0 + 0.3 * 3.2) + 0.3 * 2.9) + 0.3 * 12.0)
    assert info.rtt_ms > 5.0 and info.base_rtt_ms == 2.9


def test_the_routing_figure_forgets_pings_older_than_its_window():
    t = PeerTable()
    t.record_rtt("p", 1.0, 0.0)
    t.record_rtt("p", 8.0, BASE_WINDOW_S + 1.0)  # the path itself got slower: the old minimum is gone
    assert t.get("p").base_rtt_ms == 8.0
    t.ensure("q")
    assert t.get("q").base_rtt_ms is None  # never measured


def test_the_planner_reads_the_routing_figure():
    class Entry:
        peer_id, throughput, free_kv, load, reach, sessions = "p", 1000.0, 1000, 0.0, "direct", 0

    class Hosted:
        start, end = 0, 4

    class State:
        def hosts_of(self, model, now):
            return [(Entry(), Hosted())]

    t = PeerTable()
    for i, ms in enumerate([2.0, 9.0]):
        t.record_rtt("p", ms, float(i))
    (view,) = servers_for(State(), "m", 5.0, t)
    assert view.rtt_ms == 2.0
