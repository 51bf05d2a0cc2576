"""Swarm-state sync: an I/O-free protocol engine over owner-signed envelopes (h11 style).

Every change a node makes to one of its own documents (entry ``<peer id>``, records
``<peer id>#r``; see ``swarmlm.net.state.doc``) is a Yjs update sealed in
``Envelope.seal(identity, "swarmlm/state/v1", payload)``; the payload (msgpack) is
``{"o": document key, "e": epoch, "s": seq, "k": 0 incremental | 1 snapshot, "u": yjs update}``.
Relays forward envelopes verbatim, so nobody but the owner can produce content for its documents.
Per document a node keeps a log: the owner's latest signed full-state snapshot plus the signed
incrementals after it (the entry's owner emits a snapshot after at least ``snapshot_every`` updates
once the incrementals outweigh the previous snapshot; the append-only records log never needs
one). The sync "state vector" is ``{document: [epoch, seq]}`` (Yjs deletes do not advance clocks;
sequence numbers do), and the "missing updates" answer is the part of those logs the other side
lacks -- never a diff computed by a relay. A new epoch (restart, lost file) starts with snapshots
at seq 0 and fresh Yjs client ids, so clocks never collide.

Messages (msgpack arrays, at most ``Limits.max_message_bytes``):
  ["sv", {doc: [e, s]}, reply]    -- my vector; send what I lack; reply=1: also send yours if I
                                    have what you lack (full sync on connect, anti-entropy)
  ["dig", hex]                    -- digest of my vector (cheap anti-entropy probe)
  ["env", [envelope bytes, ...]]  -- envelopes: pushes of our own updates, snapshots, answers
  ["have", [[doc, e, s], ...]]    -- a relay accepted these incrementals (lazy forwarding)
  ["want", {doc: [e, s(, upto)] | nil}] -- send me that document's log after s (up to upto)

What the libp2p service (protocol ``/swarmlm/state/1``) must do -- nothing else is needed:
  * create one engine: ``StateStore(data_dir).open_engine(identity, now=time.time(), rng=...)``;
  * when a stream with a peer opens (either side): send every (peer, bytes) of ``on_connect(peer)``;
    when it closes: ``on_disconnect(peer)``;
  * for every frame received from ``peer``: send every (dst, bytes) of
    ``on_message(peer, data, time.time())``;  if ``banned(peer)``: close the stream;
  * every ``TICK_S`` seconds: send ``tick(time.time())`` (anti-entropy, compaction);
  * every ``HEARTBEAT_S`` seconds and when what it hosts changes: send
    ``publish_local(time.time(), addrs=..., hosted=..., throughput=..., ...)``; records via
    ``add_record(kind, body, now)``; models via ``publish_local(now, models=[ModelInfo...])``;
  * every ``SAVE_S`` seconds when ``dirty`` and at shutdown: ``store.save(export())``.
Frames carry the bytes as-is (one msgpack bin per frame, max ``Limits.max_message_bytes``).
Sends are best-effort: a full or failed send may be dropped; anti-entropy repairs it. All calls
happen on one trio task (or under one lock): the engine is not thread-safe and never blocks.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter, OrderedDict
from typing import Any, Iterable

import msgpack

from swarmlm.crypto.envelope import Envelope, canonical_packb
from swarmlm.crypto.identity import Identity
from swarmlm.net.state.admission import Admission
from swarmlm.net.state.ingest import Ingest, Pending
from swarmlm.net.state.own import OwnEpochs
from swarmlm.net.state.rights import doc_owner, records_key
from swarmlm.net.state.schema import ModelInfo, Record, StateError, make_record
from swarmlm.net.state.swarm import SwarmState
from swarmlm.net.state.wire import DOMAIN, PROTOCOL_ID, Entry, Limits, Out, Replica, batch, parse_vector

__all__ = ["DOMAIN", "PROTOCOL_ID", "Limits", "Out", "StateSync", "TICK_S", "HEARTBEAT_S", "SAVE_S"]
TICK_S, HEARTBEAT_S, SAVE_S = 5.0, 10.0, 30.0


class StateSync(Ingest, OwnEpochs):
    def __init__(self, identity: Identity, *, now: float, rng: random.Random,
                 limits: Limits | None = None, restore: bytes | None = None) -> None:
        self.identity, self.peer_id = identity, identity.peer_id
        self._rkey = records_key(self.peer_id)
        self.rng, self.limits = rng, limits or Limits()
        self.state = SwarmState(ttl=self.limits.ttl)
        self.replicas: dict[str, Replica] = {}
        self.neighbours: set[str] = set()
        self.pending: Pending = {}
        self.pending_bytes = 0
        self.pending_by_sender: Counter[str] = Counter()
        self.admission = Admission(self.limits)  # the node sets .protected and the service .group_of
        self.tombstones: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self.rejected: Counter[str] = Counter()  # reason -> count
        self.author_faults: Counter[str] = Counter()  # owner who signed an invalid update
        self.scores: dict[str, float] = {}  # neighbour -> score
        self.stats: Counter[str] = Counter()
        self.dirty = False
        self._wants: dict[str, dict[str, Any]] = {}
        self._asked: dict[str, tuple[int, int, float]] = {}  # owner -> (epoch, pulled up to, when)
        self._digest: str | None = None
        self._own_restarted = False
        self._own_merge: list[bytes] = []
        self._ghost: Replica | None = None
        self._fresh = True  # for 2 ticks with neighbours: our sv omits ourselves, so peers send our old log
        self._fresh_ticks = 2
        epoch = int(now * 1000)
        if restore is not None:
            epoch = self._restore(restore, now, epoch)
        else:
            self._start_epoch(epoch, None, None)

    # ------------------------------------------------------------ public API
    @property
    def own(self) -> Replica:
        """Our entry document's replica."""
        return self.replicas[self.peer_id]

    @property
    def own_records(self) -> Replica:
        return self.replicas[self._rkey]

    def on_connect(self, peer: str) -> Out:
        self.neighbours.add(peer)
        return [(peer, self._sv_msg(reply=True))]

    def on_disconnect(self, peer: str) -> None:
        self.neighbours.discard(peer)

    def banned(self, peer: str) -> bool:
        return self.scores.get(peer, 0.0) <= self.limits.ban_score

    def publish_local(self, now: float, *, models: Iterable[ModelInfo] = (), **fields: Any) -> Out:
        """Write our own entry (heartbeat = ``now``) and models; push the signed update."""
        doc = self.own.doc
        updates = [doc.write_peer(heartbeat=float(now), **fields)]
        updates += [doc.write_model(m) for m in models]
        return self._push_local(self.peer_id, [u for u in updates if u])

    def add_record(self, kind: str, body: Any, now: float) -> tuple[Record, Out]:
        """Sign a record, add it to our document and push it; ``state.records(kind=...)`` finds it."""
        rec = make_record(self.identity, kind, body, now)
        if self.own_records.size + len(rec.envelope) + 256 > self.limits.max_doc_bytes:
            raise StateError("our records document is full for this epoch")
        up = self.own_records.doc.add_record(rec)
        return rec, self._push_local(self._rkey, [up] if up else [])

    def tick(self, now: float) -> Out:
        """Anti-entropy with one random neighbour; compaction of long-gone peers."""
        self._compact(now)
        if self.neighbours:  # the answers to our first vectors have had a tick period to arrive
            self._fresh_ticks -= 1
            if self._fresh_ticks <= 0:
                self._fresh, self._ghost = False, None
        if not self.neighbours:
            return []
        peer = self.rng.choice(sorted(self.neighbours))
        return [(peer, msgpack.packb(["dig", self.digest()], use_bin_type=True))]

    def on_message(self, peer: str, data: bytes, now: float) -> Out:
        if self.banned(peer):
            self.rejected["banned"] += 1
            return []
        if len(data) > self.limits.max_message_bytes:
            self._reject(peer, "too_large")
            return []
        try:
            n = len(data)  # container limits proportional to the message (an item takes >= 1 byte)
            msg = msgpack.unpackb(data, raw=False, max_bin_len=min(n, self.limits.max_message_bytes),
                                  max_str_len=min(n, 1024), max_array_len=min(n, self.limits.max_message_bytes // 64),
                                  max_map_len=min(n // 2, 2 * self.limits.max_owners + 64))
            kind = msg[0]
        except Exception:
            self._reject(peer, "decode")
            return []
        self.stats[f"rx_{kind}" if kind in ("sv", "dig", "want", "env", "have") else "rx_other"] += 1
        try:
            if kind == "env" and isinstance(msg[1], list):
                return self._on_envelopes(peer, msg[1], now)
            if kind == "have":
                return self._on_have(peer, msg[1], now)
            if kind == "dig":
                return [] if msg[1] == self.digest() else [(peer, self._sv_msg(reply=True))]
            if kind in ("sv", "want"):
                vec = parse_vector(msg[1])
                out = self._answer(peer, vec, full=(kind == "sv"))
                if kind == "sv" and msg[2] and self._we_lack(vec):
                    out.append((peer, self._sv_msg(reply=False)))
                return out
        except (IndexError, TypeError, ValueError):
            pass
        self._reject(peer, "decode")
        return []

    def vector(self) -> dict[str, tuple[int, int]]:
        return {o: (r.epoch, r.seq) for o, r in self.replicas.items()}

    def digest(self) -> str:
        if self._digest is None:
            self._digest = hashlib.sha256(canonical_packb(sorted(
                [o, e, s] for o, (e, s) in self.vector().items()))).hexdigest()
        return self._digest

    def export(self) -> bytes:
        """Everything needed to restart: every owner's signed log (re-verified on load)."""
        self.dirty = False
        return msgpack.packb({"v": 1, "owners": {o: [e.raw for e in r.log] for o, r in self.replicas.items()},
                              "tombstones": {o: list(k) for o, k in self.tombstones.items()}},
                             use_bin_type=True)

    # ------------------------------------------------------------ local writes
    def _seal(self, key: str, seq: int, snap: bool, update: bytes) -> Entry:
        epoch = self.replicas[key].epoch
        payload = msgpack.packb({"o": key, "e": epoch, "s": seq, "k": int(snap), "u": update}, use_bin_type=True)
        raw = Envelope.seal(self.identity, DOMAIN, payload).encode()
        return Entry(raw, key, epoch, seq, snap, update)

    def _push_local(self, key: str, updates: list[bytes]) -> Out:
        if not updates:
            return []
        own = self.replicas[key]
        entries = []
        for up in updates:
            own.seq += 1
            ent = self._seal(key, own.seq, False, up)
            own.log.append(ent)
            entries.append(ent)
        incs, base = own.seq - own.log[0].seq, len(own.log[0].update)
        # entry document: a snapshot once the incrementals outweigh the last one (so snapshots cost
        # at most as much traffic as the updates) and at least every snapshot_every updates. The
        # records document only grows: its log is as compact as a snapshot, so it never needs one.
        if key == self.peer_id and (incs >= self.limits.snapshot_every and own.size - base >= base
                                    or incs >= self.limits.max_log // 2 or own.size > self.limits.max_doc_bytes // 2):
            snap = self._seal(key, own.seq, True, own.doc.full_update())
            own.log = [snap]
            entries.append(snap)
            self.stats["snapshots"] += 1
        self._changed()
        return self._send_all([e.raw for e in entries], exclude=None)

    # ------------------------------------------------------------ receiving envelopes
    def _on_envelopes(self, peer: str | None, raws: list, now: float) -> Out:
        accepted: list[Entry] = []
        for raw in raws:
            if isinstance(raw, bytes):
                accepted += self._ingest(peer, raw, now)
            else:
                self._reject(peer, "decode")
        out = self._forward(accepted, exclude=peer) if accepted else []
        if self._own_restarted:
            self._own_restarted = False
            out += self._send_all([self.own.log[0].raw, self.own_records.log[0].raw], exclude=None)
        if self._own_merge:
            out += self._push_local(self._rkey, [u for u in self._own_merge if u])
            self._own_merge = []
        for dst, want in self._wants.items():
            out.append((dst, msgpack.packb(["want", want], use_bin_type=True)))
        self._wants.clear()
        return out

    def _forward(self, accepted: list[Entry], exclude: str | None) -> Out:
        """Forward newly accepted envelopes once to every other neighbour: in full, or (lazy mode)
        incrementals as ``have`` announcements the neighbours pull with ``want``."""
        self.stats["forwarded"] += len(accepted) * max(0, len(self.neighbours) - (exclude in self.neighbours))
        if not self.limits.lazy_forward:
            return self._send_all([e.raw for e in accepted], exclude)
        out = self._send_all([e.raw for e in accepted if e.snap], exclude)
        items = [[e.owner, e.epoch, e.seq] for e in accepted if not e.snap]
        if items:
            msg = msgpack.packb(["have", items], use_bin_type=True)
            out += [(p, msg) for p in sorted(self.neighbours) if p != exclude]
        return out

    def _on_have(self, peer: str, items: Any, now: float) -> Out:
        if not isinstance(items, list):
            raise ValueError("have carries a list")
        want: dict[str, Any] = {}
        for it in items:
            if not (isinstance(it, list) and len(it) == 3 and isinstance(it[0], str)
                    and type(it[1]) is int and type(it[2]) is int):
                raise ValueError("have items are [owner, epoch, seq]")
            owner, epoch, seq = it
            if doc_owner(owner) == self.peer_id or self._knows(owner, epoch, seq, False):
                continue
            rep = self.replicas.get(owner)
            if rep is None or rep.epoch != epoch:  # we lack this epoch: its whole log
                lo = -1
            else:
                lo = rep.seq
            asked = self._asked.get(owner)  # (epoch, requested up to, when)
            if asked is not None and asked[0] == epoch and now - asked[2] < self.limits.want_retry_s:
                if asked[1] >= seq:
                    continue  # already asked someone for it
                lo = max(lo, asked[1]) if lo >= 0 else lo
            prev = want.get(owner)
            self._asked[owner] = (epoch, max(seq, prev[2] if prev else seq), now)
            want[owner] = None if lo < 0 else [epoch, prev[1] if prev else lo, self._asked[owner][1]]
        self.stats["wants_sent"] += bool(want)
        return [(peer, msgpack.packb(["want", want], use_bin_type=True))] if want else []

    # ------------------------------------------------------------ sync answers
    def _sv_msg(self, reply: bool) -> bytes:
        vec = {o: list(k) for o, k in self.vector().items() if not (self._fresh and doc_owner(o) == self.peer_id)}
        return msgpack.packb(["sv", vec, int(reply)], use_bin_type=True)

    def _answer(self, peer: str, vec: dict[str, tuple[int, int] | None], full: bool) -> Out:
        """The envelopes ``peer`` lacks: for ``sv`` every owner, for ``want`` the listed ones."""
        raws: list[bytes] = []
        owners = self.replicas if full else [o for o in vec if o in self.replicas]
        for o in owners:
            rep, theirs = self.replicas[o], vec.get(o)
            if theirs is None or theirs[0] < rep.epoch:
                raws += [e.raw for e in rep.log]
            elif theirs[0] == rep.epoch and theirs[1] < rep.seq:
                after = theirs[1] if theirs[1] >= rep.log[0].seq else -1
                upto = theirs[2] if len(theirs) == 3 else rep.seq
                raws += [e.raw for i, e in enumerate(rep.log) if e.seq > after and (e.seq <= upto or i == 0)]
        self.stats["answered"] += len(raws)
        return batch(peer, raws, self.limits.max_message_bytes)

    def _we_lack(self, vec: dict[str, tuple[int, int] | None]) -> bool:
        for o, k in vec.items():
            if k is None:
                continue
            if k <= self.tombstones.get(o, (-1, -1)):
                continue
            rep = self.replicas.get(o)
            if rep is None or k > (rep.epoch, rep.seq):
                return True
        return False

    def _send_all(self, raws: list[bytes], exclude: str | None) -> Out:
        cap = self.limits.max_message_bytes
        return [m for p in sorted(self.neighbours) if p != exclude for m in batch(p, raws, cap)]

    # ------------------------------------------------------------ housekeeping
    def _changed(self) -> None:
        self._digest = None
        self.dirty = True

    def _compact(self, now: float) -> None:
        """Forget owners (both documents): without any entry after ``empty_after``, offline for
        ``compact_unprotected_after``, or -- established (protected) ones -- ``compact_after``."""
        lim = self.limits
        for o, rep in list(self.replicas.items()):
            owner = doc_owner(o)
            if owner == self.peer_id or o not in self.replicas:
                continue
            entry = self.state.peer(owner)
            if entry is None:
                gone = now - rep.since > lim.empty_after
            else:
                keep = lim.compact_after if self.admission.protected(owner) else lim.compact_unprotected_after
                gone = now - entry.heartbeat > keep
            if gone:
                self._forget(o)
                self.stats["compacted"] += 1
        if len(self._asked) > 65536:
            self._asked.clear()
        for o in [o for o, (_, _, at) in self._asked.items() if now - at > self.limits.want_retry_s]:
            del self._asked[o]
        for o in list(self.pending):
            slot = self.pending[o]
            for k in [k for k, (_, t, _) in slot.items() if now - t > self.limits.pending_ttl]:
                self._unpend(o, k)
            if not slot:
                del self.pending[o]
