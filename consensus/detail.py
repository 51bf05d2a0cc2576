"""A round's detail as a content-addressed blob: what the swarm state holds when the record is large.

A ``RoundRecord`` carries every reveal, so it grows with candidates x judges; a swarm-state record
holds at most 16 KiB. A round whose record does not fit is stored as its *detail*: the encoded,
signed record envelope, kept off the state and fetched by its SHA-256. The state holds only a small
record (``detail_ref``: the round id, the digest and the size), which the swarm state signs as the
coordinator's. Whoever fetches the blob checks it (``check_detail``): its size, its hash, and that it
is a valid round record (``audit.verify_record``) of that round by that coordinator.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from swarmlm.consensus.audit import VerifiedRound, verify_record
from swarmlm.consensus.records import ConsensusError

MAX_DETAIL_BYTES = 512 * 1024
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class DetailRef:
    """The state's pointer to a round's detail blob."""

    round_id: str
    sha256: str
    size: int

    def to_obj(self) -> dict[str, Any]:
        return {"round": self.round_id, "sha256": self.sha256, "size": self.size}

    @classmethod
    def from_obj(cls, obj: Any) -> "DetailRef":
        if not isinstance(obj, dict) or set(obj) != {"round", "sha256", "size"}:
            raise ConsensusError("a round detail reference is a map of round, sha256 and size")
        rid, digest, size = obj["round"], obj["sha256"], obj["size"]
        if not (isinstance(rid, str) and _HEX64.fullmatch(rid) and isinstance(digest, str) and _HEX64.fullmatch(digest)):
            raise ConsensusError("a round detail reference needs a round id and a sha256 in hex")
        if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= MAX_DETAIL_BYTES:
            raise ConsensusError(f"a round detail is 1..{MAX_DETAIL_BYTES} bytes")
        return cls(rid, digest, size)


def detail_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def detail_ref(record_envelope: bytes) -> DetailRef:
    """The reference a coordinator stores for its round record's encoded envelope."""
    if len(record_envelope) > MAX_DETAIL_BYTES:
        raise ConsensusError(f"the round record is {len(record_envelope)} bytes, more than {MAX_DETAIL_BYTES}")
    v = verify_record(record_envelope)
    return DetailRef(v.round_id, detail_digest(record_envelope), len(record_envelope))


def check_detail(ref: DetailRef, author: str, data: bytes) -> VerifiedRound:
    """A fetched blob checked against its reference (signed in the state by ``author``)."""
    if len(data) != ref.size or detail_digest(data) != ref.sha256:
        raise ConsensusError("the round detail does not match its digest")
    v = verify_record(data)
    if v.round_id != ref.round_id or v.record.coordinator != author:
        raise ConsensusError("the round detail is another round's, or not by the reference's author")
    return v
