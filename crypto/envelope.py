"""Signed envelopes: a payload, its author's peer id and an Ed25519 signature over both.

Used for DHT records, swarm-state updates, consensus and verification records. The signed bytes
are a domain-separated msgpack encoding, so a signature made for one purpose (``domain``) never
validates for another.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import msgpack

from swarmlm.crypto.identity import Identity, verify_by_peer_id
from swarmlm.errors import SwarmError

MAX_ENVELOPE_BYTES = 4 * 1024 * 1024


class EnvelopeError(SwarmError):
    """An envelope that does not decode or whose signature does not verify."""


def _signed_bytes(domain: str, author: str, payload: bytes) -> bytes:
    return msgpack.packb(["swarmlm-envelope-v1", domain, author, payload], use_bin_type=True)


@dataclass(frozen=True)
class Envelope:
    domain: str
    author: str  # peer id of the signer
    payload: bytes
    signature: bytes

    @classmethod
    def seal(cls, identity: Identity, domain: str, payload: bytes) -> "Envelope":
        author = identity.peer_id
        return cls(domain, author, payload, identity.sign(_signed_bytes(domain, author, payload)))

    def verify(self, domain: str | None = None) -> bool:
        if domain is not None and self.domain != domain:
            return False
        return verify_by_peer_id(self.author, _signed_bytes(self.domain, self.author, self.payload), self.signature)

    def open(self, domain: str) -> bytes:
        """The payload, after checking the domain and the signature; raises EnvelopeError."""
        if self.domain != domain:
            raise EnvelopeError(f"envelope is for {self.domain!r}, expected {domain!r}")
        if not self.verify():
            raise EnvelopeError(f"bad signature on envelope from {self.author}")
        return self.payload

    def encode(self) -> bytes:
        return msgpack.packb([self.domain, self.author, self.payload, self.signature], use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> "Envelope":
        if len(data) > MAX_ENVELOPE_BYTES:
            raise EnvelopeError(f"envelope of {len(data)} bytes exceeds the {MAX_ENVELOPE_BYTES} byte limit")
        try:
            obj = msgpack.unpackb(data, raw=False, max_bin_len=MAX_ENVELOPE_BYTES, max_str_len=4096,
                                  max_array_len=8, max_map_len=0)
        except Exception as exc:  # msgpack raises several types for malformed input
            raise EnvelopeError(f"envelope does not decode: {exc}") from None
        if (not isinstance(obj, list) or len(obj) != 4 or not isinstance(obj[0], str)
                or not isinstance(obj[1], str) or not isinstance(obj[2], bytes) or not isinstance(obj[3], bytes)):
            raise EnvelopeError("envelope has the wrong shape")
        return cls(obj[0], obj[1], obj[2], obj[3])

    @property
    def digest(self) -> str:
        """Hex SHA-256 of the encoded envelope: a content key for dedup and record ids."""
        return hashlib.sha256(self.encode()).hexdigest()


def content_hash(obj: Any) -> str:
    """Hex SHA-256 of a msgpack-encodable value (canonical for maps with string keys)."""
    return hashlib.sha256(canonical_packb(obj)).hexdigest()


def canonical_packb(obj: Any) -> bytes:
    """msgpack with map keys sorted, so equal values always encode to equal bytes."""

    def norm(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: norm(v[k]) for k in sorted(v)}
        if isinstance(v, (list, tuple)):
            return [norm(x) for x in v]
        return v

    return msgpack.packb(norm(obj), use_bin_type=True)
