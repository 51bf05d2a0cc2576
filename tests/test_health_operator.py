"""The health page's operator view, without a network: the address to hand out, CPU/RAM, sessions,
request and error counts; rows sorted with departed peers apart (their last-seen time, not an old RTT);
a peer's leaving mark shown as "left"; the routes of sessions served for CLI/SDK clients; every status
and reachability value explained."""

from __future__ import annotations

import random
from collections import deque
from types import SimpleNamespace

from swarmlm.crypto.identity import Identity
from swarmlm.net.state.sync import StateSync
from swarmlm.node.front.health import HealthTracker, swarm_snapshot
from swarmlm.node.front.health_node import ProcessStats
from swarmlm.node.front.health_page import render_fragment
from swarmlm.node.front.metrics import NodeMetrics

from test_health_snapshot import ME, NOW, _exchange, fake_node, own_state


def peer_state(seed: int, heartbeat: float, **fields) -> StateSync:
    s = StateSync(Identity.from_seed(bytes([seed]) * 32), now=heartbeat - 10, rng=random.Random(seed))
    s.publish_local(heartbeat, hosted=[{"model": "m", "start": 2, "end": 6}], **fields)
    return s


def test_rows_sorted_departed_apart_with_last_seen_and_left_explained():
    mine = own_state(hosted=((0, 6),))
    online, left, gone = peer_state(21, NOW - 1), peer_state(22, NOW - 3), peer_state(23, NOW - 200)
    left.publish_local(NOW - 3, left=NOW - 3)  # its clean shutdown
    for other in (online, left, gone):
        _exchange(mine, other, NOW)
    node = fake_node(mine, connected={online.peer_id, left.peer_id})
    node.host.peers.record_rtt(gone.peer_id, 7.5, 0.0)  # an old RTT must not be shown for a departed peer
    snap = swarm_snapshot(node, HealthTracker(), now=NOW)
    assert [p["status"] for p in snap["peers"]] == ["online", "online", "left", "offline"]
    assert snap["peers"][0]["self"]
    departed = {p["peer_id"]: p for p in snap["peers"][2:]}
    assert departed[gone.peer_id]["rtt_ms"] is None and departed[gone.peer_id]["last_seen"] == NOW - 200
    assert departed[left.peer_id]["left"] == NOW - 3
    html = render_fragment(snap)
    live_table, rest = html.split("Offline and departed peers", 1)
    assert f'data-peer="{left.peer_id}"' not in live_table and f'data-peer="{gone.peer_id}"' not in live_table
    assert rest.index(f'data-peer="{left.peer_id}"') < rest.index(f'data-peer="{gone.peer_id}"')  # latest first
    assert "3m20s ago" in rest and "signed leaving mark" in html
    assert "two peers must dial it back" in html  # "unknown" reachability explained


def test_this_node_panel_and_served_routes():
    node = fake_node(own_state(hosted=((0, 6),)))
    node.host.addrs = ["/ip4/127.0.0.1/tcp/4001/p2p/" + ME.peer_id, "/ip4/192.0.2.7/tcp/4001/p2p/" + ME.peer_id]
    node.host.rpc_server = SimpleNamespace(stats=SimpleNamespace(calls=12, errors=1))
    client = Identity.from_seed(b"\x31" * 32).peer_id
    node.shard = SimpleNamespace(sessions={"s1": object()}, steps_served=40, served=deque([
        {"at": NOW - 3, "client": client, "model": "m", "steps": 9, "route": [[ME.peer_id, 0, 2], ["Q" * 52, 2, 6]]}]))
    metrics = NodeMetrics(node)
    metrics.http_requests.labels("/v1/completions", "POST", "200").inc(3)
    metrics.http_requests.labels("/v1/completions", "POST", "503").inc()
    snap = swarm_snapshot(node, HealthTracker(), now=NOW, metrics=metrics, proc=ProcessStats())
    n = snap["node"]
    assert n["bootstrap"] == "/ip4/192.0.2.7/tcp/4001/p2p/" + ME.peer_id  # not loopback when there is a choice
    assert (n["sessions_open"], n["http_requests"], n["http_errors"], n["rpc_calls"]) == (1, 4, 1, 12)
    assert n["rss_mb"] > 0 and n["ram_total_mb"] > 0 and n["cpu_percent"] is not None
    (route,) = snap["routes"]
    assert route["source"] == "served" and route["client"] == client and len(route["hops"]) == 2
    html = render_fragment(snap)
    assert f'<code id="bootstrap-addr">{n["bootstrap"]}</code>' in html
    assert 'data-sessions="1" data-requests="4" data-errors="1"' in html
    assert "client <span" in html and "9 steps" in html
