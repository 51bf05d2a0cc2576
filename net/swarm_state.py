"""The swarm state document: pycrdt sub-documents per peer, typed views, and write-rights checks.

Each peer ("owner") has two Yjs documents, written only by that owner:

* its entry document (key: the peer id), root maps ``peer`` -- addresses, agent, hosted layer
  ranges, throughput, free KV tokens, load, heartbeat time, reachability (``PeerEntry``) -- and
  ``models`` -- model id -> config hash, layer count, dtype, EE variant ids (``ModelInfo``);
* its records document (key: ``records_key(peer id)`` = peer id + "#r"), root map ``records``:
  an append-only map content-hash -> signed record envelope (``Record``). Kept apart because it
  only grows (its log needs no snapshots) while the entry is overwritten at every heartbeat.

The Yjs client id of a document is derived from its key and the owner's epoch (``client_id_for``),
so authorship is checkable: an update that carries structs of any other client id is rejected. Callers never touch Y types: ``SwarmState`` gives dataclasses, and
``OwnerDoc`` offers the owner's write methods (each returns the Yjs update it produced).
Liveness is derived by readers: an entry whose heartbeat is older than the TTL is offline.
Nothing here signs sync messages or does I/O; see ``swarmlm.net.state_sync`` for the protocol.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

import msgpack
import pycrdt
from pycrdt import Doc, Map

from swarmlm.crypto.envelope import Envelope, EnvelopeError
from swarmlm.crypto.identity import Identity
from swarmlm.errors import SwarmError

RECORD_DOMAIN = "swarmlm/record/v1"
REACH_VALUES = ("public", "private", "relayed", "unknown")  # relayed: private, reachable via a relay
PEER_FIELDS = ("addrs", "agent", "hosted", "throughput", "free_kv", "load", "heartbeat", "reach", "rtt")
MAX_RTT_ENTRIES = 32  # the owner's measured RTT (ms) to its nearest peers, keyed by peer id
MAX_RECORD_BYTES = 16 * 1024
MAX_RECORDS_PER_OWNER = 1024
MAX_MODELS_PER_OWNER = 64
MAX_HEARTBEAT_SKEW_S = 300.0  # a heartbeat further in the future than this is rejected
RECORDS_SUFFIX = "#r"  # never in a base58 peer id


def records_key(peer_id: str) -> str:
    """Key of a peer's records document."""
    return peer_id + RECORDS_SUFFIX


def doc_owner(key: str) -> str:
    """The peer id that owns the document ``key`` (entry or records document)."""
    return key[: -len(RECORDS_SUFFIX)] if key.endswith(RECORDS_SUFFIX) else key


class StateError(SwarmError):
    """A state value that breaks the schema or the write rules (the caller's own write)."""


