"""Our own documents across restarts: epochs, carrying content over, restoring from the file.

A mixin of ``StateSync``: ``_start_epoch`` creates our entry and records documents in a new epoch
(fresh Yjs client ids) with content carried over; ``_adopt_own`` handles envelopes of ours from
another epoch (taking back records a lost file had, moving above an epoch the swarm saw);
``_restore`` replays a saved file through the normal validation.
"""

from __future__ import annotations

from typing import Any

import msgpack

from swarmlm.crypto.envelope import EnvelopeError
from swarmlm.net.state.doc import OwnerDoc
from swarmlm.net.state.schema import MAX_RECORDS_PER_OWNER, InvalidUpdate
from swarmlm.net.state.wire import Entry, Replica, decode_entry


class OwnEpochs:
    """Mixin: needs ``StateSync``'s attributes (replicas, state, limits, own, own_records, ...)."""

    replicas: dict[str, Replica]
    state: Any
    limits: Any
    peer_id: str
    _rkey: str
    _ghost: Replica | None
    _wants: dict[str, dict[str, Any]]
    _own_merge: list[bytes]
    _own_restarted: bool

    def _start_epoch(self, epoch: int, entry: OwnerDoc | None, records: OwnerDoc | None) -> None:
        """Both our documents in a new epoch (fresh Yjs client ids), content carried over."""
        doc, rdoc = OwnerDoc(self.peer_id, epoch, local=True), OwnerDoc(self._rkey, epoch, local=True)
        if entry is not None:
            raw = entry.to_py()["peer"]
            if raw:
                doc.write_peer(**raw)
            for m in entry.models.values():
                doc.write_model(m)
        if records is not None:
            for r in sorted(records.records.values(), key=lambda r: (r.created, r.key)):
                rdoc.add_record(r)
        for d in (doc, rdoc):
            self.replicas[d.key] = Replica(d)
            self.replicas[d.key].log = [self._seal(d.key, 0, True, d.full_update())]
            self.state.docs[d.key] = d
        self._changed()

    def _new_epoch(self, above: int, now: float) -> None:
        self._start_epoch(max(above + 1, self.own.epoch + 1, int(now * 1000)), self.own.doc, self.own_records.doc)
        self._own_restarted = True

    def _adopt_own(self, ent: Entry, sender: str | None, now: float) -> None:
        """An envelope of ours from another epoch (we restarted without, or with older, state).

        Rebuild that epoch's records document on the side (a "ghost"), take back the records it
        has that we lack, and when the swarm holds a newer epoch of ours, start one above it.
        """
        self.stats["own_imported"] += 1
        mine = self.replicas[ent.owner]
        if ent.owner == self.peer_id:  # our entry: nothing to take back, only the epoch matters
            if ent.key > (mine.epoch, mine.seq):
                self._new_epoch(ent.epoch, now)
            return
        g = self._ghost
        try:
            if g is None or ent.epoch > g.epoch:
                if not ent.snap:
                    if ent.epoch >= mine.epoch:  # same epoch number reused: just move above it
                        self._new_epoch(ent.epoch, now)
                    elif sender is not None:
                        self._wants.setdefault(sender, {})[ent.owner] = None
                    return
                g = self._ghost = Replica(OwnerDoc(ent.owner, ent.epoch), [ent], ent.seq)
                g.doc.apply(ent.update)
            elif ent.epoch == g.epoch and (ent.snap and ent.seq > g.log[0].seq or ent.seq == g.seq + 1):
                g.doc.apply(ent.update)
                g.seq = max(g.seq, ent.seq)
            elif ent.epoch == g.epoch and ent.seq > g.seq + 1 and sender is not None:
                self._wants.setdefault(sender, {})[ent.owner] = None
                return
            else:
                return
        except InvalidUpdate:
            self._ghost = None
            return
        lost = [r for r in g.doc.records.values() if r.key not in mine.doc.records]
        if ent.key >= (mine.epoch, mine.seq):
            for rec in lost:
                mine.doc.add_record(rec)
            self.stats["own_newer"] += 1
            self._new_epoch(ent.epoch, now)
        elif lost:
            self._own_merge += [mine.doc.add_record(rec) for rec in lost]

    def _restore(self, data: bytes, now: float, epoch: int) -> int:
        obj = msgpack.unpackb(data, raw=False, max_bin_len=self.limits.max_doc_bytes,
                              max_map_len=4 * self.limits.max_owners + 16,
                              max_array_len=max(self.limits.max_log, MAX_RECORDS_PER_OWNER) + 16)
        if not isinstance(obj, dict) or obj.get("v") != 1 or not isinstance(obj.get("owners"), dict):
            raise ValueError("not a swarm-state file")
        for o, k in (obj.get("tombstones") or {}).items():
            self.tombstones[o] = (int(k[0]), int(k[1]))
        own_logs = [obj["owners"].pop(k, None) for k in (self.peer_id, self._rkey)]
        for o, raws in obj["owners"].items():
            for raw in raws:
                self._ingest(None, raw, now)
        self._clear_pending()
        olds = []
        for key, log in zip((self.peer_id, self._rkey), own_logs):
            old = None
            try:
                for raw in log or []:
                    ent, env = decode_entry(raw, self.limits)
                    old = old or OwnerDoc(key, ent.epoch)
                    if env.verify() and env.author == self.peer_id and ent.owner == key and ent.epoch == old.epoch:
                        old.apply(ent.update)
            except (InvalidUpdate, EnvelopeError):
                self.rejected["restore_own"] += 1
            if old is not None:
                epoch = max(epoch, old.epoch + 1)
            olds.append(old)
        self._start_epoch(epoch, olds[0], olds[1])
        self.stats["restored_owners"] = len(self.replicas)
        return epoch
