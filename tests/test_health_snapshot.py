"""The health page's data and HTML without a network: coverage gaps, peer status, signed consensus
rounds and the reputation they imply, verification verdicts, routes, escaping."""

from __future__ import annotations

import random
from types import SimpleNamespace

from swarmlm.consensus.judging import LogLikelihoodJudge
from swarmlm.consensus.local import run_local_round
from swarmlm.consensus.round import Finished
from swarmlm.crypto.identity import Identity
from swarmlm.net.peers import PeerTable
from swarmlm.net.state.schema import ModelInfo
from swarmlm.net.state.sync import StateSync
from swarmlm.node.front.health import HealthTracker, swarm_snapshot
from swarmlm.node.front.health_page import render_fragment, render_page

NOW = 1_800_000_000.0
ME = Identity.from_seed(b"\x07" * 32)
NODES = [Identity.from_seed(bytes([i + 1]) * 32) for i in range(3)]


class FakeHost:
    def __init__(self, connected: set[str]) -> None:
        self.connected = connected
        self.peers = PeerTable()
        self.addrs = ["/ip4/127.0.0.1/tcp/1/p2p/" + ME.peer_id]

    def is_connected(self, peer: str) -> bool:
        return peer in self.connected


def fake_node(sync: StateSync, connected: set[str] = frozenset(), routes=()) -> SimpleNamespace:
    return SimpleNamespace(peer_id=ME.peer_id, state=SimpleNamespace(state=sync.state), host=FakeHost(set(connected)),
                           reachability="public", http_addr="127.0.0.1:8080", started_at=0.0, consensus=None,
                           client=SimpleNamespace(recent_routes=list(routes)))


def own_state(hosted=((0, 2),), agent="swarmlm/0.1.0 <script>") -> StateSync:
    sync = StateSync(ME, now=NOW - 30, rng=random.Random(0))
    sync.publish_local(NOW - 1, models=[ModelInfo("m", "abc", 6, "fp32")], agent=agent, reach="public",
                       hosted=[{"model": "m", "start": a, "end": b} for a, b in hosted], throughput=12.5, free_kv=100)
    return sync


def signed_round() -> bytes:
    quality = {"Paris": 3.0, "Lyon": 1.0, "Nice": 0.5}
    answers = dict(zip(NODES, quality))
    judges = {n: LogLikelihoodJudge(lambda prompt, answer: quality[answer], margin=0.0) for n in NODES}
    _, log = run_local_round(ME, "Capital of France?", answers, judges, {n.peer_id: 1.0 for n in NODES}, now=NOW - 100)
    fin = next(a for a in log if isinstance(a, Finished))
    return fin.packet.envelope.encode()


def test_gaps_are_listed_and_the_page_marks_them_red():
    snap = swarm_snapshot(fake_node(own_state(hosted=((0, 2),))), now=NOW)
    (m,) = snap["models"]
    assert m["gaps"] == [[2, 6]] and m["coverage"] == round(2 / 6, 4) and not m["complete"]
    assert m["layer_hosts"][:2] == [[ME.peer_id], [ME.peer_id]]
    assert snap["summary"] == {"peers": 1, "online": 1, "models": 1, "complete": False}
    html = render_fragment(snap)
    assert html.count('<th class="gap">') == 4 and 'data-coverage="gaps"' in html
    assert "gaps: [2, 6)" in html


def test_full_coverage_and_html_escaping():
    snap = swarm_snapshot(fake_node(own_state(hosted=((0, 6),))), now=NOW)
    assert snap["models"][0]["complete"] and snap["summary"]["complete"]
    page = render_page(snap)
    assert page.startswith("<!doctype html>") and "/static/health.js" in page and "/static/health.css" in page
    assert "<script>" not in page.replace('<script src="/static/health.js"></script>', "")
    assert "swarmlm/0.1.0 &lt;script&gt;" in page
    assert "http://" not in page and "https://" not in page  # nothing from a CDN


