"""The leaving mark: a node stopped cleanly (SIGTERM, Ctrl-C) says so in its own signed entry, and every
replica lists it as "left" at once instead of "online" until its heartbeat times out. Only the owner
writes its entry, so nobody can make another peer leave; a later heartbeat (a restart) takes it back.
One liveness rule (``peer_status``) gives online / disconnected / left / offline everywhere."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import trio
from pycrdt import Doc, Map

from swarmlm.crypto.identity import Identity
from swarmlm.net.state.rights import client_id_for
from swarmlm.net.state.schema import InvalidUpdate, PeerEntry, parse_peer
from swarmlm.net.state.swarm import peer_status
from swarmlm.net.state.sync import StateSync
from swarmlm.net.state_service import StateService
from swarmlm.testnet.memnet import make_swarm

from test_state_adversarial import deliver, env_msg, seal_as

NOW = 1_800_000_000.0


def test_the_liveness_rule():
    e = PeerEntry("p", heartbeat=NOW - 5)
    assert peer_status(e, NOW, 60) == "online" and peer_status(e, NOW, 60, "up") == "online"
    assert peer_status(e, NOW, 60, "lost") == "disconnected"  # fresh heartbeat, connection gone: a kill
    assert peer_status(PeerEntry("p", heartbeat=NOW - 61), NOW, 60, "up") == "offline"
    left = PeerEntry("p", heartbeat=NOW - 5, left=NOW - 5)
    assert peer_status(left, NOW, 60, "up") == "left" and not left.online(NOW, 60)
    restarted = PeerEntry("p", heartbeat=NOW - 1, left=NOW - 5)  # a restart's heartbeat supersedes the mark
    assert not restarted.has_left and peer_status(restarted, NOW, 60) == "online"


def test_a_leaving_time_in_the_future_is_rejected():
    assert parse_peer("p", {"heartbeat": NOW, "left": NOW}, NOW).has_left
    with pytest.raises(InvalidUpdate):
        parse_peer("p", {"heartbeat": NOW, "left": NOW + 10_000}, NOW)
    with pytest.raises(InvalidUpdate):
        parse_peer("p", {"heartbeat": NOW, "left": "soon"}, NOW)


def test_a_leaving_mark_reaches_every_replica_and_only_lists_its_owner_as_left():
    net = make_swarm(5, seed=3)
    net.now += 100.0
    ids = sorted(net.nodes)
    for pid in ids:
        net.send(pid, net.nodes[pid].publish_local(net.now, load=0.0))
    net.settle()
    leaver = net.nodes[ids[0]]
    net.send(ids[0], leaver.publish_local(net.now, left=net.now))
    net.settle()
    for pid in ids[1:]:
        rows = {r["peer_id"]: r for r in net.nodes[pid].state.status_rows(net.now)}
        assert rows[ids[0]]["status"] == "left" and not rows[ids[0]]["online"]
        assert all(rows[p]["status"] == "online" for p in ids[1:])
        assert ids[0] not in {e.peer_id for e in net.nodes[pid].state.peers(net.now)}  # routing skips it
    net.now += 1.0  # it comes back: its next heartbeat takes the mark back
    net.send(ids[0], leaver.publish_local(net.now))
    net.settle()
    assert all(net.nodes[pid].state.is_online(ids[0], net.now) for pid in ids)


def test_nobody_can_make_another_peer_leave():
    net = make_swarm(4, seed=4)
    ids = sorted(net.nodes)
    for pid in ids:
        net.send(pid, net.nodes[pid].publish_local(net.now, load=0.0))
    net.settle()
    victim, alice, mal = (net.nodes[p] for p in ids[:3])
    rogue = Doc(client_id=client_id_for(alice.peer_id, alice.own.epoch))
    rogue.get("peer", type=Map)["left"] = net.now + 1
    raw = seal_as(mal.identity, alice.peer_id, alice.own.epoch, alice.own.seq + 1, rogue.get_update())
    deliver(net, victim, mal.peer_id, env_msg(raw))
    assert victim.rejected["not_owner"] >= 1 and victim.state.is_online(alice.peer_id, net.now)


class _Host:
    def __init__(self, identity: Identity) -> None:
        self.identity = identity
        self.peer_id = identity.peer_id
        self.rpc_server = SimpleNamespace(add_stream=lambda *a: None)


async def test_leave_publishes_the_mark_and_no_heartbeat_takes_it_back():
    svc = StateService(_Host(Identity.generate()), None, heartbeat_s=0.05, local_fields=lambda: {"load": 0.0})
    svc.publish_now()
    await svc.leave(grace_s=0.1)
    me = svc.state.peer(svc.host.peer_id)
    assert me.has_left and me.left == me.heartbeat
    svc.publish_now()  # the heartbeat loop keeps running until the node exits: it must not undo the mark
    await trio.sleep(0)
    assert svc.state.peer(svc.host.peer_id).has_left


def test_a_light_client_sync_engine_has_no_entry_to_mark():
    eng = StateSync(Identity.generate(), now=NOW, rng=random.Random(0))
    assert eng.state.peer(eng.peer_id) is None
