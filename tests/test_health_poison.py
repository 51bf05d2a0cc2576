"""The health page against poisoned records: NaN and wrong-typed round summaries, malformed verdicts
and the largest layer count the state admits render (valid JSON, bounded HTML); one snapshot per
interval is shared by all requests."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import trio

from swarmlm.crypto.identity import Identity
from swarmlm.net.peers import PeerTable
from swarmlm.net.state.schema import MAX_LAYERS, ModelInfo
from swarmlm.net.state.sync import StateSync
from swarmlm.node.front.health import swarm_snapshot
from swarmlm.node.front.health_cache import SnapshotCache, finite
from swarmlm.node.front.health_page import render_fragment

NOW = 1_800_000_000.0
ME = Identity.from_seed(b"\x17" * 32)


def node_with(sync: StateSync) -> SimpleNamespace:
    host = SimpleNamespace(peers=PeerTable(), addrs=["/ip4/127.0.0.1/tcp/1/p2p/" + ME.peer_id],
                           is_connected=lambda p: False)
    return SimpleNamespace(peer_id=ME.peer_id, state=SimpleNamespace(state=sync.state), host=host,
                           reachability="public", http_addr="127.0.0.1:1", started_at=0.0, consensus=None,
                           client=SimpleNamespace(recent_routes=[]))


def test_poisoned_records_render_and_the_page_is_cached():
    sync = StateSync(ME, now=NOW - 30, rng=random.Random(0))
    sync.publish_local(NOW - 1, models=[ModelInfo("m", "h", MAX_LAYERS, "fp32")],
                       hosted=[{"model": "m", "start": 0, "end": MAX_LAYERS}])
    sync.add_record("round", {"round_id": 5, "winner": ["x"], "scores": {"a": float("nan"), "b": "high", "c": 0.5}},
                    NOW - 20)
    sync.add_record("round", {"scores": [1, 2, 3]}, NOW - 19)
    sync.add_record("verdict", {"subject": {"not": "a peer"}, "verdict": "fail"}, NOW - 10)
    snap = finite(swarm_snapshot(node_with(sync), now=NOW))
    text = json.dumps(snap, allow_nan=False)  # what the JSON API sends: no NaN can reach it
    (listless, plain) = snap["rounds"]  # newest first
    assert listless["scores"] == [] and listless["winner"] is None
    assert {s["peer_id"]: s["score"] for s in plain["scores"]} == {"a": None, "b": None, "c": 0.5}
    assert snap["peers"][0]["verdicts"] == []
    html = render_fragment(snap)
    assert snap["models"][0]["layers"] == MAX_LAYERS and len(html) < 2_000_000 and len(text) < 2_000_000


async def test_concurrent_requests_share_one_snapshot():
    calls = []

    def compute() -> dict:
        calls.append(1)
        return {"x": float("inf"), "n": len(calls)}

    cache = SnapshotCache(compute, max_age_s=60.0)
    got = []

    async def request() -> None:
        got.append(await cache.get())

    async with trio.open_nursery() as nursery:
        for _ in range(50):
            nursery.start_soon(request)
    assert len(calls) == 1 and got == [{"x": None, "n": 1}] * 50
    assert await cache.rendered("page", lambda s: f"<p>{s['n']}</p>") == "<p>1</p>"
