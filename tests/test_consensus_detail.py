"""Round records as content-addressed detail blobs: the state holds a small signed reference, nodes
fetch the blob by digest from its author, check hash, size and record, and fold it."""

from __future__ import annotations

import time

import pytest
import trio

from swarmlm.consensus.audit import verify_record
from swarmlm.consensus.audits import audit_ref, check_audit_detail, open_audit, seal_audit
from swarmlm.consensus.detail import MAX_DETAIL_BYTES, DetailRef, check_detail, detail_ref
from swarmlm.consensus.local import run_local_round
from swarmlm.consensus.records import ConsensusError
from swarmlm.consensus.round import Finished
from swarmlm.consensus.scenario import COORD, honest, ident
from swarmlm.node.server import consensus as consensus_mod
from swarmlm.node.server.consensus_detail import DETAIL_KIND, DetailStore

from test_consensus_e2e import consensus_nodes, request, run_consensus


def a_record() -> bytes:
    nodes = [ident("det", i) for i in range(3)]
    _, log = run_local_round(COORD, "q", dict(zip(nodes, ["Paris", "Lyon", "Berlin"])),
                             {n: honest() for n in nodes}, {n.peer_id: 1.0 for n in nodes})
    return next(a for a in log if isinstance(a, Finished)).packet.envelope.encode()


def test_a_reference_checks_its_blob():
    env = a_record()
    ref = detail_ref(env)
    assert DetailRef.from_obj(ref.to_obj()) == ref and ref.size == len(env)
    assert check_detail(ref, COORD.peer_id, env).round_id == verify_record(env).round_id
    with pytest.raises(ConsensusError, match="digest"):
        check_detail(ref, COORD.peer_id, env[:-1] + bytes([env[-1] ^ 1]))
    with pytest.raises(ConsensusError, match="author"):
        check_detail(ref, ident("x", 0).peer_id, env)
    for bad in ({"round": ref.round_id, "sha256": ref.sha256}, {**ref.to_obj(), "size": MAX_DETAIL_BYTES + 1},
                {**ref.to_obj(), "sha256": "zz"}, {**ref.to_obj(), "size": True}, "nope"):
        with pytest.raises(ConsensusError):
            DetailRef.from_obj(bad)


def test_an_audit_too_large_for_the_state_gets_a_reference_that_checks_it():
    v = verify_record(a_record())
    long_answers = {c: f"answer {i} " + "x" * 8000 for i, c in enumerate(v.candidate_ids)}  # 3 x 8 KB: over 16 KiB
    data = seal_audit(COORD, v, "gen-" + "00" * 16, "q", long_answers)
    assert len(data) > 16 * 1024 and open_audit(data).answers == tuple(long_answers[c] for c in v.candidate_ids)
    ref = audit_ref(data)
    assert (ref.round_id, ref.size) == (v.round_id, len(data))
    assert check_audit_detail(ref, COORD.peer_id, data).round_id == v.round_id
    with pytest.raises(ConsensusError, match="digest"):
        check_audit_detail(ref, COORD.peer_id, data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(ConsensusError, match="author"):
        check_audit_detail(ref, ident("x", 0).peer_id, data)
    other = DetailRef("ab" * 32, ref.sha256, ref.size)
    with pytest.raises(ConsensusError, match="another round"):
        check_audit_detail(other, COORD.peer_id, data)


def test_the_store_is_bounded():
    store = DetailStore(max_blobs=3, max_bytes=250)
    digests = [store.put(bytes([i]) * 100) for i in range(4)]
    assert store.get(digests[0]) is None and store.get(digests[1]) is None  # oldest out: bytes and count
    assert store.get(digests[3]) == bytes([3]) * 100 and store.bytes <= 250
    assert store.put(b"x" * (MAX_DETAIL_BYTES + 1)) and store.bytes <= 250  # too large: not kept


async def test_a_node_outside_the_round_fetches_its_detail(tmp_path, monkeypatch):
    monkeypatch.setattr(consensus_mod, "INLINE_RECORD_BYTES", 0)  # every record goes to the state as a blob

    def configure(i, svc):
        svc.options.max_judges = 1  # 2 candidates and 1 judge: some of the 4 nodes are not in the round

    async with consensus_nodes(tmp_path, 5, configure) as nodes:
        text, s = await run_consensus(nodes[0], request(k=2))
        [(_, ref)] = nodes[0].consensus.details.refs()
        assert ref.round_id == s.round_id
        assert not list(nodes[0].state.state.records(kind="round"))  # only the reference is in the state
        rec = verify_record(nodes[0].consensus.details.store.get(ref.sha256))
        sat = {h.node for h in rec.candidates} | set(rec.votes) | {nodes[0].peer_id}
        outside = [nd for nd in nodes if nd.peer_id not in sat]
        assert outside  # 5 nodes, at most 2 candidates, 1 judge and the coordinator in the round
        with trio.fail_after(60):  # every node gets the reference by state sync, then the blob by digest
            while not all(nd.consensus.details.available() for nd in nodes):
                await trio.sleep(0.2)
        for nd in outside:
            assert ref.sha256 in nd.consensus.details.tried  # fetched, not handed over in the round
        for nd in nodes:
            assert s.round_id in nd.consensus.reputation(time.time()).rounds  # folded by every book
            assert [r.kind for r in nd.state.state.records(kind=DETAIL_KIND)] == [DETAIL_KIND]
