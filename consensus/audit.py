"""Checks shared by everyone who reads round messages: candidates, reveals and whole round records.

``verify_record`` is what a node runs on a round record from the swarm state before trusting it:
every inner envelope must be signed by the node it names, every reveal must vote on exactly the
pairs the seeded assignment gives that judge, and the stored strengths must be what weighted BT
gives for those votes and the stored weights.
"""

from __future__ import annotations

from dataclasses import dataclass

from swarmlm.consensus import bt
from swarmlm.consensus.pairs import assign_pairs
from swarmlm.consensus.priors import prior_pick
from swarmlm.consensus.screens import SCREENED_PREFIX
from swarmlm.consensus.records import (CandidateHeader, ConsensusError, Reveal, RoundRecord, RoundSpec, Vote,
                                       open_as)

STRENGTH_TOLERANCE = 1e-6


@dataclass(frozen=True)
class VerifiedRound:
    """A round record whose signatures, assignments and fit have been checked, in parsed form."""

    record: RoundRecord
    spec: RoundSpec
    candidates: tuple[CandidateHeader, ...]  # in candidate-id order
    candidate_ids: tuple[str, ...]
    votes: dict[str, tuple[Vote, ...]]  # judge -> votes

    @property
    def round_id(self) -> str:
        return self.spec.id

    @property
    def time(self) -> float:
        return self.spec.created_at

    def node_of(self, cand_id: str) -> str:
        return self.candidates[self.candidate_ids.index(cand_id)].node


def open_spec(blobs: tuple[bytes, ...], coordinator: str) -> RoundSpec:
    if len(blobs) != 1:
        raise ConsensusError("exactly one round spec expected")
    spec = open_as(RoundSpec, blobs[0])
    if spec.coordinator != coordinator:
        raise ConsensusError("the round spec is from another coordinator")
    return spec


def open_candidates(spec: RoundSpec, blobs: tuple[bytes, ...]) -> tuple[tuple[CandidateHeader, ...], tuple[str, ...]]:
    """Verified candidate headers in id order; each from a listed node, one per node, this round."""
    heads = [open_as(CandidateHeader, b) for b in blobs]
    nodes = [h.node for h in heads]
    if len(set(nodes)) != len(nodes):
        raise ConsensusError("a node has two candidates in the round")
    for h in heads:
        if h.round_id != spec.id or h.node not in spec.candidates:
            raise ConsensusError(f"candidate from {h.node} does not belong to round {spec.id}")
    ids = [h.id for h in heads]
    if ids != sorted(ids):
        raise ConsensusError("candidates must be in id order")
    return tuple(heads), tuple(ids)


def expected_pairs(spec: RoundSpec, judge: str, heads: tuple[CandidateHeader, ...],
                   ids: tuple[str, ...]) -> list[tuple[str, str]]:
    own = [i for h, i in zip(heads, ids) if h.node == judge]
    return assign_pairs(spec.seed, judge, ids, exclude=own, factor=spec.pair_factor)


def check_votes(spec: RoundSpec, reveal: Reveal, heads: tuple[CandidateHeader, ...], ids: tuple[str, ...]) -> None:
    """Raise unless ``reveal`` is for this round and votes on exactly its assigned pairs, in order."""
    if reveal.round_id != spec.id or reveal.judge not in spec.judges:
        raise ConsensusError(f"reveal from {reveal.judge} does not belong to round {spec.id}")
    want = expected_pairs(spec, reveal.judge, heads, ids)
    got = [(a, b) for a, b, _ in reveal.votes]
    if got != want:
        raise ConsensusError(f"reveal from {reveal.judge} does not vote on its assigned pairs")


def _check_prior_pick(rec: RoundRecord, heads: tuple[CandidateHeader, ...], ids: tuple[str, ...],
                      screened: set[str], tolerance: float) -> None:
    """The winner of a record with author priors: the largest log(strength) + log(prior), unscreened."""
    if set(rec.priors) != set(ids) or any(not (0.0 < p <= 1.0) for p in rec.priors.values()):
        raise ConsensusError("round record priors must cover exactly its candidates, each in (0, 1]")
    eligible = [i for i, h in enumerate(heads) if h.node not in screened] or list(range(len(ids)))
    best = ids[prior_pick([rec.strengths[c] for c in ids], ids, rec.priors, eligible)]
    # compared as products (strength x prior, both at most 1): the strengths are checked only to tolerance
    if rec.strengths[rec.winner] * rec.priors[rec.winner] < rec.strengths[best] * rec.priors[best] - tolerance:
        raise ConsensusError("round record winner is not the best unscreened candidate by strength and prior")


def verify_record(rec: RoundRecord | bytes, *, tolerance: float = STRENGTH_TOLERANCE) -> VerifiedRound:
    """Check a round record end to end (a ``RoundRecord`` is taken as already signature-checked)."""
    if isinstance(rec, (bytes, bytearray)):
        rec = open_as(RoundRecord, bytes(rec))
    spec = open_spec(rec.spec, rec.coordinator)
    if rec.round_id != spec.id:
        raise ConsensusError("round record id does not match its spec")
    if not (spec.created_at <= rec.finished_at):
        raise ConsensusError("round record finishes before it starts")
    heads, ids = open_candidates(spec, rec.candidates)
    if len(ids) < spec.min_candidates:
        raise ConsensusError("round record has too few candidates")
    votes: dict[str, tuple[Vote, ...]] = {}
    for blob in rec.reveals:
        reveal = open_as(Reveal, blob)
        if reveal.judge in votes:
            raise ConsensusError(f"two reveals from {reveal.judge}")
        check_votes(spec, reveal, heads, ids)
        votes[reveal.judge] = reveal.votes
    if len(votes) < spec.min_judges:
        raise ConsensusError("round record has too few judges")
    if set(rec.weights) != set(votes) or any(w < 0 for w in rec.weights.values()):
        raise ConsensusError("round record weights must cover exactly its judges")
    if set(rec.strengths) != set(ids) or rec.winner not in rec.strengths:
        raise ConsensusError("round record strengths must cover exactly its candidates")
    fit = bt.aggregate(ids, votes, rec.weights)
    for cid, s in zip(ids, fit.strengths):
        if abs(rec.strengths[cid] - s) > tolerance:
            raise ConsensusError(f"round record strength of {cid[:12]} is not the BT fit of its votes")
    screened = {n for n, why in rec.dropped if why.startswith(SCREENED_PREFIX)}
    unscreened = [h for h in heads if h.node not in screened]
    if len(ids) > len(unscreened) > 0 and heads[ids.index(rec.winner)].node in screened:
        raise ConsensusError("round record winner is a screened candidate")
    if rec.priors:
        _check_prior_pick(rec, heads, ids, screened, tolerance)
    else:
        eligible = [s for h, s in zip(heads, fit.strengths) if h.node not in screened] or list(fit.strengths)
        if abs(rec.strengths[rec.winner] - max(eligible)) > tolerance:
            raise ConsensusError("round record winner is not the strongest unscreened candidate")
    return VerifiedRound(rec, spec, heads, ids, votes)
