"""Receiving state envelopes: the validation order, applying with rollback, out-of-order buffering, scores.

A mixin of ``StateSync`` (``swarmlm.net.state.sync``). ``_ingest`` takes one envelope a neighbour
handed over and runs the checks of docs/STATE.md, cheapest first: decode and size, stale (already
known, before any signature check; an equivocating twin is counted), signature, signer ==
``doc_owner`` (not_owner). Envelopes of our own documents go to ``OwnEpochs._adopt_own``; the rest
to ``_offer``, which installs a new epoch from its snapshot or appends the next incremental,
applying the update to the owner's ``OwnerDoc`` (which checks authorship and schema) and rebuilding
it from the verified log when that fails. Envelopes that arrive ahead of a gap wait in ``pending``
(``_defer`` / ``_drain``) while the sender is asked for the gap, bounded in count per owner and
in bytes per sender and in total. A document of an owner the node does not hold yet must pass
``Admission`` (``net/state/admission.py``) before its signature is even checked. Every rejection
is counted in ``rejected[reason]`` and lowers the sender's score (``_reject``) unless the bound
reached is not the sender's fault; accepted ones raise it.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from typing import Any

from swarmlm.crypto.envelope import EnvelopeError
from swarmlm.net.state.admission import Admission
from swarmlm.net.state.doc import OwnerDoc
from swarmlm.net.state.rights import doc_owner, records_key
from swarmlm.net.state.schema import MAX_RECORDS_PER_OWNER, InvalidUpdate
from swarmlm.net.state.swarm import SwarmState
from swarmlm.net.state.wire import Entry, Limits, Replica, decode_entry

NO_PENALTY = {"too_many_owners", "log_full", "admission", "pending_full"}  # bounds reached: not the sender's fault
Pending = dict[str, dict[tuple, tuple[Entry, float, str | None]]]  # owner -> (epoch, seq, snap) -> (entry, when, sender)


class Ingest:
    """Mixin: needs ``StateSync``'s attributes (below) and its ``_changed`` / ``_adopt_own``."""

    peer_id: str
    limits: Limits
    state: SwarmState
    replicas: dict[str, Replica]
    pending: Pending
    admission: Admission
    pending_bytes: int
    pending_by_sender: Counter[str]
    tombstones: OrderedDict[str, tuple[int, int]]
    rejected: Counter[str]
    author_faults: Counter[str]
    scores: dict[str, float]
    stats: Counter[str]
    _rkey: str
    _fresh: bool
    _ghost: Replica | None
    _wants: dict[str, dict[str, Any]]

    def _knows(self, owner: str, epoch: int, seq: int, snap: bool) -> bool:
        tomb = self.tombstones.get(owner)
        if tomb is not None and (epoch, seq) <= tomb:
            return True
        if owner in self.pending and (epoch, seq, snap) in self.pending[owner]:
            return True
        rep = self.replicas.get(owner)
        if rep is None:
            return False
        if epoch != rep.epoch:
            return epoch < rep.epoch
        return seq <= (rep.log[0].seq if snap else rep.seq)

    def _ingest(self, sender: str | None, raw: bytes, now: float) -> list[Entry]:
        try:
            ent, env = decode_entry(raw, self.limits)
        except EnvelopeError:
            return self._reject(sender, "decode")
        except InvalidUpdate as exc:
            return self._reject(sender, exc.reason)
        except Exception:
            return self._reject(sender, "decode")
        if self._is_stale(ent):
            self.stats["duplicates"] += 1
            return []
        if ent.owner not in self.replicas and ent.owner not in self.pending and doc_owner(ent.owner) != self.peer_id:
            reason = self.admission.check(sender, ent.owner, self.replicas, len(self.replicas), now)
            if reason == "too_many_owners" and self.admission.protected(doc_owner(ent.owner)) and self._evict(now):
                reason = None
            if reason is not None:
                return self._reject(sender, reason)
        if not env.verify():
            return self._reject(sender, "signature")
        if env.author != doc_owner(ent.owner):
            return self._reject(sender, "not_owner")  # signed by A, writes B's document
        if ent.owner in (self.peer_id, self._rkey):
            self._adopt_own(ent, sender, now)
            return []
        if len(ent.update) > self.limits.max_update_bytes and not ent.snap:
            return self._reject(sender, "too_large")
        return self._offer(sender, ent, now)

    def _is_stale(self, ent: Entry) -> bool:
        rep = self.replicas.get(ent.owner)
        mine = ent.owner in (self.peer_id, self._rkey)
        if not mine and not self._knows(ent.owner, ent.epoch, ent.seq, ent.snap):
            return False
        if rep is None or ent.owner in self.pending and (ent.epoch, ent.seq, ent.snap) in self.pending[ent.owner]:
            return True
        if mine:  # echoes of ours; other epochs only matter right after a start
            g = self._ghost if ent.owner == self._rkey else None
            if ent.key <= (rep.epoch, rep.seq) and not (self._fresh and ent.epoch < rep.epoch):
                return True
            return g is not None and (ent.epoch < g.epoch or ent.epoch == g.epoch and ent.seq <= g.seq
                                      and not (ent.snap and ent.seq > g.log[0].seq))
        if ent.epoch == rep.epoch and not ent.snap:  # known: look for a different twin (equivocation)
            twin = next((e for e in rep.log if e.seq == ent.seq and not e.snap), None)
            if twin is not None and twin.raw != ent.raw:
                self.author_faults[doc_owner(ent.owner)] += 1
                self.rejected["equivocation"] += 1
        return True

    def _offer(self, sender: str | None, ent: Entry, now: float) -> list[Entry]:
        rep = self.replicas.get(ent.owner)
        fresh = rep is None or ent.epoch > rep.epoch
        if fresh and not ent.snap or (not fresh and not ent.snap and ent.seq > rep.seq + 1):
            self._defer(sender, ent, now)
            return []
        if fresh:
            if rep is None and len(self.replicas) >= self.limits.max_owners:
                return self._reject(sender, "too_many_owners")
            new = Replica(OwnerDoc(ent.owner, ent.epoch), since=now)
            try:
                self._check_size(ent, 0)
                new.doc.apply(ent.update, now)
            except InvalidUpdate as exc:
                return self._reject(sender, exc.reason, ent.owner)
            new.log, new.seq = [ent], ent.seq
            self.replicas[ent.owner] = new
            self.tombstones.pop(ent.owner, None)
            self.state.docs[ent.owner] = new.doc
        else:
            cap = MAX_RECORDS_PER_OWNER + 1 if rep.doc.is_records else self.limits.max_log
            if not ent.snap and len(rep.log) >= cap:
                return self._reject(sender, "log_full", ent.owner)
            try:
                self._check_size(ent, 0 if ent.snap else rep.size)
                rep.doc.apply(ent.update, now)
            except InvalidUpdate as exc:
                rep.rebuild()
                return self._reject(sender, exc.reason, ent.owner)
            if ent.snap:
                rep.log = [ent] + [e for e in rep.log[1:] if e.seq > ent.seq]
                rep.seq = max(rep.seq, ent.seq)
            else:
                rep.log.append(ent)
                rep.seq = ent.seq
        if sender is not None:
            self.scores[sender] = min(100.0, self.scores.get(sender, 0.0) + self.limits.reward)
        self.stats["accepted"] += 1
        self._changed()
        return [ent] + self._drain(ent.owner, now)

    def _check_size(self, ent: Entry, base: int) -> None:
        if base + len(ent.update) > self.limits.max_doc_bytes:
            raise InvalidUpdate("too_large", "owner document exceeds the size limit")

    def _defer(self, sender: str | None, ent: Entry, now: float) -> None:
        lim, size = self.limits, len(ent.raw)
        slot = self.pending.setdefault(ent.owner, {})
        if (len(slot) >= lim.max_pending or len(self.pending) > lim.max_owners
                or self.pending_bytes + size > lim.max_pending_bytes):
            self.rejected["pending_full"] += 1
        elif sender is not None and self.pending_by_sender[sender] + size > lim.max_pending_bytes_per_sender:
            self._reject(sender, "pending_flood")  # one neighbour handing over a mass of out-of-order updates
        else:
            slot[(ent.epoch, ent.seq, ent.snap)] = (ent, now, sender)
            self.pending_bytes += size
            if sender is not None:
                self.pending_by_sender[sender] += size
            self.stats["deferred"] += 1
        if not slot:
            del self.pending[ent.owner]
            return
        if sender is not None:
            rep = self.replicas.get(ent.owner)
            self._wants.setdefault(sender, {})[ent.owner] = [rep.epoch, rep.seq] if rep else None

    def _drain(self, owner: str, now: float) -> list[Entry]:
        out: list[Entry] = []
        while self.pending.get(owner):
            slot = self.pending[owner]
            for k in [k for k, (e, *_) in slot.items() if self._is_stale(e)]:
                self._unpend(owner, k)
            rep = self.replicas[owner]
            nxt = next((e for e, *_ in slot.values() if e.epoch == rep.epoch and not e.snap
                        and e.seq == rep.seq + 1), None)
            if nxt is None:
                break
            self._unpend(owner, (nxt.epoch, nxt.seq, nxt.snap))
            out += self._offer(None, nxt, now)
        if not self.pending.get(owner):
            self.pending.pop(owner, None)
        return out

    def _unpend(self, owner: str, key: tuple) -> None:
        """Drop one held envelope and its byte accounting."""
        slot = self.pending.get(owner)
        got = slot.pop(key, None) if slot is not None else None
        if got is None:
            return
        ent, _, sender = got
        self.pending_bytes -= len(ent.raw)
        if sender is not None:
            self.pending_by_sender[sender] -= len(ent.raw)
            if self.pending_by_sender[sender] <= 0:
                del self.pending_by_sender[sender]

    def _clear_pending(self) -> None:
        self.pending.clear()
        self.pending_bytes = 0
        self.pending_by_sender.clear()

    def _evict(self, now: float) -> bool:
        """Room for a protected owner: forget the unprotected owner longest without a heartbeat."""
        worst, worst_seen = None, None
        for key, rep in self.replicas.items():
            owner = doc_owner(key)
            if owner == self.peer_id or self.admission.protected(owner):
                continue
            entry = self.state.peer(owner)
            seen = entry.heartbeat if entry is not None else rep.since - self.limits.compact_after
            if worst_seen is None or seen < worst_seen:
                worst, worst_seen = owner, seen
        if worst is None:
            return False
        for key in (worst, records_key(worst)):
            self._forget(key)
        self.stats["evicted"] += 1
        return True

    def _forget(self, key: str) -> None:
        """Drop one document (tombstoned at its position, so lagging peers cannot bring it back)."""
        rep = self.replicas.pop(key, None)
        if rep is None:
            return
        self.state.docs.pop(key, None)
        self.tombstones[key] = (rep.epoch, rep.seq)
        while len(self.tombstones) > 4 * self.limits.max_owners:
            self.tombstones.popitem(last=False)
        for k in list(self.pending.get(key, {})):
            self._unpend(key, k)
        self.pending.pop(key, None)
        self._changed()

    def _reject(self, sender: str | None, reason: str, author: str | None = None) -> list:
        self.rejected[reason] += 1
        if author is not None:
            self.author_faults[doc_owner(author)] += 1
        if sender is not None and reason not in NO_PENALTY:
            self.scores[sender] = self.scores.get(sender, 0.0) - self.limits.penalty
        return []
