"""Known-answer audit rounds: a judge earns standing only by agreeing with the key of a labeled
question, and loses all of it when an unannounced audit catches it voting against the key."""

from __future__ import annotations

import dataclasses

import pytest

from swarmlm.consensus.audit import verify_record
from swarmlm.consensus.audits import AuditRecord, seal_audit, verify_audit
from swarmlm.consensus.evalset import load_questions, prompt_of
from swarmlm.consensus.local import run_local_round
from swarmlm.consensus.records import ConsensusError
from swarmlm.consensus.reputation import AUDITED, ReputationBook, ReputationParams, compute_reputation
from swarmlm.consensus.round import Finished
from swarmlm.consensus.scenario import COORD, ident
from swarmlm.node.wire import task_text

Q = next(q for q in load_questions() if q.id == "arith-000")  # "What is 3 plus 2?" -> 5
TASK = task_text("builtin:tiny", None, [{"role": "user", "content": prompt_of(Q)}], 32, ["\n"])
NODES = [ident("aud", i) for i in range(4)]
ANSWERS = ["3 plus 2 is 5.", "It is 5.", "The answer is 6.", "It is 7."]  # two right, two wrong
PARAMS = ReputationParams(require_calibration=False, **AUDITED)


class Keyed:
    """Prefers answers with a 5 in them (``honest``), or without (a liar)."""

    def __init__(self, honest: bool) -> None:
        self.honest = honest

    def judge(self, prompt: str, a: str, b: str) -> str:
        ra, rb = "5" in a, "5" in b
        if ra == rb:
            return "tie"
        return "A" if ra == self.honest else "B"


def a_round(t: float, liar_lies: bool, prompt: str = TASK) -> tuple[Finished, dict[str, str]]:
    judges = {n: Keyed(honest=not (liar_lies and n is NODES[3])) for n in NODES}
    answers = dict(zip(NODES, ANSWERS))
    _, log = run_local_round(COORD, prompt, answers, judges, {n.peer_id: 1.0 for n in NODES}, now=t, seed=f"a{t}")
    fin = next(a for a in log if isinstance(a, Finished))
    return fin, dict(zip(fin.record.strengths, [fin.answers[c] for c in fin.record.strengths]))


def audited(fin: Finished, task: str = TASK) -> bytes:
    v = verify_record(fin.packet.envelope.encode())
    return seal_audit(COORD, v, Q.id, task, {c: fin.answers[c] for c in v.candidate_ids})


def test_the_key_decides_which_candidates_were_right():
    fin, _ = a_round(100.0, liar_lies=False)
    rec = fin.packet.envelope.encode()
    right = verify_audit(audited(fin), rec)
    v = verify_record(rec)
    assert [right[c] for c in v.candidate_ids] == ["5" in fin.answers[c] for c in v.candidate_ids]
    assert sum(right.values()) == 2


def test_forged_audits_are_refused():
    fin, _ = a_round(100.0, liar_lies=False)
    rec, v = fin.packet.envelope.encode(), verify_record(fin.packet.envelope.encode())
    answers = {c: fin.answers[c] for c in v.candidate_ids}
    wrong = dict(answers, **{v.candidate_ids[0]: "It is 5."}) if answers[v.candidate_ids[0]] != "It is 5." else \
        dict(answers, **{v.candidate_ids[0]: "3 plus 2 is 5."})
    with pytest.raises(ConsensusError, match="not the one it signed"):
        verify_audit(seal_audit(COORD, v, Q.id, TASK, wrong), rec)
    with pytest.raises(ConsensusError, match="not the round's prompt"):
        verify_audit(seal_audit(COORD, v, Q.id, TASK + " ", answers), rec)
    with pytest.raises(ConsensusError, match="does not ask"):  # another labeled question, same round
        verify_audit(seal_audit(COORD, v, "arith-001", TASK, answers), rec)
    other = ident("other", 0)
    forged = AuditRecord(other.peer_id, v.round_id, Q.id, TASK, tuple(answers[c] for c in v.candidate_ids))
    with pytest.raises(ConsensusError, match="coordinator"):
        verify_audit(forged.seal(other).encode(), rec)


def test_standing_is_earned_in_audits_and_lost_outright_when_caught():
    rounds, audits = [], []
    for i in range(4):  # the liar sleeps: honest in four audits, it earns the same standing as the others
        fin, _ = a_round(100.0 * (i + 1), liar_lies=False)
        rounds.append(fin.packet.envelope.encode())
        audits.append(audited(fin))
    before = compute_reputation(rounds, 500.0, audits=audits, params=PARAMS)
    liar, honest = NODES[3].peer_id, NODES[0].peer_id
    assert before.score(liar) > 0.5 and before.score(liar) == pytest.approx(before.score(honest))
    assert before.nodes[liar].audited == 4 and before.is_established(liar)

    for i in range(3):  # ordinary rounds (no audit record) move no score, whatever the liar votes
        fin, _ = a_round(600.0 + i, liar_lies=True)
        rounds.append(fin.packet.envelope.encode())
    quiet = compute_reputation(rounds, 700.0, audits=audits, params=PARAMS)
    assert quiet.score(liar) == pytest.approx(before.score(liar), rel=1e-3)

    fin, _ = a_round(800.0, liar_lies=True)  # it attacks in a round that turns out to be an audit
    rounds.append(fin.packet.envelope.encode())
    audits.append(audited(fin))
    after = compute_reputation(rounds, 900.0, audits=audits, params=PARAMS)
    assert after.score(liar) == 0.0 and after.nodes[liar].convicted == 1
    assert after.score(honest) >= quiet.score(honest) * 0.99
    assert after.weight(liar) < 0.02 < after.weight(honest)

    book = ReputationBook(PARAMS)  # the running view: the audit arrives after its round was folded
    for r in rounds:
        book.add_record(r)
    for a in audits[:-1]:
        book.add_audit(a)
    assert book.snapshot(900.0).score(liar) > 0.5
    assert book.add_audit(audits[-1]) and not book.add_audit(audits[0])  # new, already known
    assert book.snapshot(900.0).scores() == after.scores()


def test_consensus_earning_is_untouched_by_audit_params():
    assert dataclasses.replace(PARAMS, earn="consensus").weight_power == 2.0
    assert ReputationParams().earn == "consensus" and ReputationParams().weight_power == 1.0
