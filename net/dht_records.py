"""Signed DHT records under our own namespace, and the validator the Kademlia DHT runs on them.

Key layout: ``/swarmlm/<owner peer id>/<name>``. The value is an ``Envelope`` (domain
``swarmlm/dht/v1``) signed by the owner whose payload is msgpack ``[key, seq, value]``. A record
is valid only when it decodes, its signature verifies, its author is the owner named in the key
and it names the key it is stored under; between valid records the highest ``seq`` wins (the
owner uses a clock, so a newer record replaces an older one). The validator also bounds what
other peers can make this node store: at most ``max_names_per_owner`` keys per owner, ``max_keys``
keys and ``max_bytes`` bytes in total, of which ``reserved`` keys only ``protected`` (established)
owners may use; keys are forgotten with the DHT's record TTL. Pure: no networking here.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Callable

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
    """libp2p ``Validator`` for the /swarmlm namespace (duck-typed: validate + select), with quotas."""

    def __init__(self, max_names_per_owner: int = 8, max_keys: int = 4096, max_bytes: int = 64 << 20,
                 reserved: int = 512, ttl_s: float = 24 * 3600.0) -> None:
        self.rejected = 0
        self.max_names_per_owner, self.max_keys, self.max_bytes = max_names_per_owner, max_keys, max_bytes
        self.reserved, self.ttl_s = reserved, ttl_s
        self.protected: Callable[[str], bool] = lambda owner: False
        self._keys: OrderedDict[str, tuple[int, float]] = OrderedDict()  # key -> (bytes, last seen)
        self._names: Counter[str] = Counter()
        self.bytes = 0

    def validate(self, key: str, value: bytes) -> None:
        try:
            rec = SignedRecord.verify(key, value)
            self._admit(key, rec.author, len(value), time.monotonic())
        except RecordError:
            self.rejected += 1
            raise

    @property
    def stored(self) -> int:
        """How many keys other peers' records hold here (within ``ttl_s``)."""
        return len(self._keys)

    def _drop(self, key: str) -> None:
        size, _ = self._keys.pop(key)
        self.bytes -= size
        owner = owner_of(key)
        self._names[owner] -= 1
        if self._names[owner] <= 0:
            del self._names[owner]

    def _admit(self, key: str, owner: str, size: int, now: float) -> None:
        while self._keys and now - next(iter(self._keys.values()))[1] > self.ttl_s:
            self._drop(next(iter(self._keys)))
        if key in self._keys:
            self.bytes += size - self._keys[key][0]
            self._keys[key] = (size, now)
            self._keys.move_to_end(key)
            return
        if self._names[owner] >= self.max_names_per_owner:
            raise RecordError(f"owner {owner[-8:]} already stores {self.max_names_per_owner} records here")
        cap = self.max_keys if self.protected(owner) else self.max_keys - self.reserved
        if len(self._keys) >= cap or self.bytes + size > self.max_bytes:
            raise RecordError("this node stores no more DHT records (quota reached)")
        self._keys[key] = (size, now)
        self._names[owner] += 1
        self.bytes += size

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
