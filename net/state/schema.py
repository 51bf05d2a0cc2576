"""Typed views of the swarm-state documents and their validation (the schema), plus signed records.

The dataclasses callers see instead of Y types: ``PeerEntry`` (an owner's ``peer`` map: addresses,
agent, hosted layer ranges ``HostedRange``, throughput, free KV tokens, load, heartbeat,
reachability, RTTs, and the live load of its step scheduler: sessions, queued steps, served and
sustainable tok/s), and ``left``: the time of its signed "leaving" mark), ``ModelInfo`` (one entry of its ``models`` map) and ``Record`` (a signed record
of its records document). ``parse_peer`` / ``parse_model`` / ``parse_record`` check raw values
against the schema and limits and raise ``InvalidUpdate(reason)`` (the counter a rejection is filed
under); ``make_record`` signs a new record. ``StateError`` is for the caller's own bad writes.
Nothing here touches a Yjs document.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import msgpack

from swarmlm.crypto.envelope import Envelope, EnvelopeError
from swarmlm.crypto.identity import Identity
from swarmlm.errors import SwarmError

RECORD_DOMAIN = "swarmlm/record/v1"
REACH_VALUES = ("public", "private", "relayed", "unknown")  # relayed: private, reachable via a relay
PEER_FIELDS = ("addrs", "agent", "hosted", "throughput", "free_kv", "load", "heartbeat", "reach", "rtt",
               "sessions", "queue", "served", "capacity", "left")
MAX_RTT_ENTRIES = 32  # the owner's measured RTT (ms) to its nearest peers, keyed by peer id
MAX_RECORD_BYTES = 16 * 1024
MAX_RECORDS_PER_OWNER = 1024
MAX_MODELS_PER_OWNER = 64
MAX_CLOCK_SKEW_S = 60.0  # a heartbeat or record time further in the future than this is rejected
MAX_HEARTBEAT_SKEW_S = MAX_CLOCK_SKEW_S
MAX_LAYERS = 1024  # no model has more layers: larger layer counts or ranges are refused at the edge


class StateError(SwarmError):
    """A state value that breaks the schema or the write rules (the caller's own write)."""


class InvalidUpdate(Exception):
    """A received update that must be rejected; ``reason`` is the counter it is filed under."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class HostedRange:
    """Layers [start, end) of ``model`` served by a peer."""

    model: str
    start: int
    end: int


@dataclass(frozen=True)
class PeerEntry:
    peer_id: str
    addrs: tuple[str, ...] = ()
    agent: str = ""
    hosted: tuple[HostedRange, ...] = ()
    throughput: float = 0.0  # measured tokens/s
    free_kv: int = 0  # free KV-cache tokens
    load: float = 0.0  # queued requests (or utilisation), owner-defined >= 0
    heartbeat: float = 0.0  # owner's wall-clock time of its last write
    reach: str = "unknown"  # public / relayed / unknown
    rtt: tuple[tuple[str, float], ...] = ()  # (peer id, ms): what the owner measured to its peers
    sessions: int = 0  # inference sessions open on it now
    queue: int = 0  # steps waiting for its step scheduler now
    served: float = 0.0  # token positions it computed per second lately (a decaying rate)
    capacity: float = 0.0  # tokens/s it can sustain with its sessions decoding in batches (its estimate)
    left: float = 0.0  # when the owner announced it stopped (its last write on a clean shutdown); 0: never

    def age(self, now: float) -> float:
        return now - self.heartbeat

    @property
    def has_left(self) -> bool:
        """The owner's own signed word that it stopped: a later heartbeat (a restart) supersedes it.
        Only the owner writes its entry, so nobody can make another peer leave."""
        return self.left > 0 and self.left >= self.heartbeat

    def online(self, now: float, ttl: float) -> bool:
        return self.age(now) <= ttl and not self.has_left


@dataclass(frozen=True)
class ModelInfo:
    model_id: str
    config_hash: str
    layers: int
    dtype: str
    ee_variants: tuple[str, ...] = ()


@dataclass(frozen=True)
class Record:
    """A record signed by its author (consensus round, verification verdict, calibration...)."""

    key: str  # hex SHA-256 of the signed payload
    kind: str
    author: str
    created: float
    body: Any
    envelope: bytes = field(repr=False)


def _str(v: Any, limit: int, what: str) -> str:
    if not isinstance(v, str) or len(v) > limit:
        raise InvalidUpdate("bad_entry", f"{what} must be a string of at most {limit} characters")
    return v


def _num(v: Any, what: str, lo: float = 0.0, hi: float = 1e15) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
        raise InvalidUpdate("bad_entry", f"{what} must be a number in [{lo}, {hi}]")
    return float(v)


def _int(v: Any, what: str, lo: int = 0, hi: int = 2**53) -> int:
    f = _num(v, what, lo, hi)
    if f != int(f):
        raise InvalidUpdate("bad_entry", f"{what} must be an integer")
    return int(f)


def _list(v: Any, limit: int, what: str) -> list:
    if not isinstance(v, list) or len(v) > limit:
        raise InvalidUpdate("bad_entry", f"{what} must be a list of at most {limit} items")
    return v


def parse_peer(owner: str, raw: dict[str, Any], now: float | None = None) -> PeerEntry:
    """Check a raw ``peer`` map and build its dataclass; raises InvalidUpdate('bad_entry')."""
    if len(raw) > 32:
        raise InvalidUpdate("bad_entry", "too many fields in peer entry")
    hosted = []
    for h in _list(raw.get("hosted", []), 16, "hosted"):
        if not isinstance(h, dict):
            raise InvalidUpdate("bad_entry", "hosted items are maps")
        start, end = _int(h.get("start"), "hosted.start", 0, MAX_LAYERS), _int(h.get("end"), "hosted.end", 1, MAX_LAYERS)
        if end <= start:
            raise InvalidUpdate("bad_entry", "hosted range is empty")
        hosted.append(HostedRange(_str(h.get("model"), 128, "hosted.model"), start, end))
    heartbeat = _num(raw.get("heartbeat", 0.0), "heartbeat", 0.0, 1e12)
    if now is not None and heartbeat > now + MAX_CLOCK_SKEW_S:
        raise InvalidUpdate("bad_entry", f"heartbeat is more than {MAX_CLOCK_SKEW_S:.0f} s in the future")
    left = _num(raw.get("left", 0.0), "left", 0.0, 1e12)
    if now is not None and left > now + MAX_CLOCK_SKEW_S:
        raise InvalidUpdate("bad_entry", "leaving time is in the future")
    reach = _str(raw.get("reach", "unknown"), 16, "reach")
    if reach not in REACH_VALUES:
        raise InvalidUpdate("bad_entry", f"reach must be one of {REACH_VALUES}")
    rtt_raw = raw.get("rtt", {})
    if not isinstance(rtt_raw, dict) or len(rtt_raw) > MAX_RTT_ENTRIES:
        raise InvalidUpdate("bad_entry", f"rtt is a map of at most {MAX_RTT_ENTRIES} peers")
    rtt = tuple(sorted((_str(k, 64, "rtt peer"), _num(v, "rtt ms", 0.0, 1e6)) for k, v in rtt_raw.items()))
    return PeerEntry(
        peer_id=owner,
        rtt=rtt,
        addrs=tuple(_str(a, 256, "addrs item") for a in _list(raw.get("addrs", []), 16, "addrs")),
        agent=_str(raw.get("agent", ""), 64, "agent"),
        hosted=tuple(hosted),
        throughput=_num(raw.get("throughput", 0.0), "throughput"),
        free_kv=_int(raw.get("free_kv", 0), "free_kv"),
        load=_num(raw.get("load", 0.0), "load"),
        heartbeat=heartbeat,
        reach=reach,
        sessions=_int(raw.get("sessions", 0), "sessions", 0, 1_000_000),
        queue=_int(raw.get("queue", 0), "queue", 0, 1_000_000),
        served=_num(raw.get("served", 0.0), "served", 0.0, 1e9),
        capacity=_num(raw.get("capacity", 0.0), "capacity", 0.0, 1e9),
        left=left,
    )


def parse_model(model_id: str, raw: Any) -> ModelInfo:
    _str(model_id, 128, "model id")
    if not isinstance(raw, dict):
        raise InvalidUpdate("bad_entry", "a model entry is a map")
    return ModelInfo(
        model_id=model_id,
        config_hash=_str(raw.get("config_hash"), 128, "config_hash"),
        layers=_int(raw.get("layers"), "layers", 1, MAX_LAYERS),
        dtype=_str(raw.get("dtype"), 16, "dtype"),
        ee_variants=tuple(_str(v, 128, "ee variant") for v in _list(raw.get("ee_variants", []), 16, "ee_variants")),
    )


def parse_record(owner: str, key: str, value: Any, now: float | None = None) -> Record:
    """Check one record value: owner-signed envelope, keyed by the hash of its payload, and (given
    ``now``) not dated more than ``MAX_CLOCK_SKEW_S`` in the future."""
    if not isinstance(value, (bytes, bytearray)) or len(value) > MAX_RECORD_BYTES:
        raise InvalidUpdate("bad_record", f"record values are envelopes of at most {MAX_RECORD_BYTES} bytes")
    try:
        env = Envelope.decode(bytes(value))
        payload = env.open(RECORD_DOMAIN)
    except EnvelopeError as exc:
        raise InvalidUpdate("bad_record", str(exc)) from None
    if env.author != owner:
        raise InvalidUpdate("bad_record", "record not signed by the owner of the document")
    if hashlib.sha256(payload).hexdigest() != key:
        raise InvalidUpdate("bad_record", "record key is not the hash of its content")
    try:
        obj = msgpack.unpackb(payload, raw=False, max_bin_len=MAX_RECORD_BYTES, max_str_len=MAX_RECORD_BYTES)
    except Exception:
        raise InvalidUpdate("bad_record", "record payload does not decode") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("kind"), str) or len(obj["kind"]) > 32:
        raise InvalidUpdate("bad_record", "record payload needs a kind")
    try:
        created = _num(obj.get("t", 0.0), "record time", 0.0, 1e12)
    except InvalidUpdate as exc:
        raise InvalidUpdate("bad_record", str(exc)) from None
    if now is not None and created > now + MAX_CLOCK_SKEW_S:
        raise InvalidUpdate("bad_record", f"record time is more than {MAX_CLOCK_SKEW_S:.0f} s in the future")
    return Record(key, obj["kind"], owner, created, obj.get("body"), bytes(value))


def make_record(identity: Identity, kind: str, body: Any, now: float) -> Record:
    """Sign a new record (the hash of its payload is its key)."""
    payload = msgpack.packb({"kind": kind, "t": float(now), "body": body}, use_bin_type=True)
    env = Envelope.seal(identity, RECORD_DOMAIN, payload).encode()
    if len(env) > MAX_RECORD_BYTES:
        raise StateError(f"record of {len(env)} bytes exceeds the {MAX_RECORD_BYTES} byte limit")
    return parse_record(identity.peer_id, hashlib.sha256(payload).hexdigest(), env)

