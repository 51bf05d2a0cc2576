"""The I/O-free round state machine: a full round, phase deadlines, dropped nodes, refused reveals."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swarmlm.consensus.audit import verify_record
from swarmlm.consensus.judging import LogLikelihoodJudge
from swarmlm.consensus.local import run_local_round
from swarmlm.consensus.participant import JudgeSession, answer_packet, open_result, open_spec_packet
from swarmlm.consensus.records import (ConsensusError, Packet, Reveal, RevealRequest, RoundRecord, commitment,
                                       open_as)
from swarmlm.consensus.round import CoordinatorRound, Dropped, Failed, Finished, Phase, Rejected, Send, Timeouts
from swarmlm.crypto.identity import Identity

COORD = Identity.from_seed(b"\xc0" * 32)
NODES = [Identity.from_seed(bytes([i + 1]) * 32) for i in range(5)]
ANSWERS = ["Paris", "Lyon", "Paris.", "Marseille", "I don't know"]
QUALITY = {"Paris": 3.0, "Paris.": 2.9, "Lyon": 1.0, "Marseille": 0.5, "I don't know": 0.0}


def oracle():
    return LogLikelihoodJudge(lambda prompt, answer: QUALITY[answer], margin=0.0)


def run(**kw):
    weights = {n.peer_id: 1.0 for n in NODES}
    return run_local_round(COORD, "Capital of France?", dict(zip(NODES, ANSWERS)), {n: oracle() for n in NODES},
                           weights, now=1000.0, **kw)


def finished(log):
    done = [a for a in log if isinstance(a, Finished)]
    assert len(done) == 1
    return done[0]


def test_full_round_picks_the_best_answer_and_its_record_verifies():
    rnd, log = run()
    fin = finished(log)
    assert rnd.phase is Phase.DONE and rnd.next_deadline is None
    assert fin.winner_answer == "Paris"
    assert fin.nodes[fin.record.winner] == NODES[0].peer_id
    strengths = {fin.answers[c]: s for c, s in fin.record.strengths.items()}
    assert strengths["Paris"] > strengths["Paris."] > strengths["Lyon"] > strengths["Marseille"]
    assert sum(strengths.values()) == pytest.approx(1.0)
    v = verify_record(fin.packet.envelope.encode())
    assert v.round_id == rnd.round_id and len(v.votes) == 5
    assert open_result(Packet.decode(fin.packet.encode())) == fin.record
    assert not any(isinstance(a, (Dropped, Rejected, Failed)) for a in log)


def test_a_node_missing_a_phase_is_dropped_and_the_round_still_finishes():
    silent = {"candidates": [NODES[4].peer_id], "commits": [NODES[3].peer_id], "reveals": [NODES[2].peer_id]}
    rnd, log = run(silent=silent)
    fin = finished(log)
    dropped = {(a.node, a.phase) for a in log if isinstance(a, Dropped)}
    assert dropped == {(NODES[4].peer_id, "candidates"), (NODES[3].peer_id, "commits"),
                       (NODES[2].peer_id, "reveals")}
    assert len(fin.record.candidates) == 4 and len(fin.record.reveals) == 2
    assert fin.winner_answer == "Paris"
    assert fin.record.finished_at == rnd.spec.reveal_deadline  # waited for the silent judge
    verify_record(fin.record)


def test_round_fails_when_too_few_remain():
    silent = {"candidates": [n.peer_id for n in NODES[1:]]}
    rnd, log = run(silent=silent)
    assert rnd.phase is Phase.FAILED
    assert isinstance(log[-1], Failed) and "candidates" in log[-1].reason
    rnd, log = run(silent={"reveals": [n.peer_id for n in NODES]}, min_judges=2)
    assert rnd.phase is Phase.FAILED and "revealed" in log[-1].reason


def test_a_reveal_that_does_not_match_its_commit_is_refused():
    cheat = NODES[1].peer_id

    def flip(sess, pkt):
        if sess.identity.peer_id != cheat:
            return pkt
        rev = open_as(Reveal, pkt.envelope)
        votes = tuple((a, b, "A") for a, b, _ in rev.votes)  # changes its mind after seeing commits
        return Packet(dataclasses.replace(rev, votes=votes).seal(sess.identity))

    rnd, log = run(tamper_reveal=flip)
    bad = [a for a in log if isinstance(a, Dropped) and a.node == cheat]
    assert bad and "does not match its commitment" in bad[0].reason
    fin = finished(log)
    assert cheat not in fin.record.weights and len(fin.record.reveals) == 4


def test_a_judge_cannot_vote_on_pairs_it_was_not_assigned():
    cheat = NODES[2].peer_id

    def cherry_pick(sess, pkt):
        if sess.identity.peer_id != cheat:
            return pkt
        rev = open_as(Reveal, pkt.envelope)
        votes = rev.votes[:-1]  # drops a pair, with a commit made to match
        forged = dataclasses.replace(rev, votes=votes)
        sess.commit_record = dataclasses.replace(sess.commit_record,
                                                 commitment=commitment(rev.round_id, cheat, votes, rev.salt))
        return Packet(forged.seal(sess.identity))

    _, log = run(tamper_reveal=cherry_pick)
    assert any(isinstance(a, Dropped) and a.node == cheat and "bad reveal" in a.reason for a in log)


def test_messages_in_the_wrong_phase_or_after_the_deadline_are_rejected():
    peers = [n.peer_id for n in NODES[:3]]
    rnd, acts = CoordinatorRound.start(COORD, "q", peers, peers, 0.0, weights={p: 1.0 for p in peers},
                                       seed="x", timeouts=Timeouts(10, 10, 10))
    assert isinstance(acts[0], Send) and set(acts[0].to) == set(peers)
    assert rnd.next_deadline == 10.0
    spec, prompt = open_spec_packet(acts[0].packet)
    assert prompt == "q"
    out = rnd.receive(answer_packet(NODES[0], spec, "a"), 1.0)
    assert out == [] and rnd.phase is Phase.CANDIDATES
    dup = rnd.receive(answer_packet(NODES[0], spec, "a"), 2.0)
    assert isinstance(dup[0], Rejected) and "duplicate" in dup[0].reason
    bad_hash = Packet(answer_packet(NODES[1], spec, "b").envelope, ("not b",))
    assert isinstance(rnd.receive(bad_hash, 2.0)[0], Rejected)
    stranger = Identity.from_seed(b"\x77" * 32)
    with pytest.raises(ConsensusError):
        answer_packet(stranger, spec, "z")
    rnd.receive(answer_packet(NODES[1], spec, "b"), 3.0)
    late = rnd.receive(answer_packet(NODES[2], spec, "c"), 10.5)  # deadline 10 passed first
    assert [type(a) for a in late] == [Dropped, Send, Rejected]
    assert rnd.phase is Phase.COMMITS and rnd.next_deadline == 20.0
    assert len(JudgeSession.open(NODES[0], late[1].packet).tasks) == 0  # only its own and one other
    sess = JudgeSession.open(NODES[2], late[1].packet)  # its candidate was late: judges both, both orders
    assert sorted((t.answer_a, t.answer_b) for t in sess.tasks) == [("a", "b"), ("b", "a")]
    reveal_early = Packet(Reveal(rnd.round_id, NODES[0].peer_id, (), "s").seal(NODES[0]))
    assert isinstance(rnd.receive(reveal_early, 11.0)[0], Rejected)
    assert rnd.tick(100.0)[-1] == Failed("only 0 judges committed by the deadline")


def test_judges_without_weight_are_not_invited_and_records_resist_tampering():
    peers = [n.peer_id for n in NODES]
    weights = {p: 1.0 for p in peers[:4]}
    rnd, _ = CoordinatorRound.start(COORD, "q", peers, peers, 0.0, weights=weights)
    assert rnd.spec.judges == tuple(peers[:4])
    fin = finished(run()[1])
    rec = fin.record
    loser = min(rec.strengths, key=rec.strengths.get)
    for bad in (dataclasses.replace(rec, winner=loser),
                dataclasses.replace(rec, strengths={**rec.strengths, loser: 0.9}),
                dataclasses.replace(rec, weights={**rec.weights, NODES[0].peer_id: 50.0}),
                dataclasses.replace(rec, reveals=rec.reveals[1:])):
        with pytest.raises(ConsensusError):
            verify_record(bad)
    resigned = dataclasses.replace(rec, coordinator=NODES[0].peer_id).seal(NODES[0])  # valid signature...
    with pytest.raises(ConsensusError, match="another coordinator"):  # ...but the spec is not its own
        verify_record(open_as(RoundRecord, resigned))


def test_participants_check_what_the_coordinator_sends():
    peers = [n.peer_id for n in NODES[:3]]
    rnd, acts = CoordinatorRound.start(COORD, "q", peers, peers, 0.0, weights={p: 1.0 for p in peers}, seed="y")
    with pytest.raises(ConsensusError, match="prompt"):
        open_spec_packet(Packet(acts[0].packet.envelope, ("another prompt",)))
    spec, _ = open_spec_packet(acts[0].packet)
    out = []
    for n, a in zip(NODES[:3], ["x", "y", "z"]):
        out += rnd.receive(answer_packet(n, spec, a), 1.0)
    req = out[-1].packet
    assert isinstance(out[-1], Send) and rnd.phase is Phase.COMMITS
    swapped = Packet(req.envelope, (req.texts[0], req.texts[2], req.texts[1], req.texts[3]))
    with pytest.raises(ConsensusError, match="does not match its hash"):
        JudgeSession.open(NODES[0], swapped)
    with pytest.raises(ConsensusError, match="not a judge"):
        JudgeSession.open(NODES[3], req)
    sess = JudgeSession.open(NODES[0], req)
    with pytest.raises(ConsensusError):
        sess.commit(["A"])  # one outcome per task
    with pytest.raises(ConsensusError, match="no commit"):
        sess.reveal(Packet(RevealRequest(COORD.peer_id, rnd.round_id, tuple(peers)).seal(COORD)))


def test_score_table_for_the_client():
    _, log = run()
    fin = finished(log)
    table = fin.scores()
    assert [r["answer"] for r in table][:2] == ["Paris", "Paris."]
    assert table[0]["winner"] is True and sum(r["winner"] for r in table) == 1
    assert {r["node"] for r in table} == {n.peer_id for n in NODES}
    assert fin.round_id == fin.record.round_id and table[0]["model"] == "local"


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(["candidates", "commits", "reveals", None]), min_size=5, max_size=5))
def test_any_pattern_of_silent_nodes_ends_in_a_verified_record_or_a_clean_failure(phases):
    silent: dict[str, list[str]] = {}
    for node, phase in zip(NODES, phases):
        if phase:
            silent.setdefault(phase, []).append(node.peer_id)
    rnd, log = run(silent=silent)
    assert rnd.phase in (Phase.DONE, Phase.FAILED)
    assert sum(isinstance(a, (Finished, Failed)) for a in log) == 1
    if rnd.phase is Phase.DONE:
        rec = verify_record(finished(log).record).record
        assert len(rec.candidates) >= 2 and rec.reveals
        assert {n for n, _ in rec.dropped} == {n for ids in silent.values() for n in ids}
