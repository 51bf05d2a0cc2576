"""Signed records of a consensus round, their wire packets and the commit-reveal hash.

Every record is a frozen dataclass with a signing ``DOMAIN`` and an ``AUTHOR`` field; it travels
as an ``Envelope`` signed by that author (``seal``) and is only ever read back through ``open_as``,
which checks the domain, the signature, that the signer is the record's author and every field's
type. Ids are content hashes of the record fields (not of signatures).

Large or private text (the prompt, the answers) is never inside a signed record: records carry its
SHA-256 and a ``Packet`` carries the text next to the envelope, checked against those hashes. So the
round record that enters the swarm state holds hashes, not the prompt.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Sequence, TypeVar

import msgpack

from swarmlm.crypto.envelope import Envelope, EnvelopeError, content_hash
from swarmlm.crypto.identity import Identity
from swarmlm.errors import SwarmError

OUTCOMES = ("A", "B", "tie")
MAX_PACKET_BYTES = 8 * 1024 * 1024
MAX_TEXT_CHARS = 1 << 20

Vote = tuple[str, str, str]  # (candidate id shown first, shown second, "A" | "B" | "tie")


class ConsensusError(SwarmError):
    """A consensus message or record that is malformed, mis-signed or inconsistent."""


class ConsensusUnavailable(ConsensusError):
    """Not enough eligible nodes (whole-model hosts, judges with weight) for a round."""


class CommitMismatch(ConsensusError):
    """A reveal whose votes and salt do not hash to the judge's commitment."""


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# -- field checks --------------------------------------------------------------------------

def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise ConsensusError(f"expected a string, got {type(v).__name__}")
    return v


