"""The health page shows each host's live load from the swarm state: open sessions, queued steps and
the tokens per second it served; out-of-range load fields in a peer entry are rejected."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from swarmlm.crypto.identity import Identity
from swarmlm.net.peers import PeerTable
from swarmlm.net.state.schema import InvalidUpdate, ModelInfo, parse_peer
from swarmlm.net.state.sync import StateSync
from swarmlm.node.front.health import swarm_snapshot
from swarmlm.node.front.health_page import render_fragment

NOW = 1_800_000_000.0
ME = Identity.from_seed(b"\x07" * 32)


def fake_node(sync: StateSync) -> SimpleNamespace:
    host = SimpleNamespace(peers=PeerTable(), addrs=[], is_connected=lambda peer: False)
    return SimpleNamespace(peer_id=ME.peer_id, state=SimpleNamespace(state=sync.state), host=host,
                           reachability="public", http_addr="127.0.0.1:8080", started_at=0.0, consensus=None,
                           client=SimpleNamespace(recent_routes=[]))


def test_hosts_show_sessions_queue_and_served_tokens_per_second():
    sync = StateSync(ME, now=NOW - 30, rng=random.Random(0))
    sync.publish_local(NOW - 1, models=[ModelInfo("m", "abc", 6, "fp32")], reach="public",
                       hosted=[{"model": "m", "start": 0, "end": 6}], throughput=12.5, free_kv=100,
                       sessions=7, queue=3, served=41.26, capacity=90.0)
    snap = swarm_snapshot(fake_node(sync), now=NOW)
    (host,) = snap["models"][0]["hosts"]
    assert (host["sessions"], host["queue"], host["served_tok_s"]) == (7, 3, 41.3)
    (peer,) = snap["peers"]
    assert (peer["sessions"], peer["queue"], peer["served_tok_s"]) == (7, 3, 41.3)
    html = render_fragment(snap)
    assert "<th>sessions</th><th>queued steps</th><th>served (tok/s)</th>" in html
    assert "<td>7</td><td>3</td><td>41.3</td>" in html


@pytest.mark.parametrize("field,value", [("sessions", -1), ("queue", 1.5), ("served", float("inf")),
                                         ("capacity", "fast")])
def test_bad_load_fields_are_rejected(field, value):
    with pytest.raises(InvalidUpdate):
        parse_peer(ME.peer_id, {field: value})
