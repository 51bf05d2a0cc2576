"""Audit rounds over the network: after a client's round the coordinator runs an unannounced round
on a labeled question, stores its audit record, and every node scores the judges against the key."""

from __future__ import annotations

import json
import time

import pytest
import trio

from swarmlm.consensus.audit import verify_record
from swarmlm.consensus.auditgen import generated
from swarmlm.consensus.audits import question_by_id, verify_audit
from swarmlm.consensus.evalset import is_correct, load_questions, prompt_of
from swarmlm.consensus.reputation import ReputationParams, ReputationState

from test_consensus_e2e import MODEL, consensus_nodes, request, run_consensus

SEED = bytes(range(16))  # the test fixes the audit's secret seed to script the answers
BY_PROMPT = {prompt_of(q): q for q in [*load_questions(), generated(SEED)]}


def scripted(right: bool):
    """Answers a labeled question right (or wrong), anything else with a greeting."""
    def answer(task: str) -> str:
        q = BY_PROMPT.get(json.loads(task)["messages"][-1]["content"])
        if q is None:
            return "Hello there."
        return f"The answer is {q.answer}." if right else "I do not know, sorry."
    return answer


async def test_an_audit_round_follows_a_client_round_and_scores_the_judges(tmp_path):
    def configure(i, svc):
        svc.options.answerer = scripted(right=i < 2)  # nodes 0 and 1 answer right, node 2 wrong
        svc.options.audit_share = 1.0 if i == 0 else 0.0  # node 0 audits after every client round
        svc.audits.new_seed = lambda: SEED

    async with consensus_nodes(tmp_path, 3, configure) as nodes:
        assert nodes[0].consensus.params.earn == "audits"  # the default: standing only from audits
        text, s = await run_consensus(nodes[0], request(k=3))
        assert text == "Hello there."
        assert [r["prior"] for r in s.scores] == [0.5] * 3  # no audit yet: every author at the swarm's start

        def audits(nd):
            return [bytes(r.body) for r in nd.state.state.records(kind="audit")]

        with trio.fail_after(120):  # the background audit round ran, and its records reached every node
            while not (nodes[0].consensus.audits.done and all(audits(nd) for nd in nodes)
                       and all(len(list(nd.state.state.records(kind="round"))) == 2 for nd in nodes)):
                await trio.sleep(0.2)
        done = nodes[0].consensus.audits.done[-1]
        assert done["right"] == {nodes[0].peer_id: True, nodes[1].peer_id: True, nodes[2].peer_id: False}
        rec = next(bytes(r.body) for r in nodes[1].state.state.records(kind="round")
                   if verify_record(bytes(r.body)).round_id == done["round_id"])
        v = verify_record(rec)
        right = verify_audit(audits(nodes[1])[0], v)
        assert sorted(right.values()) == [False, True, True]
        assert done["question"] == "gen-" + SEED.hex()  # a generated question, revealed only in the record
        q = question_by_id(done["question"])
        assert is_correct(q, f"The answer is {q.answer}.")

        now = time.time()
        expect = ReputationState(ReputationParams(require_calibration=False, earn="audits", weight_power=2.0))
        agreement = expect.apply_audit(v.time, v.candidate_ids, v.votes, right)
        # node 2's pairs are its two right peers (no right-vs-wrong pair): nothing to score; the others are
        assert set(agreement) == {nodes[0].peer_id, nodes[1].peer_id}
        reps = [nd.consensus.reputation(now) for nd in nodes]
        assert reps[0].scores() == reps[1].scores() == reps[2].scores()  # every node folds the same
        for j, g in agreement.items():
            got = reps[0].nodes[j]
            assert got.audited == 1
            # earned toward 2g - 1, or lost everything when it voted against the key
            assert (got.score > 0.0) == (g > 0.5) and got.convicted == (1 if g < 0.5 else 0)
        assert reps[0].nodes[nodes[2].peer_id].audited == 0
        # every author's answer was counted against the key too: the priors of later rounds (consensus/priors.py)
        got = [reps[0].nodes[nd.peer_id] for nd in nodes]
        counts = [x for g in got for x in (g.answered, g.answered_right)]
        assert counts == pytest.approx([1.0, 1.0, 1.0, 1.0, 1.0, 0.0])
        _, _, _, priors = nodes[0].consensus.pick(MODEL, 3, now)  # what the next round weighs its candidates by
        assert priors[nodes[0].peer_id] == priors[nodes[1].peer_id] > priors[nodes[2].peer_id]


async def test_an_audit_too_large_for_the_state_reaches_every_book_as_a_blob(tmp_path, monkeypatch):
    """Long answers: the round and the audit record go to the state as references, every node fetches
    the blobs by digest, and every book scores the judges as with an inline audit."""
    from swarmlm.node.server import consensus as consensus_mod
    from swarmlm.node.server.consensus_detail import AUDIT_DETAIL_KIND

    monkeypatch.setattr(consensus_mod, "INLINE_RECORD_BYTES", 0)  # every record is "too large"

    def configure(i, svc):
        svc.options.answerer = scripted(right=i < 2)
        svc.options.audit_share = 1.0 if i == 0 else 0.0
        svc.audits.new_seed = lambda: SEED

    async with consensus_nodes(tmp_path, 3, configure) as nodes:
        await run_consensus(nodes[0], request(k=3))
        with trio.fail_after(120):
            while not (nodes[0].consensus.audits.done
                       and all(nd.consensus.details.available(AUDIT_DETAIL_KIND) for nd in nodes)
                       and all(len(nd.consensus.details.available()) == 2 for nd in nodes)):
                await trio.sleep(0.2)
        assert not any(list(nd.state.state.records(kind="audit")) for nd in nodes)  # only the reference
        done = nodes[0].consensus.audits.done[-1]
        assert done["right"] == {nodes[0].peer_id: True, nodes[1].peer_id: True, nodes[2].peer_id: False}
        reps = [nd.consensus.reputation(time.time()) for nd in nodes]
        assert reps[0].scores() == reps[1].scores() == reps[2].scores()
        assert [reps[1].nodes[nd.peer_id].audited for nd in nodes[:2]] == [1, 1]  # the judges were scored
        got = [reps[2].nodes[nd.peer_id] for nd in nodes]
        assert [x for g in got for x in (g.answered, g.answered_right)] == pytest.approx([1, 1, 1, 1, 1, 0])
