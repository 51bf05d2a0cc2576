"""Wire-level pieces of the swarm-state sync: limits, decoded envelopes, per-owner logs, messages.

See ``swarmlm.net.state.sync`` for the protocol; this module holds the parts without policy:
``Limits``, ``Entry`` (a decoded state envelope), ``Replica`` (one owner's document and signed
log), and the message codecs (``decode_entry``, ``parse_vector``, ``batch``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack

from swarmlm.crypto.envelope import Envelope
from swarmlm.net.state.doc import OwnerDoc
from swarmlm.net.state.schema import InvalidUpdate

PROTOCOL_ID = "/swarmlm/state/1"
DOMAIN = "swarmlm/state/v1"
Out = list[tuple[str, bytes]]


@dataclass
class Limits:
    max_message_bytes: int = 1 << 20
    max_update_bytes: int = 256 << 10
    max_doc_bytes: int = 1 << 20  # snapshot + incrementals kept, per owner
    max_log: int = 128  # envelopes kept per entry document (records documents: their records + 1)
    max_owners: int = 8192  # documents: two per peer (entry, records)
    reserved_owners: int = 1024  # of max_owners, only for protected (established) owners
    new_owner_rate: float = 4.0  # new documents per second one sender group (IP prefix) may introduce
    new_owner_burst: float = 512.0
    max_pending: int = 32  # out-of-order envelopes held per owner
    max_pending_bytes: int = 16 << 20  # out-of-order envelopes held in total
    max_pending_bytes_per_sender: int = 2 << 20
    snapshot_every: int = 32
    ttl: float = 60.0  # heartbeat older than this: offline
    compact_after: float = 24 * 3600.0  # heartbeat older than this: forgotten (protected owners)
    compact_unprotected_after: float = 900.0  # heartbeat older than this: forgotten (everyone else)
    empty_after: float = 120.0  # an owner with no entry (no heartbeat) at all is forgotten after this
    pending_ttl: float = 60.0
    lazy_forward: bool = True  # forward incrementals as ["have"] announcements, pulled with ["want"]
    want_retry_s: float = 2.0  # ask another announcer after this long
    penalty: float = 10.0
    reward: float = 0.1
    ban_score: float = -100.0


@dataclass(frozen=True)
class Entry:
    """A decoded state envelope (signature checked separately)."""

    raw: bytes
    owner: str
    epoch: int
    seq: int
    snap: bool
    update: bytes

    @property
    def key(self) -> tuple[int, int]:
        return (self.epoch, self.seq)


@dataclass
class Replica:
    doc: OwnerDoc
    log: list[Entry] = field(default_factory=list)  # log[0] is a snapshot
    seq: int = 0
    since: float = 0.0  # local time it was installed (compaction of entry-less owners)

    @property
    def epoch(self) -> int:
        return self.doc.epoch

    @property
    def size(self) -> int:
        return sum(len(e.update) for e in self.log)

    def rebuild(self) -> None:
        self.doc.reset()
        for e in self.log:
            self.doc.apply(e.update)


def decode_entry(raw: bytes, limits: Limits) -> tuple[Entry, Envelope]:
    env = Envelope.decode(raw)
    if env.domain != DOMAIN:
        raise InvalidUpdate("signature", "wrong envelope domain")
    p = msgpack.unpackb(env.payload, raw=False, max_bin_len=limits.max_doc_bytes, max_str_len=256,
                        max_map_len=8, max_array_len=0)
    if (not isinstance(p, dict) or not isinstance(p.get("o"), str) or not isinstance(p.get("u"), bytes)
            or type(p.get("e")) is not int or type(p.get("s")) is not int or p.get("k") not in (0, 1)
            or not 0 <= p["e"] < 2**63 or not 0 <= p["s"] < 2**63):
        raise InvalidUpdate("decode", "state payload has the wrong shape")
    return Entry(raw, p["o"], p["e"], p["s"], bool(p["k"]), p["u"]), env


def parse_vector(raw: Any) -> dict[str, tuple[int, ...] | None]:
    """``{owner: [epoch, seq]}`` (a ``want`` may add a third item: only up to that seq)."""
    if not isinstance(raw, dict):
        raise ValueError("vector must be a map")
    out: dict[str, tuple[int, ...] | None] = {}
    for o, k in raw.items():
        if not isinstance(o, str):
            raise ValueError("vector keys are peer ids")
        if k is None:
            out[o] = None
        elif isinstance(k, list) and len(k) in (2, 3) and all(type(x) is int for x in k):
            out[o] = tuple(k)
        else:
            raise ValueError("vector values are [epoch, seq]")
    return out


def batch(peer: str, raws: list[bytes], max_message_bytes: int) -> Out:
    out: Out = []
    cur: list[bytes] = []
    size, cap = 16, max_message_bytes - 64
    for raw in raws:
        if cur and size + len(raw) + 8 > cap:
            out.append((peer, msgpack.packb(["env", cur], use_bin_type=True)))
            cur, size = [], 16
        cur.append(raw)
        size += len(raw) + 8
    if cur:
        out.append((peer, msgpack.packb(["env", cur], use_bin_type=True)))
    return out
