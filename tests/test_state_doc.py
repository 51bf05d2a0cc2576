"""Swarm-state document: typed accessors, client-id binding, validation of owner documents."""

from __future__ import annotations

import pycrdt
import pytest

from swarmlm.crypto.identity import Identity
from swarmlm.net.state.doc import OwnerDoc
from swarmlm.net.state.rights import client_id_for, decode_state_vector, doc_owner, records_key
from swarmlm.net.state.schema import HostedRange, InvalidUpdate, ModelInfo, StateError, make_record
from swarmlm.net.state.swarm import SwarmState

A = Identity.from_seed(b"a" * 32)
B = Identity.from_seed(b"b" * 32)


def test_client_id_is_bound_to_peer_and_epoch():
    assert client_id_for(A.peer_id, 5) == client_id_for(A.peer_id, 5)
    assert client_id_for(A.peer_id, 5) != client_id_for(A.peer_id, 6)
    assert client_id_for(A.peer_id, 5) != client_id_for(B.peer_id, 5)
    assert client_id_for(A.peer_id, 5) != client_id_for(records_key(A.peer_id), 5)
    assert doc_owner(records_key(A.peer_id)) == doc_owner(A.peer_id) == A.peer_id
    d = OwnerDoc(A.peer_id, 5, local=True)
    up = d.write_peer(agent="x", heartbeat=1.0)
    assert set(decode_state_vector(pycrdt.get_state(up))) == {client_id_for(A.peer_id, 5)}


def test_state_vector_decoding():
    assert decode_state_vector(b"\x00") == {}
    assert decode_state_vector(b"\x01\xb9\x60\x07") == {12345: 7}
    with pytest.raises(ValueError):
        decode_state_vector(b"\x02\x01")


def test_entry_roundtrip_through_a_replica():
    own = OwnerDoc(A.peer_id, 1, local=True)
    ups = [own.write_peer(addrs=["/ip4/1.2.3.4/tcp/4001"], agent="swarmlm/0.1", hosted=[HostedRange("m", 0, 12)],
                          throughput=42.5, free_kv=4096, load=1.0, heartbeat=100.0, reach="public"),
           own.write_model(ModelInfo("m", "h1", 30, "bf16", ("v1",)))]
    rec = make_record(A, "round", {"winner": "x"}, 100.0)
    own_r = OwnerDoc(records_key(A.peer_id), 1, local=True)
    rec_up = own_r.add_record(rec)
    rep, rep_r = OwnerDoc(A.peer_id, 1), OwnerDoc(records_key(A.peer_id), 1)
    for u in ups:
        rep.apply(u, now=100.0)
    rep_r.apply(rec_up)
    e = rep.entry
    assert e.addrs == ("/ip4/1.2.3.4/tcp/4001",) and e.hosted == (HostedRange("m", 0, 12),)
    assert e.free_kv == 4096 and isinstance(e.free_kv, int) and e.throughput == 42.5 and e.reach == "public"
    assert rep.models["m"] == ModelInfo("m", "h1", 30, "bf16", ("v1",))
    assert rep_r.records[rec.key].body == {"winner": "x"} and rep_r.records[rec.key].kind == "round"
    assert rep_r.records[rec.key].author == A.peer_id
    # unchanged fields produce no update
    assert own.write_peer(agent="swarmlm/0.1") == b""


def test_writes_are_checked_and_owner_only():
    own = OwnerDoc(A.peer_id, 1, local=True)
    with pytest.raises(StateError):
        own.write_peer(reach="sideways")
    with pytest.raises(StateError):
        own.write_peer(hosted=[HostedRange("m", 5, 5)])
    with pytest.raises(StateError):
        own.write_peer(colour="red")
    with pytest.raises(StateError):
        own.add_record(make_record(A, "round", {}, 1.0))  # records go to the records document
    with pytest.raises(StateError):
        OwnerDoc(records_key(A.peer_id), 1, local=True).add_record(make_record(B, "round", {}, 1.0))
    with pytest.raises(StateError):
        OwnerDoc(records_key(A.peer_id), 1, local=True).write_peer(agent="x")
    with pytest.raises(StateError):
        OwnerDoc(A.peer_id, 1).write_peer(agent="x")