class InvalidUpdate(Exception):
    """A received update that must be rejected; ``reason`` is the counter it is filed under."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def client_id_for(key: str, epoch: int) -> int:
    """The Yjs client id of document ``key`` in ``epoch``: 32 bits of SHA-256, deterministic."""
    return int.from_bytes(hashlib.sha256(f"swarmlm-yclient/{key}/{epoch}".encode()).digest()[:4], "big")


def decode_state_vector(sv: bytes) -> dict[int, int]:
    """Decode a Yjs (v1) state vector: varuint count, then (client, clock) varuint pairs."""
    pos = 0

    def varuint() -> int:
        nonlocal pos
        num, shift = 0, 0
        while True:
            if pos >= len(sv) or shift > 63:
                raise ValueError("truncated state vector")
            b = sv[pos]
            pos += 1
            num |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return num

    out = {}
    for _ in range(varuint()):
        client = varuint()
        out[client] = varuint()
    if pos != len(sv):
        raise ValueError("trailing bytes after state vector")
    return out


# ---------------------------------------------------------------- typed views

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

    def age(self, now: float) -> float:
        return now - self.heartbeat

    def online(self, now: float, ttl: float) -> bool:
        return self.age(now) <= ttl


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
        start, end = _int(h.get("start"), "hosted.start", 0, 100_000), _int(h.get("end"), "hosted.end", 1, 100_000)
        if end <= start:
            raise InvalidUpdate("bad_entry", "hosted range is empty")
        hosted.append(HostedRange(_str(h.get("model"), 128, "hosted.model"), start, end))
    heartbeat = _num(raw.get("heartbeat", 0.0), "heartbeat", 0.0, 1e12)
    if now is not None and heartbeat > now + MAX_HEARTBEAT_SKEW_S:
        raise InvalidUpdate("bad_entry", "heartbeat is in the future")
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
    )


def parse_model(model_id: str, raw: Any) -> ModelInfo:
    _str(model_id, 128, "model id")
    if not isinstance(raw, dict):
        raise InvalidUpdate("bad_entry", "a model entry is a map")
    return ModelInfo(
        model_id=model_id,
        config_hash=_str(raw.get("config_hash"), 128, "config_hash"),
        layers=_int(raw.get("layers"), "layers", 1, 100_000),
        dtype=_str(raw.get("dtype"), 16, "dtype"),
        ee_variants=tuple(_str(v, 128, "ee variant") for v in _list(raw.get("ee_variants", []), 16, "ee_variants")),
    )


def parse_record(owner: str, key: str, value: Any) -> Record:
    """Check one record value: owner-signed envelope, keyed by the hash of its payload."""
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
    created = _num(obj.get("t", 0.0), "record time", 0.0, 1e12)
    return Record(key, obj["kind"], owner, created, obj.get("body"), bytes(value))


def make_record(identity: Identity, kind: str, body: Any, now: float) -> Record:
    """Sign a new record (the hash of its payload is its key)."""
    payload = msgpack.packb({"kind": kind, "t": float(now), "body": body}, use_bin_type=True)
    env = Envelope.seal(identity, RECORD_DOMAIN, payload).encode()
    if len(env) > MAX_RECORD_BYTES:
        raise StateError(f"record of {len(env)} bytes exceeds the {MAX_RECORD_BYTES} byte limit")
    return parse_record(identity.peer_id, hashlib.sha256(payload).hexdigest(), env)


# ---------------------------------------------------------------- one owner's document

class OwnerDoc:
    """One owner's entry or records document in one epoch, plus the verified views derived from it.

    ``key`` is the owner's peer id (entry document) or ``records_key(peer id)``. ``local=True`` on
    the owner's own node: the document writes with the owner's client id. Replicas use another
    client id and never write.
    """

    def __init__(self, key: str, epoch: int, *, local: bool = False) -> None:
        self.key, self.owner, self.epoch, self.local = key, doc_owner(key), epoch, local
        self.is_records = key != self.owner
        self.client_id = client_id_for(key, epoch)
        self.reset()

    def reset(self) -> None:
        self.doc: Doc = Doc(client_id=self.client_id if self.local else self.client_id ^ 1)
        self._peer = self.doc.get("peer", type=Map)
        self._models = self.doc.get("models", type=Map)
        self._records = self.doc.get("records", type=Map)
        self.records: dict[str, Record] = {}
        self.entry: PeerEntry | None = None
        self.models: dict[str, ModelInfo] = {}
        self._raw_peer: dict[str, Any] = {}
        self._changes: list[dict] = []  # record-map changes of the transaction being applied
        self._dirty: set[str] = set()  # "peer" / "models" changed since the last refresh
        self._records.observe(lambda ev: self._changes.append(ev.keys))
        self._peer.observe(lambda ev: self._dirty.add("peer"))
        self._models.observe(lambda ev: self._dirty.add("models"))

    # -- receiving
    def apply(self, update: bytes, now: float | None = None) -> None:
        """Apply an owner-signed update, checking the write rules; raises InvalidUpdate.

        On failure the document may be partly changed: the caller rebuilds it from its log.
        """
        try:
            clients = decode_state_vector(pycrdt.get_state(update))
        except Exception:
            raise InvalidUpdate("decode", "Yjs update does not decode") from None
        if any(c != self.client_id for c in clients):
            raise InvalidUpdate("foreign_client", "update carries structs of another client id")
        self._changes.clear()
        try:
            self.doc.apply_update(update)
        except Exception:
            raise InvalidUpdate("decode", "Yjs update does not apply") from None
        changes, self._changes = self._changes, []
        if changes and not self.is_records:
            raise InvalidUpdate("bad_entry", "records belong in the records document")
        if self._dirty and self.is_records:
            raise InvalidUpdate("bad_record", "the records document holds records only")
        for keys in changes:
            for key, change in keys.items():
                if change.get("action") != "add":
                    raise InvalidUpdate("record_removed", f"record {key[:16]} deleted or changed")
                if key not in self.records:
                    self.records[key] = parse_record(self.owner, key, change.get("newValue"))
        if len(self.records) > MAX_RECORDS_PER_OWNER:
            raise InvalidUpdate("too_large", "too many records")
        self._refresh(now)

    def _refresh(self, now: float | None) -> None:
        dirty, self._dirty = self._dirty, set()
        if "peer" in dirty:
            self._raw_peer = _read_map(self._peer)
            self.entry = parse_peer(self.owner, self._raw_peer, now) if self._raw_peer else None
        if "models" in dirty:
            raw_models = _read_map(self._models)
            if len(raw_models) > MAX_MODELS_PER_OWNER:
                raise InvalidUpdate("bad_entry", "too many models")
            self.models = {k: parse_model(k, v) for k, v in raw_models.items()}

    # -- writing (owner only); each returns the Yjs update produced (b"" when nothing changed)
    def _write(self, fn) -> bytes:
        if not self.local:
            raise StateError("only the owner writes its document")
        updates: list[bytes] = []
        sub = self.doc.observe(lambda ev: updates.append(ev.update))
        try:
            with self.doc.transaction():
                fn()
        finally:
            self.doc.unobserve(sub)
        self._changes.clear()
        self._refresh(None)
        return updates[0] if updates else b""

    def write_peer(self, **fields: Any) -> bytes:
        if self.is_records:
            raise StateError("the entry is written in the entry document")
        unknown = set(fields) - set(PEER_FIELDS)
        if unknown:
            raise StateError(f"unknown peer entry fields: {sorted(unknown)}")
        norm = {k: _to_raw(v) for k, v in fields.items()}
        current = self._raw_peer
        try:
            parse_peer(self.owner, {**current, **norm})
        except InvalidUpdate as exc:
            raise StateError(f"bad peer entry: {exc}") from None

        def fn() -> None:
            for k, v in norm.items():
                if current.get(k) != v:
                    self._peer[k] = v

        return self._write(fn)

    def write_model(self, info: ModelInfo) -> bytes:
        if self.is_records:
            raise StateError("models are written in the entry document")
        raw = {"config_hash": info.config_hash, "layers": info.layers, "dtype": info.dtype,
               "ee_variants": list(info.ee_variants)}
        try:
            parse_model(info.model_id, raw)
        except InvalidUpdate as exc:
            raise StateError(f"bad model entry: {exc}") from None
        if info.model_id not in self.models and len(self.models) >= MAX_MODELS_PER_OWNER:
            raise StateError("too many models in this peer's entry")

        def fn() -> None:
            if (self._models.to_py() or {}).get(info.model_id) != _to_raw(raw):
                self._models[info.model_id] = raw

        return self._write(fn)

    def add_record(self, record: Record) -> bytes:
        if record.author != self.owner or not self.is_records:
            raise StateError("a peer only adds records it signed, to its records document")
        if record.key in self.records:
            return b""
        if len(self.records) >= MAX_RECORDS_PER_OWNER:
            raise StateError(f"record limit ({MAX_RECORDS_PER_OWNER}) reached for this epoch")
        self.records[record.key] = record

        def fn() -> None:
            self._records[record.key] = record.envelope

        return self._write(fn)

    def full_update(self) -> bytes:
        return self.doc.get_update()

    def to_py(self) -> dict[str, Any]:
        return {"peer": dict(self._raw_peer), "models": _read_map(self._models),
                "records": sorted(self.records)}


def _read_map(m: Map) -> dict[str, Any]:
    """A map of plain values as Python; the Rust JSON encoder is ~3x faster than ``Map.to_py``."""
    try:
        with m.doc.transaction() as txn:
            return json.loads(m._integrated.to_json(txn._txn)) or {}
    except (AttributeError, TypeError):  # pycrdt internals moved: the public (slower) way
        return m.to_py() or {}
    except ValueError:
        raise InvalidUpdate("bad_entry", "entry does not read as plain values") from None


def _to_raw(v: Any) -> Any:
    """Dataclasses/tuples -> the plain values stored in the document (ints become floats there)."""
    if isinstance(v, HostedRange):
        return {"model": v.model, "start": float(v.start), "end": float(v.end)}
    if isinstance(v, (list, tuple)):
        return [_to_raw(x) for x in v]
    if isinstance(v, dict):
        return {k: _to_raw(x) for k, x in v.items()}
    if isinstance(v, int) and not isinstance(v, bool):
        return float(v)
    return v


# ---------------------------------------------------------------- the whole swarm, read-only

class SwarmState:
    """Read-only typed views over all owners' documents held by one node."""

    def __init__(self, ttl: float = 60.0) -> None:
        self.ttl = ttl
        self.docs: dict[str, OwnerDoc] = {}

    def peer(self, peer_id: str) -> PeerEntry | None:
        d = self.docs.get(peer_id)
        return d.entry if d else None

    def peers(self, now: float, include_offline: bool = False) -> list[PeerEntry]:
        """Entries sorted by peer id; offline ones (heartbeat older than the TTL) only on request."""
        out = [d.entry for _, d in sorted(self.docs.items()) if d.entry is not None and not d.is_records]
        return out if include_offline else [e for e in out if e.online(now, self.ttl)]

    def is_online(self, peer_id: str, now: float) -> bool:
        e = self.peer(peer_id)
        return e is not None and e.online(now, self.ttl)

    def hosts_of(self, model_id: str, now: float) -> list[tuple[PeerEntry, HostedRange]]:
        return [(e, h) for e in self.peers(now) for h in e.hosted if h.model == model_id]

    def models(self, now: float | None = None) -> dict[str, ModelInfo]:
        """The model registry: per model id, the entry announced by most (online) peers.

        Ties go to the smallest config hash, so every reader picks the same entry.
        """
        votes: dict[str, dict[ModelInfo, int]] = {}
        for owner, d in self.docs.items():
            if d.is_records or now is not None and not self.is_online(owner, now):
                continue
            for mid, info in d.models.items():
                votes.setdefault(mid, {}).setdefault(info, 0)
                votes[mid][info] += 1
        return {mid: min(v, key=lambda i: (-v[i], i.config_hash, i.layers, i.dtype))
                for mid, v in sorted(votes.items())}

    def records(self, kind: str | None = None, author: str | None = None) -> list[Record]:
        """Verified records, oldest first (ties by key), optionally of one kind / author."""
        out = [r for d in self.docs.values() if d.is_records and (author is None or d.owner == author)
               for r in d.records.values() if kind is None or r.kind == kind]
        return sorted(out, key=lambda r: (r.created, r.key))

    def record(self, key: str) -> Record | None:
        for d in self.docs.values():
            if key in d.records:
                return d.records[key]
        return None

    def snapshot(self) -> dict[str, Any]:
        """Plain-value dump of every owner's document (for equality checks and debugging)."""
        return {o: {"epoch": d.epoch, **d.to_py()} for o, d in sorted(self.docs.items())}

    def status_rows(self, now: float, include_offline: bool = True) -> list[dict[str, Any]]:
        """Rows for `swarmlm status`: peer, reachability, what it hosts, heartbeat age, online."""
        return [{"peer_id": e.peer_id, "agent": e.agent, "reach": e.reach, "addrs": list(e.addrs),
                 "hosted": [f"{h.model}[{h.start}:{h.end}]" for h in e.hosted],
                 "throughput": e.throughput, "free_kv": e.free_kv, "load": e.load,
                 "heartbeat_age_s": round(e.age(now), 1), "online": e.online(now, self.ttl)}
                for e in self.peers(now, include_offline=include_offline)]
