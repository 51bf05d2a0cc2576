"""The answering node's and the judge's side of a round: pure functions over packets.

A candidate node turns the coordinator's spec packet into an answer packet (``answer_packet``). A
judge opens the judge request (``JudgeSession.open``), gets its assigned pairs with their texts,
decides each one (with a ``Judge`` backend, possibly slowly: the driver runs it), sends the commit
and keeps the session until the reveal request arrives, then sends the reveal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from swarmlm.consensus.audit import expected_pairs, open_candidates, open_spec, verify_record
from swarmlm.consensus.judging import Judge
from swarmlm.consensus.pairwise import ScreenedJudge
from swarmlm.consensus.records import (OUTCOMES, CandidateHeader, Commit, ConsensusError, JudgeRequest, Packet,
                                       Reveal, RevealRequest, RoundRecord, RoundSpec, commitment, new_salt,
                                       open_as, text_hash)
from swarmlm.consensus.screens import screen_all, was_cut_off
from swarmlm.crypto.identity import Identity


def open_spec_packet(packet: Packet) -> tuple[RoundSpec, str]:
    """The verified spec and the prompt it announces (its hash checked)."""
    spec = open_as(RoundSpec, packet.envelope)
    if len(packet.texts) != 1 or text_hash(packet.texts[0]) != spec.prompt_hash:
        raise ConsensusError("the prompt does not match the round's prompt hash")
    return spec, packet.texts[0]


def answer_packet(identity: Identity, spec: RoundSpec, answer: str, model: str = "", sampling: str = "") -> Packet:
    """The signed candidate for ``spec`` (refuses a node the coordinator did not ask)."""
    if identity.peer_id not in spec.candidates:
        raise ConsensusError("this node was not asked for a candidate in that round")
    head = CandidateHeader(spec.id, identity.peer_id, text_hash(answer), model, sampling)
    return Packet(head.seal(identity), (answer,))


@dataclass(frozen=True)
class PairTask:
    """One comparison: the answers shown as A (first) and B (second)."""

    first: str  # candidate id
    second: str
    answer_a: str
    answer_b: str


@dataclass
class JudgeSession:
    identity: Identity
    spec: RoundSpec
    prompt: str
    tasks: list[PairTask]
    commit_record: Commit | None = None
    reveal_record: Reveal | None = None
    salt: str = field(default="", repr=False)
    screened: dict[str, str] = field(default_factory=dict)  # answer text -> screen reason

    @classmethod
    def open(cls, identity: Identity, packet: Packet) -> "JudgeSession":
        """Verify the coordinator's judge request and derive this judge's pairs."""
        req = open_as(JudgeRequest, packet.envelope)
        spec = open_spec(req.spec, req.coordinator)
        if spec.id != req.round_id or identity.peer_id not in spec.judges:
            raise ConsensusError("this node is not a judge of that round")
        heads, ids = open_candidates(spec, req.candidates)
        if len(packet.texts) != 1 + len(heads) or text_hash(packet.texts[0]) != spec.prompt_hash:
            raise ConsensusError("the judge request's texts do not match its hashes")
        answers = dict(zip(ids, packet.texts[1:]))
        for h, cid in zip(heads, ids):
            if text_hash(answers[cid]) != h.answer_hash:
                raise ConsensusError(f"the answer of {h.node} does not match its hash")
        pairs = expected_pairs(spec, identity.peer_id, heads, ids)
        why = screen_all(packet.texts[0], {cid: (answers[cid], was_cut_off(h.sampling)) for h, cid in zip(heads, ids)})
        return cls(identity, spec, packet.texts[0], [PairTask(a, b, answers[a], answers[b]) for a, b in pairs],
                   screened={answers[cid]: r for cid, r in why.items()})

    @property
    def round_id(self) -> str:
        return self.spec.id

    def decide(self, judge: Judge) -> list[str]:
        """Run a judging backend over every task behind the screens (blocking; the driver may run
        it in a thread). A judge with ``judge_many`` gets all its pairs in one call (batched)."""
        return list(ScreenedJudge(judge, self.screened).judge_many(
            self.prompt, [(t.answer_a, t.answer_b) for t in self.tasks]))

    def commit(self, outcomes: Sequence[str], salt: str | None = None) -> Packet:
        """The commit packet for these outcomes (one per task, in order); remembers them for the reveal."""
        if len(outcomes) != len(self.tasks) or any(o not in OUTCOMES for o in outcomes):
            raise ConsensusError(f"need one of {OUTCOMES} for each of the {len(self.tasks)} pairs")
        if self.commit_record is not None:
            raise ConsensusError("already committed")
        self.salt = salt or new_salt()
        votes = tuple((t.first, t.second, o) for t, o in zip(self.tasks, outcomes))
        me = self.identity.peer_id
        self.reveal_record = Reveal(self.round_id, me, votes, self.salt)
        self.commit_record = Commit(self.round_id, me, commitment(self.round_id, me, votes, self.salt))
        return Packet(self.commit_record.seal(self.identity))

    def reveal(self, packet: Packet) -> Packet:
        """Answer the coordinator's reveal request (only once every commit is in)."""
        req = open_as(RevealRequest, packet.envelope)
        if req.coordinator != self.spec.coordinator or req.round_id != self.round_id:
            raise ConsensusError("reveal request from another round or coordinator")
        if self.reveal_record is None or self.identity.peer_id not in req.judges:
            raise ConsensusError("this judge has no commit in that round")
        return Packet(self.reveal_record.seal(self.identity))


def open_result(packet: Packet) -> RoundRecord:
    """A participant's check of the final record packet (full audit: see ``audit.verify_record``)."""
    return verify_record(open_as(RoundRecord, packet.envelope)).record