def test_replica_rejects_foreign_client_and_future_heartbeat():
    rep = OwnerDoc(A.peer_id, 1)
    other = OwnerDoc(A.peer_id, 2, local=True)  # another epoch = another client id
    with pytest.raises(InvalidUpdate) as exc:
        rep.apply(other.write_peer(agent="x"))
    assert exc.value.reason == "foreign_client"
    own = OwnerDoc(A.peer_id, 1, local=True)
    with pytest.raises(InvalidUpdate) as exc:
        OwnerDoc(A.peer_id, 1).apply(own.write_peer(heartbeat=10_000.0), now=0.0)
    assert exc.value.reason == "bad_entry"
    with pytest.raises(InvalidUpdate) as exc:
        rep.apply(b"\x01\x02garbage")
    assert exc.value.reason == "decode"


def test_swarm_views_ttl_models_records():
    st = SwarmState(ttl=30.0)
    for ident, hb, cfg in ((A, 100.0, "h1"), (B, 50.0, "h2")):
        d, r = OwnerDoc(ident.peer_id, 1, local=True), OwnerDoc(records_key(ident.peer_id), 1, local=True)
        d.write_peer(heartbeat=hb, hosted=[HostedRange("m", 0, 6)])
        d.write_model(ModelInfo("m", cfg, 30, "bf16"))
        r.add_record(make_record(ident, "verdict" if ident is A else "round", {"hb": hb}, hb))
        st.docs[d.key], st.docs[r.key] = d, r
    assert [e.peer_id for e in st.peers(now=110.0)] == [A.peer_id]  # B's heartbeat is 60 s old
    assert len(st.peers(now=110.0, include_offline=True)) == 2
    assert st.is_online(A.peer_id, 110.0) and not st.is_online(B.peer_id, 110.0)
    assert st.models(now=110.0)["m"].config_hash == "h1"  # only A is online
    assert st.models()["m"].config_hash == "h1"  # a tie goes to the smallest hash
    assert [r.author for r in st.records(kind="round")] == [B.peer_id]
    assert [r.kind for r in st.records()] == ["round", "verdict"]  # oldest first
    rows = st.status_rows(110.0)
    assert rows[0]["hosted"] == ["m[0:6]"] and {r["online"] for r in rows} == {True, False}
    assert len(st.hosts_of("m", 110.0)) == 1


def test_entry_and_records_documents_hold_only_their_own_maps():
    rogue = OwnerDoc(A.peer_id, 1, local=True)
    rogue._records["k"] = b"x"  # raw Y write, bypassing the checks
    with pytest.raises(InvalidUpdate) as exc:
        OwnerDoc(A.peer_id, 1).apply(rogue.full_update())
    assert exc.value.reason == "bad_entry"
    rogue_r = OwnerDoc(records_key(A.peer_id), 1, local=True)
    rogue_r._peer["agent"] = "x"
    with pytest.raises(InvalidUpdate) as exc:
        OwnerDoc(records_key(A.peer_id), 1).apply(rogue_r.full_update())
    assert exc.value.reason == "bad_record"


def test_peers_publish_their_measured_rtts():
    own = OwnerDoc(A.peer_id, 1, local=True)
    up = own.write_peer(heartbeat=100.0, rtt={B.peer_id: 12.5, "other": 3})
    rep = OwnerDoc(A.peer_id, 1)
    rep.apply(up, now=100.0)
    assert dict(rep.entry.rtt) == {B.peer_id: 12.5, "other": 3.0}
    with pytest.raises(StateError):
        own.write_peer(rtt={str(i): 1.0 for i in range(100)})
    with pytest.raises(StateError):
        own.write_peer(rtt={B.peer_id: -1.0})
