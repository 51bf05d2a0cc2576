"""One owner's swarm-state document: a pycrdt (Yjs) document, its write methods and checked updates.

Each peer ("owner") has two Yjs documents, written only by that owner (see ``swarmlm.net.state.rights``):

* its entry document (key: the peer id), root maps ``peer`` -- addresses, agent, hosted layer
  ranges, throughput, free KV tokens, load, heartbeat time, reachability (``PeerEntry``) -- and
  ``models`` -- model id -> config hash, layer count, dtype, EE variant ids (``ModelInfo``);
* its records document (key: ``records_key(peer id)`` = peer id + "#r"), root map ``records``:
  an append-only map content-hash -> signed record envelope (``Record``). Kept apart because it
  only grows (its log needs no snapshots) while the entry is overwritten at every heartbeat.

``OwnerDoc.apply`` checks a received update (authorship, which maps it touches, records only
added, the schema of ``swarmlm.net.state.schema``) and keeps the typed views current; the owner's
write methods each return the Yjs update they produced. Callers never touch Y types. Nothing here
signs sync messages or does I/O; see ``swarmlm.net.state.sync`` for the protocol.
"""

from __future__ import annotations

import json
from typing import Any

from pycrdt import Doc, Map

from swarmlm.net.state.rights import check_author, client_id_for, doc_owner
from swarmlm.net.state.schema import (MAX_MODELS_PER_OWNER, MAX_RECORDS_PER_OWNER, PEER_FIELDS, HostedRange,
                                      InvalidUpdate, ModelInfo, PeerEntry, Record, StateError, parse_model,
                                      parse_peer, parse_record)


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
        check_author(update, self.client_id)
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
                    self.records[key] = parse_record(self.owner, key, change.get("newValue"), now)
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

