"""Swarm-state sync under an adversarial peer: every bad update is rejected, counted, scored down.

Each case injects what a malicious neighbour ("mallory") could send to an honest node, checks the
rejection reason and the sender's score, and then that the honest swarm still converges.
"""

from __future__ import annotations

import random

import msgpack
import pytest
from pycrdt import Doc, Map

from swarmlm.crypto.envelope import Envelope
from swarmlm.crypto.identity import Identity
from swarmlm.net.state.rights import client_id_for
from swarmlm.net.state.schema import make_record
from swarmlm.net.state.sync import DOMAIN, StateSync
from swarmlm.testnet.memnet import MemNet, make_swarm, random_write


@pytest.fixture
def swarm():
    net = make_swarm(5, seed=21)
    for pid in sorted(net.nodes):
        _, out = net.nodes[pid].add_record("round", {"by": pid}, net.now)
        net.send(pid, out + net.nodes[pid].publish_local(net.now, load=1.0))
    net.settle()
    ids = sorted(net.nodes)
    return net, net.nodes[ids[0]], net.nodes[ids[1]], net.nodes[ids[2]]  # net, victim, alice, mallory


def env_msg(*raws: bytes) -> bytes:
    return msgpack.packb(["env", list(raws)], use_bin_type=True)


def seal_as(signer: Identity, owner: str, epoch: int, seq: int, update: bytes, snap: bool = False) -> bytes:
    payload = msgpack.packb({"o": owner, "e": epoch, "s": seq, "k": int(snap), "u": update}, use_bin_type=True)
    return Envelope.seal(signer, DOMAIN, payload).encode()


def mallory_write(mal: StateSync, fn, records: bool = False) -> bytes:
    """A raw Yjs change to one of mallory's own documents, sealed with its next sequence number."""
    rep = mal.own_records if records else mal.own
    update = rep.doc._write(lambda: fn(rep.doc))
    rep.seq += 1
    return mal._seal(rep.doc.key, rep.seq, False, update).raw


def deliver(net: MemNet, victim: StateSync, sender: str, data: bytes) -> None:
    net.send(victim.peer_id, victim.on_message(sender, data, net.now))


def still_works(net: MemNet) -> None:
    rng = random.Random(5)
    for k in range(20):
        random_write(net, rng, k)
    net.settle()
    assert net.converged()


def check(victim: StateSync, sender: str, reason: str) -> None:
    assert victim.rejected[reason] >= 1, victim.rejected
    assert victim.scores[sender] < 0


def test_update_to_another_peers_entry_is_rejected(swarm):
    net, victim, alice, mal = swarm
    rogue = Doc(client_id=client_id_for(alice.peer_id, alice.own.epoch) ^ 0)
    rogue.get("peer", type=Map)["agent"] = "pwned"
    raw = seal_as(mal.identity, alice.peer_id, alice.own.epoch, alice.own.seq + 1, rogue.get_update())
    deliver(net, victim, mal.peer_id, env_msg(raw))
    check(victim, mal.peer_id, "not_owner")
    assert victim.state.peer(alice.peer_id).agent != "pwned"
    still_works(net)


def test_forged_signature_is_rejected(swarm):
    net, victim, alice, mal = swarm
    rogue = Doc(client_id=client_id_for(alice.peer_id, alice.own.epoch))
    rogue.get("peer", type=Map)["agent"] = "pwned"
    good = Envelope.decode(alice.own.log[0].raw)
    payload = msgpack.packb({"o": alice.peer_id, "e": alice.own.epoch, "s": alice.own.seq + 1, "k": 0,
                             "u": rogue.get_update()}, use_bin_type=True)
    forged = Envelope(DOMAIN, alice.peer_id, payload, good.signature).encode()
    flipped = Envelope(good.domain, good.author, good.payload, bytes([good.signature[0] ^ 1]) + good.signature[1:])
    deliver(net, victim, mal.peer_id, env_msg(forged))
    check(victim, mal.peer_id, "signature")
    victim2 = net.nodes[sorted(net.nodes)[3]]
    victim2.replicas.pop(alice.peer_id)  # so the flipped snapshot is not skipped as already known
    deliver(net, victim2, mal.peer_id, env_msg(flipped.encode()))
    check(victim2, mal.peer_id, "signature")
    still_works(net)


def test_deleting_or_changing_a_record_is_rejected(swarm):
    net, victim, alice, mal = swarm
    key = next(iter(mal.own_records.doc.records))
    deleted = mallory_write(mal, lambda d: d._records.pop(key), records=True)
    deliver(net, victim, mal.peer_id, env_msg(deleted))
    check(victim, mal.peer_id, "record_removed")
    assert victim.state.record(key) is not None  # rolled back: the record is still there
    assert victim.author_faults[mal.peer_id] >= 1
    mal2 = net.nodes[sorted(net.nodes)[4]]
    key2 = next(iter(mal2.own_records.doc.records))
    other = make_record(mal2.identity, "round", {"other": 1}, 0.0)
    changed = mallory_write(mal2, lambda d: d._records.__setitem__(key2, other.envelope), records=True)
    deliver(net, victim, mal2.peer_id, env_msg(changed))
    assert victim.rejected["record_removed"] >= 2 and victim.scores[mal2.peer_id] < 0


