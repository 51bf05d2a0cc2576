"""Author priors: counted from known-answer audits, shrunk toward the swarm's rate, and how a round
picks and records its winner with them."""

from __future__ import annotations

import dataclasses

import pytest

from swarmlm.consensus.audit import verify_record
from swarmlm.consensus.evalset import load_questions
from swarmlm.consensus.judging import LogLikelihoodJudge
from swarmlm.consensus.priors import author_priors, prior_pick, swarm_rate
from swarmlm.consensus.realeval import run_eval
from swarmlm.consensus.records import ConsensusError, RoundRecord, open_as
from swarmlm.consensus.reputation import AUDITED, ReputationParams, ReputationState
from swarmlm.consensus.round import CoordinatorRound

from test_consensus_round import COORD, NODES, finished, run


def audited_state() -> ReputationState:
    return ReputationState(ReputationParams(require_calibration=False, **AUDITED))


def test_a_new_identity_starts_at_the_swarm_rate_and_audits_move_an_author():
    st = audited_state()
    assert swarm_rate(st) == 0.5 and author_priors(st, ["x"]) == {"x": 0.5}
    for _ in range(4):  # candidates c0..c2 by authors a, b, c: a and c right, b wrong
        st.apply_audit(0.0, ["c0", "c1", "c2"], {}, {"c0": True, "c1": False, "c2": True}, ["a", "b", "c"])
    assert st.nodes["a"].answered == 4 and st.nodes["a"].answered_right == 4 and st.nodes["b"].answered_right == 0
    mu = 8 / 12
    pri = author_priors(st, ["a", "b", "fresh"])
    assert pri["a"] == pytest.approx((4 + 4 * mu) / 8) and pri["b"] == pytest.approx(4 * mu / 8)
    assert pri["fresh"] == pytest.approx(mu)  # a fresh identity looks average, never better than a known good node
    assert "c0" not in st.nodes  # answers count for their authors, not for candidate ids
    with pytest.raises(ValueError):
        author_priors(st, ["a"], pseudo=0)


def test_answer_counts_decay_with_the_score():
    st = ReputationState(ReputationParams(require_calibration=False, earn="audits", half_life=100.0))
    st.apply_audit(0.0, ["a", "b"], {}, {"a": True, "b": False})
    st.decay_to(100.0)
    assert st.nodes["a"].answered == pytest.approx(0.5) and st.nodes["a"].answered_right == pytest.approx(0.5)


def test_the_pick_weighs_verdicts_by_priors_within_the_eligible():
    strengths = [0.5, 0.4, 0.1]
    authors = ["a", "b", "c"]
    assert prior_pick(strengths, authors, {"a": 0.5, "b": 0.5, "c": 0.5}) == 0
    assert prior_pick(strengths, authors, {"a": 0.3, "b": 0.6, "c": 0.9}) == 1  # a close call goes to the record
    assert prior_pick([0.9, 0.05, 0.05], authors, {"a": 0.3, "b": 0.6, "c": 0.9}) == 0  # a clear verdict stands
    assert prior_pick(strengths, authors, {"a": 0.3, "b": 0.6, "c": 0.9}, eligible=[0, 2]) == 0
    assert prior_pick([0.5, 0.5], ["a", "b"], {"a": 0.5, "b": 0.5}) == 0  # ties: the lower index
    with pytest.raises(ValueError):
        prior_pick([0.5], ["a", "b"], {})


def test_a_round_with_priors_picks_by_both_and_its_record_checks_the_pick():
    # unanimous judges rank "Paris" ~50x above "Paris."; the author of "Paris." has a record 100x better
    priors = {n.peer_id: 0.5 for n in NODES} | {NODES[0].peer_id: 0.01, NODES[2].peer_id: 1.0}
    fin = finished(run(priors=priors)[1])
    rec = fin.record
    assert fin.winner_answer == "Paris."
    by_answer = {fin.answers[c]: c for c in rec.strengths}
    assert rec.strengths[by_answer["Paris"]] > rec.strengths[by_answer["Paris."]]
    assert rec.priors == {c: priors[fin.nodes[c]] for c in rec.strengths}
    verify_record(fin.packet.envelope.encode())
    for bad in (dataclasses.replace(rec, winner=by_answer["Paris"]),  # the strongest, but not the pick
                dataclasses.replace(rec, priors={**rec.priors, by_answer["Paris"]: 0.0}),
                dataclasses.replace(rec, priors={c: p for c, p in rec.priors.items() if c != by_answer["Lyon"]})):
        with pytest.raises(ConsensusError):
            verify_record(bad)
    with pytest.raises(ConsensusError, match="priors"):
        CoordinatorRound.start(COORD, "q", [n.peer_id for n in NODES], [n.peer_id for n in NODES], 0.0,
                               weights={n.peer_id: 1.0 for n in NODES}, priors={NODES[0].peer_id: 1.5})


def test_a_round_without_priors_keeps_the_record_format():
    fin = finished(run()[1])
    rec = fin.record
    assert rec.priors == {} and "priors" not in rec.to_obj()  # records written before priors keep their ids
    again = open_as(RoundRecord, fin.packet.envelope.encode())
    assert again == rec and again.id == rec.id


def test_the_real_harness_learns_priors_only_from_earlier_audits():
    qs = [q for q in load_questions() if q.id in ("capital-00", "arith-000", "fact-00")] * 2
    right = {"capital-00": "Paris.", "arith-000": "5", "fact-00": "8"}
    wrong = {"capital-00": "Rome.", "arith-000": "6", "fact-00": "6"}

    def answer(q):  # node2 is always right; the judges cannot tell anything apart (every pair a tie)
        return [(wrong[q.id], False), (wrong[q.id] + " I think.", False), (right[q.id], False)]

    blind = LogLikelihoodJudge(lambda p, a: 0.0, margin=0.0)
    outcomes = run_eval(qs, answer, [blind] * 3, reputation="audits", audit_every=1).outcomes
    assert [o.bt_rep_judges for o in outcomes] == [False] * 6  # equal strengths: the first candidate
    assert [o.bt_rep for o in outcomes] == [False] + [True] * 5  # from the first audit on, node2's record decides


def test_the_cli_shows_each_candidates_prior_when_the_round_used_them():
    from swarmlm.node.front.cli_ask import _scores_lines

    rows = [{"candidate": "c1", "node": "peer-aaaaaaaa", "strength": 0.6, "winner": False, "answer": "Rome"},
            {"candidate": "c2", "node": "peer-bbbbbbbb", "strength": 0.4, "winner": True, "answer": "Paris"}]
    plain = _scores_lines({"round_id": "r1", "scores": rows})
    assert plain[0] == "consensus round r1:" and "prior" not in "".join(plain)
    lines = _scores_lines({"round_id": "r1", "scores": [dict(r, prior=p) for r, p in zip(rows, (0.2, 0.7))]})
    assert lines[1].startswith("    0.600  prior 0.20") and lines[2].startswith("  * 0.400  prior 0.70")
    assert _scores_lines({"text": "hi"}) == []