def _num(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ConsensusError(f"expected a finite number, got {v!r}")
    return float(v)


def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConsensusError(f"expected an integer, got {v!r}")
    return v


def _strs(v: Any) -> tuple[str, ...]:
    if not isinstance(v, (list, tuple)):
        raise ConsensusError("expected a list of strings")
    return tuple(_str(x) for x in v)


def _blobs(v: Any) -> tuple[bytes, ...]:
    if not isinstance(v, (list, tuple)) or not all(isinstance(x, bytes) for x in v):
        raise ConsensusError("expected a list of byte strings")
    return tuple(v)


def _ints(v: Any) -> tuple[int, ...]:
    if not isinstance(v, (list, tuple)):
        raise ConsensusError("expected a list of integers")
    return tuple(_int(x) for x in v)


def _nums(v: Any) -> dict[str, float]:
    if not isinstance(v, dict):
        raise ConsensusError("expected a map of numbers")
    return {_str(k): _num(x) for k, x in v.items()}


def _votes(v: Any) -> tuple[Vote, ...]:
    if not isinstance(v, (list, tuple)):
        raise ConsensusError("votes must be a list")
    out = []
    for item in v:
        if not isinstance(item, (list, tuple)) or len(item) != 3:
            raise ConsensusError("a vote is [first id, second id, outcome]")
        a, b, o = (_str(x) for x in item)
        if o not in OUTCOMES:
            raise ConsensusError(f"vote outcome {o!r} is not one of {OUTCOMES}")
        out.append((a, b, o))
    return tuple(out)


def _pairs(v: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(v, (list, tuple)) or not all(isinstance(x, (list, tuple)) and len(x) == 2 for x in v):
        raise ConsensusError("expected a list of [node, reason] pairs")
    return tuple((_str(a), _str(b)) for a, b in v)


_CHECKS = {"str": _str, "float": _num, "int": _int, "tuple[str, ...]": _strs, "tuple[bytes, ...]": _blobs, "tuple[int, ...]": _ints,
           "dict[str, float]": _nums, "tuple[Vote, ...]": _votes, "tuple[tuple[str, str], ...]": _pairs}


class Record:
    """Mixin: msgpack object form, content id, sealing and checked opening."""

    DOMAIN: ClassVar[str]
    AUTHOR: ClassVar[str]

    def to_obj(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if f.metadata.get("optional") and not v:
                continue  # an empty optional field is left out: records written before it keep their ids
            if isinstance(v, tuple):
                v = [list(x) if isinstance(x, tuple) else x for x in v]
            out[f.name] = v
        return out

    @classmethod
    def from_obj(cls: type[R], obj: Any) -> R:
        if not isinstance(obj, dict):
            raise ConsensusError(f"{cls.__name__} must be a map")
        names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
        needed = {f.name for f in fields(cls) if not f.metadata.get("optional")}  # type: ignore[arg-type]
        if not needed <= set(obj) <= set(names):
            raise ConsensusError(f"{cls.__name__} has fields {sorted(obj)}, expected {sorted(names)}")
        kwargs = {}
        for f in fields(cls):  # type: ignore[arg-type]
            if f.name in obj:
                kwargs[f.name] = _CHECKS[str(f.type)](obj[f.name])
        rec = cls(**kwargs)
        rec.check()
        return rec

    def check(self) -> None:
        """Extra consistency checks of a subclass (raise ConsensusError)."""

    @property
    def id(self) -> str:
        return content_hash([self.DOMAIN, self.to_obj()])

    @property
    def author(self) -> str:
        return getattr(self, self.AUTHOR)

    def seal(self, identity: Identity) -> Envelope:
        if identity.peer_id != self.author:
            raise ConsensusError(f"{type(self).__name__} by {self.author} cannot be signed by {identity.peer_id}")
        return Envelope.seal(identity, self.DOMAIN, msgpack.packb(self.to_obj(), use_bin_type=True))


R = TypeVar("R", bound=Record)


def open_as(cls: type[R], env: Envelope | bytes) -> R:
    """Decode, verify (domain, signature, signer == author) and type-check one record."""
    try:
        if isinstance(env, (bytes, bytearray)):
            env = Envelope.decode(bytes(env))
        payload = env.open(cls.DOMAIN)
    except EnvelopeError as exc:
        raise ConsensusError(str(exc)) from None
    try:
        obj = msgpack.unpackb(payload, raw=False, strict_map_key=True, max_bin_len=MAX_PACKET_BYTES,
                              max_str_len=MAX_TEXT_CHARS, max_array_len=100_000, max_map_len=10_000)
    except Exception as exc:  # msgpack raises several types for malformed input
        raise ConsensusError(f"{cls.__name__} payload does not decode: {exc}") from None
    rec = cls.from_obj(obj)
    if rec.author != env.author:
        raise ConsensusError(f"{cls.__name__} names author {rec.author} but is signed by {env.author}")
    return rec


# -- the records -----------------------------------------------------------------------------

@dataclass(frozen=True)
class RoundSpec(Record):
    """The coordinator's announcement: who answers, who judges, the seed and the phase deadlines."""

    DOMAIN: ClassVar[str] = "swarmlm/consensus/spec/v1"
    AUTHOR: ClassVar[str] = "coordinator"
    coordinator: str
    prompt_hash: str
    candidates: tuple[str, ...]  # peer ids asked for an answer
    judges: tuple[str, ...]  # peer ids asked to judge
    seed: str
    created_at: float
    candidate_deadline: float
    commit_deadline: float
    reveal_deadline: float
    min_candidates: int
    min_judges: int
    pair_factor: int

    def check(self) -> None:
        if not (self.created_at <= self.candidate_deadline <= self.commit_deadline <= self.reveal_deadline):
            raise ConsensusError("round deadlines must be in order")
        if len(set(self.candidates)) != len(self.candidates) or len(set(self.judges)) != len(self.judges):
            raise ConsensusError("a node is listed twice in the round")
        if self.min_candidates < 2 or self.min_judges < 1 or self.pair_factor < 1:
            raise ConsensusError("a round needs 2 candidates, 1 judge and a pair factor of at least 1")


@dataclass(frozen=True)
class CandidateHeader(Record):
    """A node's signed claim to an answer in a round (the answer itself travels beside it)."""

    DOMAIN: ClassVar[str] = "swarmlm/consensus/candidate/v1"
    AUTHOR: ClassVar[str] = "node"
    round_id: str
    node: str
    answer_hash: str
    model: str
    sampling: str  # free text, e.g. "temperature=0.7 top_p=0.9"


@dataclass(frozen=True)
class JudgeRequest(Record):
    """Coordinator -> judges: the spec and the candidates that made the deadline, in id order."""

    DOMAIN: ClassVar[str] = "swarmlm/consensus/judge-request/v1"
    AUTHOR: ClassVar[str] = "coordinator"
    coordinator: str
    round_id: str
    spec: tuple[bytes, ...]  # exactly one encoded RoundSpec envelope
    candidates: tuple[bytes, ...]  # encoded CandidateHeader envelopes


@dataclass(frozen=True)
class Commit(Record):
    DOMAIN: ClassVar[str] = "swarmlm/consensus/commit/v1"
    AUTHOR: ClassVar[str] = "judge"
    round_id: str
    judge: str
    commitment: str


@dataclass(frozen=True)
class RevealRequest(Record):
    """Coordinator -> judges: every commit is in (or its deadline passed); these judges may reveal."""

    DOMAIN: ClassVar[str] = "swarmlm/consensus/reveal-request/v1"
    AUTHOR: ClassVar[str] = "coordinator"
    coordinator: str
    round_id: str
    judges: tuple[str, ...]


@dataclass(frozen=True)
class Reveal(Record):
    DOMAIN: ClassVar[str] = "swarmlm/consensus/reveal/v1"
    AUTHOR: ClassVar[str] = "judge"
    round_id: str
    judge: str
    votes: tuple[Vote, ...]
    salt: str


@dataclass(frozen=True)
class RoundRecord(Record):
    """The signed outcome added to the swarm state (see ``audit.verify_record``)."""

    DOMAIN: ClassVar[str] = "swarmlm/consensus/round/v1"
    AUTHOR: ClassVar[str] = "coordinator"
    coordinator: str
    round_id: str
    spec: tuple[bytes, ...]  # exactly one encoded RoundSpec envelope (prompt hash, seed, times)
    candidates: tuple[bytes, ...]  # encoded CandidateHeader envelopes, in candidate-id order
    reveals: tuple[bytes, ...]  # encoded Reveal envelopes, in judge order
    weights: dict[str, float]  # judge -> weight used in the fit
    strengths: dict[str, float]  # candidate id -> BT strength (sums to 1)
    winner: str  # candidate id
    dropped: tuple[tuple[str, str], ...]  # (peer id, phase it missed or why it was refused)
    finished_at: float
    # candidate id -> its author's prior (``consensus.priors``) when the winner was picked with them
    priors: dict[str, float] = field(default_factory=dict, metadata={"optional": True})


def commitment(round_id: str, judge: str, votes: Sequence[Vote], salt: str) -> str:
    """The commit hash: over the round id, the judge, its votes in order and a random salt."""
    return content_hash(["swarmlm-consensus-commit-v1", round_id, judge, [list(v) for v in votes], salt])


def new_salt() -> str:
    return os.urandom(32).hex()


def check_reveal(reveal: Reveal, commit: Commit) -> None:
    """Raise CommitMismatch unless ``reveal`` opens ``commit``."""
    if reveal.round_id != commit.round_id or reveal.judge != commit.judge:
        raise CommitMismatch(f"reveal by {reveal.judge} does not belong to that commit")
    if commitment(reveal.round_id, reveal.judge, reveal.votes, reveal.salt) != commit.commitment:
        raise CommitMismatch(f"reveal by {reveal.judge} does not match its commitment")


def candidate_id(header: CandidateHeader) -> str:
    return header.id


# -- wire packets ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Packet:
    """One round message on the wire: a signed envelope plus the texts its record only hashes.

    Texts: a spec packet carries ``(prompt,)``, a candidate packet ``(answer,)``, a judge request
    ``(prompt, answer of each candidate in order)``; the others carry none.
    """

    envelope: Envelope
    texts: tuple[str, ...] = ()

    @property
    def domain(self) -> str:
        return self.envelope.domain

    @property
    def sender(self) -> str:
        return self.envelope.author

    def encode(self) -> bytes:
        return msgpack.packb([self.envelope.encode(), list(self.texts)], use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> "Packet":
        if len(data) > MAX_PACKET_BYTES:
            raise ConsensusError(f"packet of {len(data)} bytes exceeds {MAX_PACKET_BYTES}")
        try:
            obj = msgpack.unpackb(data, raw=False, max_bin_len=MAX_PACKET_BYTES, max_str_len=MAX_TEXT_CHARS,
                                  max_array_len=1024, max_map_len=0)
        except Exception as exc:  # msgpack raises several types for malformed input
            raise ConsensusError(f"packet does not decode: {exc}") from None
        if (not isinstance(obj, list) or len(obj) != 2 or not isinstance(obj[0], bytes)
                or not isinstance(obj[1], list) or not all(isinstance(t, str) for t in obj[1])):
            raise ConsensusError("packet has the wrong shape")
        try:
            env = Envelope.decode(obj[0])
        except EnvelopeError as exc:
            raise ConsensusError(str(exc)) from None
        return cls(env, tuple(obj[1]))