def test_records_must_be_signed_by_the_owner_and_keyed_by_content(swarm):
    net, victim, alice, mal = swarm
    foreign = make_record(alice.identity, "round", {"x": 1}, 0.0)
    raw = mallory_write(mal, lambda d: d._records.__setitem__(foreign.key, foreign.envelope), records=True)
    deliver(net, victim, mal.peer_id, env_msg(raw))
    check(victim, mal.peer_id, "bad_record")
    own = make_record(mal.identity, "round", {"x": 2}, 0.0)
    mal.own_records.seq -= 1  # retry the same sequence number with another bad record
    raw = mallory_write(mal, lambda d: d._records.__setitem__("0" * 64, own.envelope), records=True)
    deliver(net, victim, mal.peer_id, env_msg(raw))
    assert victim.rejected["bad_record"] >= 2
    assert victim.state.record(foreign.key) is None


def test_foreign_client_id_in_own_document_is_rejected(swarm):
    net, victim, alice, mal = swarm
    rogue = Doc(client_id=client_id_for(alice.peer_id, alice.own.epoch))  # writes as alice's client
    rogue.get("peer", type=Map)["agent"] = "alice?"
    raw = seal_as(mal.identity, mal.peer_id, mal.own.epoch, mal.own.seq + 1, rogue.get_update())
    deliver(net, victim, mal.peer_id, env_msg(raw))
    check(victim, mal.peer_id, "foreign_client")
    still_works(net)


@pytest.mark.parametrize("data", [
    b"\xc1not msgpack",
    msgpack.packb(["env", [b"\x93garbage"]]),
    msgpack.packb(["env", [123]]),
    msgpack.packb(["sv", "not a map", 1]),
    msgpack.packb(["what", 1]),
])
def test_messages_that_do_not_decode_are_rejected(swarm, data):
    net, victim, alice, mal = swarm
    deliver(net, victim, mal.peer_id, data)
    check(victim, mal.peer_id, "decode")
    still_works(net)


def test_signed_garbage_update_and_payload_are_rejected(swarm):
    net, victim, alice, mal = swarm
    raw = seal_as(mal.identity, mal.peer_id, mal.own.epoch, mal.own.seq + 1, b"\x05\xff\xff garbage")
    deliver(net, victim, mal.peer_id, env_msg(raw))
    bad_payload = Envelope.seal(mal.identity, DOMAIN, b"\x01\x02\x03").encode()
    deliver(net, victim, mal.peer_id, env_msg(bad_payload))
    assert victim.rejected["decode"] >= 2 and victim.scores[mal.peer_id] < 0
    still_works(net)


def test_oversized_message_is_rejected(swarm):
    net, victim, alice, mal = swarm
    deliver(net, victim, mal.peer_id, b"\x00" * (victim.limits.max_message_bytes + 1))
    check(victim, mal.peer_id, "too_large")


def test_repeat_offender_is_banned_and_ignored(swarm):
    net, victim, alice, mal = swarm
    for _ in range(12):
        deliver(net, victim, mal.peer_id, b"\xc1")
    assert victim.banned(mal.peer_id)
    before = victim.rejected["banned"]
    assert victim.on_message(mal.peer_id, msgpack.packb(["dig", "x"]), net.now) == []
    assert victim.rejected["banned"] == before + 1
    assert not victim.banned(alice.peer_id)


def test_relayed_envelopes_keep_the_owners_signature(swarm):
    """A relay forwards the owner's envelope verbatim: accepted from anyone, credited to the relay."""
    net, victim, alice, mal = swarm
    raws = [e.raw for e in alice.own.log]
    victim.replicas.pop(alice.peer_id)
    victim.state.docs.pop(alice.peer_id)
    deliver(net, victim, mal.peer_id, env_msg(*raws))
    assert victim.state.peer(alice.peer_id) == alice.state.peer(alice.peer_id)
    assert victim.scores[mal.peer_id] > 0


def test_equivocating_owner_is_detected(swarm):
    net, victim, alice, mal = swarm
    seq = mal.own.seq + 1
    a = mallory_write(mal, lambda d: d._peer.__setitem__("load", 7.0))
    mal.own.seq -= 1
    b = mallory_write(mal, lambda d: d._peer.__setitem__("load", 8.0))
    assert Envelope.decode(a).payload != Envelope.decode(b).payload and mal.own.seq == seq
    deliver(net, victim, mal.peer_id, env_msg(a))
    deliver(net, victim, mal.peer_id, env_msg(b))
    assert victim.rejected["equivocation"] == 1 and victim.author_faults[mal.peer_id] == 1
