"""Swarm-state persistence: atomic saves, reload, corrupt files moved aside with a warning."""

from __future__ import annotations

import logging
import random

from swarmlm.crypto.identity import Identity
from swarmlm.net.state.rights import doc_owner, records_key
from swarmlm.net.state.schema import HostedRange
from swarmlm.net.state.store import FILE_NAME, MAGIC, StateStore
from swarmlm.testnet.memnet import make_swarm


def _engine_with_state(tmp_path):
    net = make_swarm(3, seed=31)
    for pid in sorted(net.nodes):
        net.send(pid, net.nodes[pid].publish_local(5.0, hosted=[HostedRange("m", 0, 3)], reach="public"))
    net.settle()
    return net.nodes[sorted(net.nodes)[0]]


def test_save_and_reload(tmp_path):
    eng = _engine_with_state(tmp_path)
    store = StateStore(tmp_path)
    store.save(eng.export())
    assert not eng.dirty
    assert [p.name for p in tmp_path.iterdir()] == [FILE_NAME]  # no temporary file left
    back = store.open_engine(eng.identity, now=10.0, rng=random.Random(0))
    assert {e.peer_id for e in back.state.peers(10.0)} == {e.peer_id for e in eng.state.peers(10.0)}
    assert back.state.peer(eng.peer_id).hosted == (HostedRange("m", 0, 3),)
    assert back.own.epoch > eng.own.epoch


def test_corrupt_file_is_moved_aside_with_a_warning(tmp_path, caplog):
    eng = _engine_with_state(tmp_path)
    store = StateStore(tmp_path)
    store.save(eng.export())
    data = bytearray(store.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    store.path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="swarmlm.state"):
        fresh = store.open_engine(eng.identity, now=10.0, rng=random.Random(0))
    assert "corrupt" in caplog.text
    assert not store.path.exists() and (tmp_path / f"{FILE_NAME}.corrupt-1").exists()
    assert {doc_owner(k) for k in fresh.replicas} == {eng.peer_id}  # empty: it resyncs from peers
    store.save(fresh.export())
    store.path.write_bytes(b"short")
    assert store.read() is None and (tmp_path / f"{FILE_NAME}.corrupt-2").exists()


def test_checksummed_body_that_does_not_load_is_moved_aside(tmp_path, caplog):
    import hashlib

    store = StateStore(tmp_path)
    body = b"\x92\x01\x02"  # valid msgpack, not a state file
    store.path.write_bytes(MAGIC + hashlib.sha256(body).digest() + body)
    with caplog.at_level(logging.WARNING, logger="swarmlm.state"):
        eng = store.open_engine(Identity.from_seed(b"z" * 32), now=1.0, rng=random.Random(0))
    assert "does not load" in caplog.text and eng.state.peers(1.0) == []
    assert (tmp_path / f"{FILE_NAME}.corrupt-1").exists()


def test_tampered_entries_in_the_file_are_dropped_on_load(tmp_path):
    eng = _engine_with_state(tmp_path)
    import msgpack

    obj = msgpack.unpackb(eng.export(), raw=False)
    victim = next(o for o in obj["owners"] if doc_owner(o) != eng.peer_id and doc_owner(o) == o)
    for key in (victim, records_key(victim)):
        obj["owners"][key] = [raw[:-1] + bytes([raw[-1] ^ 1]) for raw in obj["owners"][key]]
    store = StateStore(tmp_path)
    store.save(msgpack.packb(obj, use_bin_type=True))
    back = store.open_engine(eng.identity, now=10.0, rng=random.Random(0))
    assert victim not in back.replicas and back.rejected["signature"] >= 2
    assert len({doc_owner(k) for k in back.replicas}) == 2


def test_missing_file_gives_a_fresh_engine(tmp_path):
    store = StateStore(tmp_path / "sub")
    assert store.read() is None
    eng = store.open_engine(Identity.from_seed(b"y" * 32), now=1.0, rng=random.Random(0))
    store.save(eng.export())
    assert store.path.exists() and oct(store.path.stat().st_mode & 0o777) == "0o600"
