"""Signed consensus records and commit-reveal: a reveal that does not match its commit is rejected."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest

from swarmlm.consensus.records import (Commit, CommitMismatch, ConsensusError, Packet, Reveal, RoundSpec,
                                       check_reveal, commitment, new_salt, open_as, text_hash)
from swarmlm.crypto.envelope import Envelope
from swarmlm.crypto.identity import Identity

JUDGE = Identity.from_seed(b"\x01" * 32)
OTHER = Identity.from_seed(b"\x02" * 32)
VOTES = (("c1", "c2", "A"), ("c2", "c1", "B"), ("c1", "c3", "tie"))


def _pair(votes=VOTES, salt="00" * 32):
    me = JUDGE.peer_id
    com = Commit("round-1", me, commitment("round-1", me, votes, salt))
    return com, Reveal("round-1", me, votes, salt)


def test_reveal_matching_its_commit_is_accepted_after_the_wire():
    com, rev = _pair()
    com2 = open_as(Commit, Packet.decode(Packet(com.seal(JUDGE)).encode()).envelope)
    rev2 = open_as(Reveal, rev.seal(JUDGE).encode())
    assert rev2 == rev and com2 == com
    check_reveal(rev2, com2)


@pytest.mark.parametrize("change", [
    lambda r: dataclasses.replace(r, votes=(("c1", "c2", "B"),) + r.votes[1:]),  # changed a vote
    lambda r: dataclasses.replace(r, votes=r.votes[1:] + r.votes[:1]),  # reordered
    lambda r: dataclasses.replace(r, salt="11" * 32),  # other salt
    lambda r: dataclasses.replace(r, round_id="round-2"),
])
def test_reveal_not_matching_its_commit_is_rejected(change):
    com, rev = _pair()
    with pytest.raises(CommitMismatch):
        check_reveal(change(rev), com)


def test_commitment_hides_and_binds():
    a = commitment("r", "j", VOTES, new_salt())
    b = commitment("r", "j", VOTES, new_salt())
    assert a != b  # the salt hides equal votes
    assert commitment("r", "j", VOTES, "x") != commitment("r", "j2", VOTES, "x")


def test_signature_author_and_domain_are_checked():
    com, _ = _pair()
    env = com.seal(JUDGE)
    with pytest.raises(ConsensusError):  # signed by someone else than the named judge
        Commit("round-1", JUDGE.peer_id, "x").seal(OTHER)
    forged = Envelope.seal(OTHER, Commit.DOMAIN, env.payload)  # valid signature, wrong author
    with pytest.raises(ConsensusError, match="signed by"):
        open_as(Commit, forged)
    tampered = Envelope(env.domain, env.author, env.payload.replace(b"round-1", b"round-9"), env.signature)
    with pytest.raises(ConsensusError, match="signature"):
        open_as(Commit, tampered)
    with pytest.raises(ConsensusError):  # right signature, other record type
        open_as(Reveal, env)


def test_malformed_payloads_are_rejected():
    me = JUDGE.peer_id
    bad_outcome = {"round_id": "r", "judge": me, "votes": [["a", "b", "maybe"]], "salt": "s"}
    missing = {"round_id": "r", "judge": me, "votes": []}
    wrong_type = {"round_id": 5, "judge": me, "commitment": "c"}
    for cls, obj in ((Reveal, bad_outcome), (Reveal, missing), (Commit, wrong_type)):
        env = Envelope.seal(JUDGE, cls.DOMAIN, msgpack.packb(obj))
        with pytest.raises(ConsensusError):
            open_as(cls, env)
    with pytest.raises(ConsensusError):
        Packet.decode(b"\x93\x01\x02\x03")
    with pytest.raises(ConsensusError):
        open_as(Commit, b"not an envelope")


def test_spec_checks_deadlines_and_ids_are_content_hashes():
    spec = RoundSpec(JUDGE.peer_id, text_hash("q"), ("a", "b"), ("a", "b"), "s", 0.0, 1.0, 2.0, 3.0, 2, 1, 3)
    spec.check()
    assert spec.id == dataclasses.replace(spec).id
    assert spec.id != dataclasses.replace(spec, seed="t").id
    with pytest.raises(ConsensusError):
        dataclasses.replace(spec, commit_deadline=0.5).check()
    with pytest.raises(ConsensusError):
        dataclasses.replace(spec, judges=("a", "a")).check()