def test_rounds_reputation_and_verdicts_come_from_signed_records():
    sync = own_state()
    sync.add_record("round", signed_round(), NOW - 50)
    sync.add_record("verdict", {"subject": ME.peer_id, "verdict": "pass", "reason": "spot check 3/3"}, NOW - 40)
    sync.add_record("verdict", {"subject": ME.peer_id, "verdict": "fail", "max_err": float("nan")}, NOW - 30)
    sync.add_record("verdict", {"subject": ME.peer_id, "ok": False}, NOW - 25)  # not a verdict: not shown
    sync.add_record("round", {"round_id": "plain", "winner": NODES[1].peer_id, "scores": {NODES[1].peer_id: 0.9}},
                    NOW - 20)
    snap = swarm_snapshot(fake_node(sync), now=NOW)
    plain, signed = snap["rounds"]  # newest first
    assert plain["winner"] == NODES[1].peer_id and plain["scores"] == [{"peer_id": NODES[1].peer_id, "score": 0.9}]
    assert signed["verified"] and signed["winner"] == NODES[0].peer_id  # "Paris" wins
    assert [s["peer_id"] for s in signed["scores"]] == [n.peer_id for n in NODES]
    (me,) = snap["peers"]
    assert [v["verdict"] for v in me["verdicts"]] == ["fail", "pass"]
    # the reputation fold ran over the signed round (uncalibrated judges earn no weight, so it may be 0)
    assert me["reputation"] is None  # ME was only the coordinator: no score of its own
    html = render_fragment(snap)
    assert "No consensus rounds" not in html and "…" + NODES[0].peer_id[-8:] in html
    assert 'class="verdict badv"' in html and 'class="verdict ok"' in html


def test_a_peer_that_dropped_its_connection_is_disconnected_then_offline():
    # two peers from one engine's point of view: ours and a replica fed from another engine
    other = Identity.from_seed(b"\x09" * 32)
    theirs = StateSync(other, now=NOW - 30, rng=random.Random(1))
    theirs.publish_local(NOW - 2, hosted=[{"model": "m", "start": 2, "end": 6}], reach="relayed")
    sync = own_state()
    _exchange(sync, theirs, NOW)
    tracker = HealthTracker()
    node = fake_node(sync, connected={other.peer_id})
    snap = swarm_snapshot(node, tracker, now=NOW)
    peer = next(p for p in snap["peers"] if p["peer_id"] == other.peer_id)
    assert peer["status"] == "online" and peer["reach"] == "punched"  # relayed peer, direct connection
    assert snap["summary"]["complete"]
    node.host.connected.clear()  # the connection drops; its heartbeat is still fresh
    snap = swarm_snapshot(node, tracker, now=NOW + 1)
    peer = next(p for p in snap["peers"] if p["peer_id"] == other.peer_id)
    assert peer["status"] == "disconnected" and snap["models"][0]["gaps"] == [[2, 6]]
    snap = swarm_snapshot(node, tracker, now=NOW + 120)  # past the TTL
    peer = next(p for p in snap["peers"] if p["peer_id"] == other.peer_id)
    assert peer["status"] == "offline" and snap["summary"]["online"] == 1


def test_recent_routes_are_shown_newest_first():
    routes = [{"model": "m", "at": NOW - 5, "tokens_per_s": 3.0,
               "hops": [{"peer_id": ME.peer_id, "start": 0, "end": 6, "ms": 4.5}]},
              {"model": "m", "at": NOW - 1, "tokens_per_s": 5.0, "hops": []}]
    snap = swarm_snapshot(fake_node(own_state(), routes=routes), now=NOW)
    assert [r["at"] for r in snap["routes"]] == [NOW - 1, NOW - 5]
    assert "4.5 ms" in render_fragment(snap)


def _exchange(a: StateSync, b: StateSync, now: float) -> None:
    """Run the sync protocol between two engines until both are quiet."""
    queue = [(b.peer_id, m, a) for _, m in a.on_connect(b.peer_id)] + [(a.peer_id, m, b) for _, m in b.on_connect(a.peer_id)]
    for _ in range(200):
        if not queue:
            return
        sender, msg, src = queue.pop(0)
        dst = b if src is a else a
        for _, out in dst.on_message(src.peer_id, msg, now):
            queue.append((dst.peer_id, out, dst))
    raise AssertionError("sync did not settle")


def test_signed_rounds_are_verified_once_per_viewer(monkeypatch):
    sync = own_state()
    sync.add_record("round", signed_round(), NOW - 50)
    node, tracker = fake_node(sync), HealthTracker()
    first = swarm_snapshot(node, tracker, now=NOW)

    def boom(*a, **k):
        raise AssertionError("re-verified on a refresh")

    monkeypatch.setattr("swarmlm.consensus.audit.verify_record", boom)
    monkeypatch.setattr("swarmlm.consensus.reputation.compute_reputation", boom)
    again = swarm_snapshot(node, tracker, now=NOW + 2)
    assert again["rounds"] == first["rounds"] and first["rounds"][0]["verified"]
