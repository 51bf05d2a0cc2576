"""Known-answer audit rounds: the evidence judges earn (and lose) standing by.

An audit round is an ordinary round whose task is a labeled question -- generated from a secret
seed (``auditgen``, the node's default) or from the shipped set (``consensus/data/questions.jsonl``)
-- started by a coordinator without saying so: candidates and judges see a round like any other.
After the round the coordinator signs an ``AuditRecord``: the round id, the question id, the
round's task text and the candidates' answer texts. Anyone holding
the round record checks it (``verify_audit``): the task hashes to the spec's ``prompt_hash`` and asks
exactly that question, each answer hashes to its candidate's signed ``answer_hash``, and the label
decides (``evalset.is_correct``, deterministic) which candidates were right. The reputation fold
(``ReputationState.apply_audit``) then scores each judge against the key on its pairs of one right
and one wrong answer: below 1/2 it loses all its standing, otherwise it moves toward ``2 g - 1``.
With ``ReputationParams(earn="audits")`` this is the only way to earn standing.

An audit record carries every answer, so long answers make it large: one that does not fit a swarm
state record travels like a large round record, as a content-addressed blob (``audit_ref``,
``check_audit_detail``; ``consensus.detail``), up to ``MAX_AUDIT_BYTES``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar, Mapping

from swarmlm.consensus.audit import VerifiedRound, verify_record
from swarmlm.consensus.auditgen import question_for
from swarmlm.consensus.detail import MAX_DETAIL_BYTES, DetailRef, detail_digest
from swarmlm.consensus.evalset import Question, is_correct, load_questions, prompt_of
from swarmlm.consensus.records import ConsensusError, Record, RoundRecord, open_as, text_hash
from swarmlm.crypto.envelope import Envelope
from swarmlm.crypto.identity import Identity

MAX_AUDIT_BYTES = MAX_DETAIL_BYTES  # inline in the state up to its 16 KiB record limit, else as a blob


@dataclass(frozen=True)
class AuditRecord(Record):
    """The coordinator's disclosure, after the round, that round ``round_id`` asked labeled ``question``."""

    DOMAIN: ClassVar[str] = "swarmlm/consensus/audit/v1"
    AUTHOR: ClassVar[str] = "coordinator"
    coordinator: str
    round_id: str
    question: str  # id in the shipped labeled set
    task: str  # the round's task text (its hash is the spec's prompt_hash)
    answers: tuple[str, ...]  # the candidates' answers, in candidate-id order


def question_by_id(qid: str) -> Question:
    """A generated question (``gen-`` + its seed, ``auditgen``) or one of the shipped labeled set."""
    gen = question_for(qid)
    if gen is not None:
        return gen
    for q in load_questions():
        if q.id == qid:
            return q
    raise ConsensusError(f"audit question {qid[:80]!r} is neither generated nor in the shipped labeled set")


def asks(task: str, q: Question) -> bool:
    """Whether the task text asks exactly the question (a bare prompt, or a JSON task whose prompt
    or only user message is the question's prompt)."""
    p = prompt_of(q)
    if task == p:
        return True
    try:
        t = json.loads(task)
    except ValueError:
        return False
    if not isinstance(t, dict):
        return False
    if isinstance(t.get("prompt"), str):
        return t["prompt"] == p
    msgs = t.get("messages")
    return (isinstance(msgs, list) and len(msgs) == 1 and isinstance(msgs[0], dict)
            and msgs[0].get("role") == "user" and msgs[0].get("content") == p)


def seal_audit(identity: Identity, rnd: VerifiedRound, question: str, task: str,
               answers: Mapping[str, str]) -> bytes:
    """The coordinator's signed audit record of a finished round (``answers``: candidate id -> text)."""
    rec = AuditRecord(identity.peer_id, rnd.round_id, question, task,
                      tuple(answers[c] for c in rnd.candidate_ids))
    data = rec.seal(identity).encode()
    if len(data) > MAX_AUDIT_BYTES:
        raise ConsensusError(f"the audit record is {len(data)} bytes, more than {MAX_AUDIT_BYTES}")
    return data


def open_audit(data: bytes | Envelope) -> AuditRecord:
    if isinstance(data, (bytes, bytearray)) and len(data) > MAX_AUDIT_BYTES:
        raise ConsensusError("audit record too large")
    return open_as(AuditRecord, data)


def audit_ref(envelope: bytes) -> DetailRef:
    """The state's reference to an audit record kept as a blob (its round id, digest and size)."""
    if len(envelope) > MAX_AUDIT_BYTES:
        raise ConsensusError(f"the audit record is {len(envelope)} bytes, more than {MAX_AUDIT_BYTES}")
    return DetailRef(open_audit(envelope).round_id, detail_digest(envelope), len(envelope))


def check_audit_detail(ref: DetailRef, author: str, data: bytes) -> AuditRecord:
    """A fetched audit blob checked against its reference (signed in the state by ``author``)."""
    if len(data) != ref.size or detail_digest(data) != ref.sha256:
        raise ConsensusError("the audit detail does not match its digest")
    a = open_audit(data)
    if a.round_id != ref.round_id or a.coordinator != author:
        raise ConsensusError("the audit detail is another round's, or not by the reference's author")
    return a


def verify_audit(audit: AuditRecord | bytes, rnd: VerifiedRound | RoundRecord | bytes) -> dict[str, bool]:
    """Check an audit record against its (verified) round; which candidate ids answered right."""
    a = audit if isinstance(audit, AuditRecord) else open_audit(audit)
    v = rnd if isinstance(rnd, VerifiedRound) else verify_record(rnd)
    if a.round_id != v.round_id or a.coordinator != v.spec.coordinator:
        raise ConsensusError("the audit names another round or is not by the round's coordinator")
    if text_hash(a.task) != v.spec.prompt_hash:
        raise ConsensusError("the audit's task is not the round's prompt")
    q = question_by_id(a.question)
    if not asks(a.task, q):
        raise ConsensusError("the round's task does not ask the audit question")
    if len(a.answers) != len(v.candidates):
        raise ConsensusError("the audit has another number of answers than the round has candidates")
    for text, head in zip(a.answers, v.candidates):
        if text_hash(text) != head.answer_hash:
            raise ConsensusError(f"the audit's answer of {head.node} is not the one it signed")
    return {cid: is_correct(q, text) for cid, text in zip(v.candidate_ids, a.answers)}
