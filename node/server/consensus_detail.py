"""Records too large for the swarm state travel as content-addressed blobs (``consensus.detail``).

The coordinator of a round whose signed record does not fit a 16 KiB state record keeps the encoded
record in its ``DetailStore`` and adds a small ``round_detail`` record to the state (round id,
SHA-256, size). Participants get the full record with the final packet and keep it too. Every other
node fetches it by digest (RPC ``detail`` on ``/swarmlm/consensus/1``) from the reference's author,
then from the round's other holders it knows of, checks it (``check_detail``) and hands it to its
reputation book. Audit records with long answers travel the same way (``audit_detail`` references,
checked by ``consensus.audits.check_audit_detail``; only their coordinator holds them at first).
The store is bounded in entries and bytes (oldest out first); a node retries a
missing blob at most once per ``RETRY_S`` and fetches at most ``FETCHES_PER_PASS`` per pass.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Any

import trio

from swarmlm.consensus.audits import audit_ref, check_audit_detail
from swarmlm.consensus.detail import MAX_DETAIL_BYTES, DetailRef, check_detail, detail_digest, detail_ref
from swarmlm.consensus.records import ConsensusError
from swarmlm.net.rpc import BAD_REQUEST, RpcError
from swarmlm.net.rpc_server import CallContext
from swarmlm.node.dial import ensure_connected
from swarmlm.node.wire import CONSENSUS_PROTOCOL

log = logging.getLogger("swarmlm.consensus")

DETAIL_KIND = "round_detail"
AUDIT_DETAIL_KIND = "audit_detail"
_REF = {DETAIL_KIND: detail_ref, AUDIT_DETAIL_KIND: audit_ref}  # a blob's reference, by its state kind
_CHECK = {DETAIL_KIND: check_detail, AUDIT_DETAIL_KIND: check_audit_detail}  # a fetched blob's check
MAX_BLOBS = 2048
MAX_STORE_BYTES = 64 * 1024 * 1024
RETRY_S = 30.0
FETCHES_PER_PASS = 8
FETCH_TIMEOUT_S = 10.0


class DetailStore:
    """Verified round-record blobs by SHA-256, bounded in count and bytes (oldest evicted first)."""

    def __init__(self, max_blobs: int = MAX_BLOBS, max_bytes: int = MAX_STORE_BYTES) -> None:
        self.blobs: OrderedDict[str, bytes] = OrderedDict()
        self.max_blobs, self.max_bytes, self.bytes = max_blobs, max_bytes, 0

    def put(self, data: bytes) -> str:
        digest = detail_digest(data)
        if digest not in self.blobs and len(data) <= MAX_DETAIL_BYTES:
            self.blobs[digest] = bytes(data)
            self.bytes += len(data)
            while len(self.blobs) > self.max_blobs or self.bytes > self.max_bytes:
                _, old = self.blobs.popitem(last=False)
                self.bytes -= len(old)
        return digest

    def get(self, digest: str) -> bytes | None:
        return self.blobs.get(digest)


class Details:
    """The detail side of one ``ConsensusService``: store, serve, publish, fetch."""

    def __init__(self, service: Any) -> None:
        self.svc = service
        self.store = DetailStore()
        self.tried: dict[str, float] = {}  # digest -> last fetch attempt (monotonic)

    def register(self, rpc: Any) -> None:
        rpc.add_unary(CONSENSUS_PROTOCOL, "detail", self._serve)

    async def _serve(self, ctx: CallContext, args: Any) -> Any:
        if not isinstance(args, str) or len(args) != 64:
            raise RpcError(BAD_REQUEST, "detail: expected a sha256 in hex")
        return self.store.get(args)

    def publish(self, envelope: bytes, kind: str = DETAIL_KIND) -> None:
        """Keep the record as a blob and add its reference (of ``kind``) to the swarm state."""
        ref = _REF[kind](envelope)
        self.store.put(envelope)
        self.svc.node.state.add_record(kind, ref.to_obj())

    def refs(self, kind: str = DETAIL_KIND) -> list[tuple[Any, DetailRef]]:
        """(state record, reference) of every readable reference of ``kind``."""
        out = []
        for rec in self.svc.node.state.state.records(kind=kind):
            try:
                out.append((rec, DetailRef.from_obj(rec.body)))
            except ConsensusError:
                continue
        return out

    def available(self, kind: str = DETAIL_KIND) -> list[tuple[str, bytes]]:
        """(state record key, blob) for every reference of ``kind`` whose blob is here (only checked
        blobs are kept: fetched ones by their kind's check, ours and final packets when made)."""
        out = []
        for rec, ref in self.refs(kind):
            data = self.store.get(ref.sha256)
            if data is not None:
                out.append((rec.key, data))
        return out

    async def fetch_missing(self) -> int:
        """One pass: fetch up to ``FETCHES_PER_PASS`` missing blobs; how many arrived."""
        got, now = 0, time.monotonic()
        missing = [(kind, rec, ref) for kind in _REF for rec, ref in self.refs(kind)
                   if self.store.get(ref.sha256) is None and now - self.tried.get(ref.sha256, -RETRY_S) >= RETRY_S]
        for kind, rec, ref in missing[:FETCHES_PER_PASS]:
            self.tried[ref.sha256] = now
            if await self._fetch(rec.author, ref, kind):
                got += 1
        if len(self.tried) > 4 * MAX_BLOBS:
            self.tried = dict(sorted(self.tried.items(), key=lambda kv: kv[1])[-MAX_BLOBS:])
        return got

    async def _fetch(self, peer: str, ref: DetailRef, kind: str = DETAIL_KIND) -> bool:
        node = self.svc.node
        if peer == node.peer_id:
            return False
        try:
            with trio.fail_after(FETCH_TIMEOUT_S):
                await ensure_connected(node.host, node.state.state, peer)
                data = await node.host.rpc.call(peer, CONSENSUS_PROTOCOL, "detail", ref.sha256,
                                                timeout=FETCH_TIMEOUT_S)
            if not isinstance(data, (bytes, bytearray)):
                return False
            _CHECK[kind](ref, peer, bytes(data))
        except Exception as exc:  # unreachable, gone, or a blob that does not check out
            log.info("round detail %s from %s: %s", ref.sha256[:12], peer[-6:], str(exc)[:200])
            return False
        self.store.put(bytes(data))
        return True
