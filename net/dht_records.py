"""Signed DHT records under our own namespace, and the validator the Kademlia DHT runs on them.

Key layout: ``/swarmlm/<owner peer id>/<name>``. The value is an ``Envelope`` (domain
``swarmlm/dht/v1``) signed by the owner whose payload is msgpack ``[key, seq, value]``. A record
is valid only when it decodes, its signature verifies, its author is the owner named in the key
and it names the key it is stored under; between valid records the highest ``seq`` wins (the
owner uses a clock, so a newer record replaces an older one). Pure: no networking here.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack

from swarmlm.crypto.envelope import Envelope, EnvelopeError
from swarmlm.crypto.identity import Identity
from swarmlm.errors import SwarmError

NAMESPACE = "swarmlm"
DOMAIN = "swarmlm/dht/v1"
MAX_RECORD_BYTES = 64 * 1024


class RecordError(SwarmError):
    """A DHT record that is malformed, badly signed or written by someone who does not own its key."""


def record_key(owner: str, name: str) -> str:
    if "/" in owner or not name or len(name) > 256:
        raise RecordError(f"bad record name {name!r}")
    return f"/{NAMESPACE}/{owner}/{name}"


def owner_of(key: str) -> str:
    parts = key.split("/", 3)
    if len(parts) != 4 or parts[0] != "" or parts[1] != NAMESPACE or not parts[2] or not parts[3]:
        raise RecordError(f"key {key!r} is not of the form /{NAMESPACE}/<owner>/<name>")
    return parts[2]


@dataclass(frozen=True)
class SignedRecord:
    key: str
    seq: int
    value: bytes
    author: str

    @classmethod
    def make(cls, identity: Identity, name: str, value: bytes, seq: int) -> bytes:
        """Encoded, signed record for ``/swarmlm/<identity>/<name>``."""
        if len(value) > MAX_RECORD_BYTES:
            raise RecordError(f"record value of {len(value)} bytes exceeds {MAX_RECORD_BYTES}")
        key = record_key(identity.peer_id, name)
        payload = msgpack.packb([key, int(seq), value], use_bin_type=True)
        return Envelope.seal(identity, DOMAIN, payload).encode()

    @classmethod
    def verify(cls, key: str, raw: bytes) -> "SignedRecord":
        """Decode and check a record stored under ``key``; raises RecordError."""
        owner = owner_of(key)
        if len(raw) > MAX_RECORD_BYTES + 1024:
            raise RecordError("record too large")
        try:
            env = Envelope.decode(raw)
            payload = env.open(DOMAIN)
        except EnvelopeError as exc:
            raise RecordError(f"record for {key}: {exc}") from None
        if env.author != owner:
            raise RecordError(f"record for {key} is signed by {env.author}, not by its owner {owner}")
        try:
            rkey, seq, value = msgpack.unpackb(payload, raw=False, max_bin_len=MAX_RECORD_BYTES,
                                               max_str_len=1024, max_array_len=3, max_map_len=0)
        except Exception:
            raise RecordError(f"record for {key} has a malformed payload") from None
        if rkey != key or not isinstance(seq, int) or not isinstance(value, bytes):
            raise RecordError(f"record names key {rkey!r}, stored under {key!r}")
        return cls(key, seq, value, env.author)


class SignedRecordValidator:
    """libp2p ``Validator`` for the /swarmlm namespace (duck-typed: validate + select)."""

    def __init__(self) -> None:
        self.rejected = 0

    def validate(self, key: str, value: bytes) -> None:
        try:
            SignedRecord.verify(key, value)
        except RecordError:
            self.rejected += 1
            raise

    def select(self, key: str, values: list[bytes]) -> int:
        best, best_seq = 0, -1
        for i, raw in enumerate(values):
            try:
                seq = SignedRecord.verify(key, raw).seq
            except RecordError:
                continue
            if seq > best_seq:
                best, best_seq = i, seq
        return best
