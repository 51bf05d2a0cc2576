"""What a Sybil attacker sends, crafted offline: signed state envelopes and hostile RPC frames.

Each function takes the attacker's identities (free: ``Identity.generate()``) and returns what to
deliver, so the same payloads serve the adversarial tests (delivered to an in-process engine or
node) and ``swarmlm bench sybil`` (delivered over libp2p by ``testnet/sybil.py``). The attack
classes (docs/RELIABILITY.md, "Trust model"):

* ``verdicts`` -- every identity signs "fail" verdicts about every honest host, some dated far in
  the future (rejected by the clock-skew check), the rest now (kept, but weightless: no standing);
* ``shape``   -- every identity claims to host the model with an absurd layer count (beyond the
  hard cap: refused at the edge) or a wrong but plausible one (outranked by established hosts);
* ``owners``  -- every identity hands over empty documents (admission, compaction);
* ``pending`` -- every identity hands over out-of-order ~250 KiB updates (pending byte bounds);
* ``rpc``     -- decode bombs, relay holds, trickled frames (``decode_bomb``, ``trickle_prefix``).
"""

from __future__ import annotations

import os
import random
import struct
from functools import lru_cache
from typing import Any, Callable, Iterable

import msgpack
from pycrdt import Doc, Map

from swarmlm.crypto.envelope import Envelope
from swarmlm.crypto.identity import Identity
from swarmlm.net.state.rights import client_id_for
from swarmlm.net.state.sync import DOMAIN, StateSync

FAR_FUTURE = 1e11
ATTACKS = ("verdicts", "shape", "owners", "pending", "rpc")


def _engine(ident: Identity, now: float) -> StateSync:
    return StateSync(ident, now=now, rng=random.Random(0))


def _log(sync: StateSync) -> list[bytes]:
    return [e.raw for rep in (sync.own, sync.own_records) for e in rep.log]


def env_message(raws: list[bytes]) -> bytes:
    """One ``["env", [...]]`` state-sync message."""
    return msgpack.packb(["env", raws], use_bin_type=True)


def batches(raws: list[bytes], limit: int = 900 * 1024) -> list[bytes]:
    """``env`` messages of at most ``limit`` bytes each."""
    out, cur, size = [], [], 0
    for raw in raws:
        if cur and size + len(raw) > limit:
            out.append(env_message(cur))
            cur, size = [], 0
        cur.append(raw)
        size += len(raw) + 8
    if cur:
        out.append(env_message(cur))
    return out


def verdict_envelopes(idents: Iterable[Identity], subjects: list[str], now: float, future: bool = True) -> list[bytes]:
    """Each identity: an online entry plus "fail" verdicts about every subject (half of the
    identities date theirs at ``FAR_FUTURE`` when ``future``)."""
    out = []
    for i, ident in enumerate(idents):
        sync = _engine(ident, now)
        sync.publish_local(now, agent="sybil")
        t = FAR_FUTURE if future and i % 2 == 0 else now
        for s in subjects:
            body = {"v": 1, "subject": s, "verdict": "fail", "hop": "middle", "model": "any", "start": 0, "end": 1,
                    "max_err": 1.0, "tol": 0.001, "reporter": ident.peer_id, "tokens": 1, "reason": "sybil"}
            sync.add_record("verdict", body, t)
        out += _log(sync)
    return out


def seal_snapshot(ident: Identity, epoch: int, write: Callable[[Any, Any], None]) -> bytes:
    """An entry-document snapshot (seq 0) whose Yjs content ``write(peer_map, models_map)`` sets
    directly, past the schema check an honest node's own writes go through."""
    doc = Doc(client_id=client_id_for(ident.peer_id, epoch))
    peer, models = doc.get("peer", type=Map), doc.get("models", type=Map)
    with doc.transaction():
        write(peer, models)
    payload = msgpack.packb({"o": ident.peer_id, "e": epoch, "s": 0, "k": 1, "u": doc.get_update()}, use_bin_type=True)
    return Envelope.seal(ident, DOMAIN, payload).encode()


def shape_envelopes(idents: Iterable[Identity], model: str, now: float, layers: tuple[int, ...] = (100_000, 1000),
                    config_hash: str = "sybil") -> list[bytes]:
    """Each identity announces ``model`` with one of ``layers`` (cycled) and claims to host all of them."""
    out = []
    for i, ident in enumerate(idents):
        n = float(layers[i % len(layers)])

        def write(peer: Any, models: Any, n: float = n) -> None:
            peer["heartbeat"], peer["agent"] = float(now), "sybil"
            peer["hosted"] = [{"model": model, "start": 0.0, "end": n}]
            models[model] = {"config_hash": config_hash, "layers": n, "dtype": "fp32", "ee_variants": []}

        out.append(seal_snapshot(ident, int(now * 1000), write))
    return out


def empty_owner_envelopes(idents: Iterable[Identity], now: float) -> list[bytes]:
    """Each identity's two empty snapshots (an entry with no heartbeat, no records)."""
    return [raw for ident in idents for raw in _log(_engine(ident, now))]


def pending_envelopes(idents: Iterable[Identity], now: float, per_identity: int = 8,
                      size: int = 250 * 1024) -> list[bytes]:
    """Each identity: ``per_identity`` validly signed incrementals of its entry document that can
    never apply (sequence numbers after a gap), ``size`` bytes each."""
    out = []
    epoch = int(now * 1000)
    for ident in idents:
        for seq in range(2, 2 + per_identity):
            payload = msgpack.packb({"o": ident.peer_id, "e": epoch, "s": seq, "k": 0, "u": os.urandom(size)},
                                    use_bin_type=True)
            out.append(Envelope.seal(ident, DOMAIN, payload).encode())
    return out


@lru_cache(maxsize=4)  # the same bytes every time: the attacker's CPU is not what the bench measures
def decode_bomb(approx_bytes: int = 30_000) -> bytes:
    """An RPC frame whose header (just under the 32 KiB a peer without standing may send, by
    default) decodes to one empty list per byte (a request frame ``{m, a}``): the most decode work
    a frame can ask for."""
    per = min(60_000, approx_bytes)
    header = msgpack.packb({"m": "echo", "a": [[[]] * per for _ in range(max(1, approx_bytes // per))]})
    return struct.pack(">II", len(header), len(header)) + header


def trickle_prefix(total: int = 1 << 20) -> bytes:
    """The length prefix of a frame whose body the attacker then sends a byte at a time."""
    return struct.pack(">II", total, 16)
