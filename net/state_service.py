"""The swarm state over libp2p: carries ``StateSync`` messages between connected peers.

One long-lived ``sync`` stream per neighbour on ``/swarmlm/state/1`` (RPC streaming call; the
peer with the smaller id opens it, the other opens one itself if none appeared after a grace
period, so light clients that only the node can see still sync). When both ends opened one, both
keep the stream the smaller id opened, so they agree without a round trip; a peer that does not
answer our stream is tried again after a back-off, never in a tight loop. Each link has a bounded
outgoing queue drained by its own writer task; a full queue drops the message (anti-entropy
repairs it). All engine calls happen on the trio thread. The engine is persisted in the data dir
(periodically when dirty, and at shutdown).
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any, Callable

import trio

from swarmlm.errors import SwarmError
from swarmlm.net.rpc import RpcError

from swarmlm.net.limits import ip_prefix
from swarmlm.net.rpc_server import ServerCall
from swarmlm.net.state.schema import InvalidUpdate
from swarmlm.net.state.store import StateStore
from swarmlm.net.state.sync import HEARTBEAT_S, SAVE_S, TICK_S, StateSync
from swarmlm.net.state.wire import PROTOCOL_ID, Limits

log = logging.getLogger("swarmlm.state")

QUEUE = 256


STATE_REQUESTS_PER_S = 2.0  # "sv"/"want" messages a neighbour may send (each can cost our whole state)
STATE_REQUEST_BURST = 8.0


def _asks_for_state(data: bytes) -> bool:
    """A msgpack array starting with "sv" or "want" (peeked without decoding the message)."""
    return data[1:4] == b"\xa2sv" or data[1:6] == b"\xa4want"


OPEN_GRACE_S = 2.0  # the bigger id waits this long for the smaller id's stream before opening its own
RETRY_S = 5.0  # after opening a link to a peer, wait this long before opening another ...
MAX_DOUBLINGS = 6  # ... doubled after each open it never answered, up to 64 x RETRY_S
LEAVE_GRACE_S = 1.0  # at shutdown: how long the links get to send our leaving mark


class _Link:
    def __init__(self, peer: str, opener: str) -> None:
        self.peer = peer
        self.opener = opener  # the peer id that opened the stream: theirs or ours
        self.heard = 0  # messages received on it
        self.scope = trio.CancelScope()
        self.send, self.recv = trio.open_memory_channel[bytes](QUEUE)
        self.dropped = 0
        self.unsent = 0  # queued and not yet written
        self._tokens = STATE_REQUEST_BURST
        self._last = time.monotonic()

    def allow_state_request(self, now: float) -> bool:
        """Token bucket for full-state requests from this neighbour."""
        self._tokens = min(STATE_REQUEST_BURST, self._tokens + (now - self._last) * STATE_REQUESTS_PER_S)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class StateService:
    """Runs a ``StateSync`` engine for a ``SwarmHost``; ``local_fields()`` feeds our heartbeat."""

    name = "state"

    def __init__(self, host: Any, data_dir: Any | None, *, heartbeat_s: float = HEARTBEAT_S,
                 local_fields: Callable[[], dict[str, Any]] | None = None, publish: bool = True,
                 rng: random.Random | None = None, ttl_s: float | None = None) -> None:
        self.host = host
        self.store = StateStore(data_dir) if data_dir is not None else None
        self.heartbeat_s = heartbeat_s
        self.local_fields = local_fields or (lambda: {})
        self.publish = publish  # light clients read the state but have no entry of their own
        rng = rng or random.Random()
        now = time.time()
        limits = Limits(ttl=ttl_s) if ttl_s else None
        self.sync = (self.store.open_engine(host.identity, now=now, rng=rng, limits=limits) if self.store
                     else StateSync(host.identity, now=now, rng=rng, limits=limits))
        # new owners are admitted per IP prefix of the connection that brought them (net/state/admission.py)
        self.sync.admission.group_of = self._group_of
        self.links: dict[str, _Link] = {}
        self._opening: set[str] = set()
        self._first_seen: dict[str, float] = {}
        self._retry_at: dict[str, float] = {}
        self._fails: dict[str, int] = {}  # opens in a row the peer never answered
        self._wake = trio.Event()
        self.bytes_out = 0
        self.bytes_in = 0
        self.left = False  # our leaving mark is published (clean shutdown under way)
        host.rpc_server.add_stream(PROTOCOL_ID, "sync", self._serve)

    @property
    def state(self):
        return self.sync.state

    def _group_of(self, peer: str) -> str:
        try:
            ip = self.host.remote_ip(peer)
        except Exception:  # no live connection (or the host is not running): the peer itself
            ip = None
        return ip_prefix(ip) if ip else peer

    # -- node service interface ----------------------------------------------------------------
    def register(self, node: Any) -> None:  # the RPC method is added in __init__
        pass

    async def run(self, node: Any = None) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._connect_loop)
            nursery.start_soon(self._tick_loop)
            if self.publish:
                nursery.start_soon(self._heartbeat_loop)
            if self.store is not None:
                nursery.start_soon(self._save_loop)

    async def close(self, node: Any = None) -> None:
        self.save()

    async def leave(self, grace_s: float = LEAVE_GRACE_S) -> None:
        """Clean shutdown: publish our signed leaving mark (``left`` in our own entry) and give the
        links up to ``grace_s`` to send it. Other nodes then list us as "left" at once instead of
        "online" until our heartbeat times out; only we can write our entry, so only we can do this."""
        if not self.publish:
            return
        self.publish_now(leaving=True)
        with trio.move_on_after(grace_s):
            while any(link.unsent for link in self.links.values()):
                await trio.sleep(0.02)

    def save(self) -> None:
        if self.store is not None:
            try:
                self.store.save(self.sync.export())
            except OSError as exc:
                log.warning("could not save the swarm state: %s", exc)

    # -- publishing -------------------------------------------------------------------------------
    def publish_now(self, *, leaving: bool = False, **extra: Any) -> None:
        """Write our entry now (after what we host changed; ``leaving``: with our leaving mark, dated
        like the heartbeat). A field the schema refuses is logged and left out of the swarm state;
        it never takes the node down."""
        if self.left and not leaving:  # after our leaving mark, a heartbeat would take it back
            return
        fields = dict(self.local_fields())
        fields.update(extra)
        now = time.time()
        if leaving:
            fields["left"] = now
            self.left = True
        try:
            out = self.sync.publish_local(now, **fields)
        except (SwarmError, InvalidUpdate) as exc:
            log.error("not publishing our swarm-state entry: %s", exc)
            return
        self._dispatch(out)

    def add_record(self, kind: str, body: Any) -> Any:
        rec, out = self.sync.add_record(kind, body, time.time())
        self._dispatch(out)
        return rec

    def _dispatch(self, out: list[tuple[str, bytes]]) -> None:
        for peer, data in out:
            link = self.links.get(peer)
            if link is None:
                continue
            try:
                link.send.send_nowait(data)
                link.unsent += 1
            except trio.WouldBlock:
                link.dropped += 1

    # -- links ------------------------------------------------------------------------------------
    async def _run_link(self, peer: str, call: Any, opener: str) -> int:
        """Serve one stream as the link to ``peer``; the number of messages it brought."""
        old = self.links.get(peer)
        if old is not None:  # both ends opened a stream at once: keep the one the smaller id opened
            if opener >= old.opener:
                return 0  # ours stays; the caller's call ends, which ends that stream at the other end
            old.scope.cancel()
        link = _Link(peer, opener)
        self.links[peer] = link
        self._dispatch(self.sync.on_connect(peer))
        try:
            with link.scope:
                await self._serve_link(link, call)
        finally:
            if self.links.get(peer) is link:
                del self.links[peer]
                self.sync.on_disconnect(peer)
        return link.heard

    async def _serve_link(self, link: _Link, call: Any) -> None:
        peer = link.peer
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._writer, link, call, nursery.cancel_scope)
            async for data in call:
                if not isinstance(data, bytes):
                    self.sync.rejected["not_bytes"] += 1
                    continue
                self.bytes_in += len(data)
                link.heard += 1
                if _asks_for_state(data) and not link.allow_state_request(time.monotonic()):
                    self.sync.rejected["rate_limited"] += 1  # each answer may be our whole state
                    continue
                self._dispatch(self.sync.on_message(peer, data, time.time()))
                if self.sync.banned(peer):
                    log.warning("closing state link to %s: too many invalid updates", peer[-8:])
                    break
            nursery.cancel_scope.cancel()

    async def _writer(self, link: _Link, call: Any, scope: trio.CancelScope) -> None:
        try:
            async for data in link.recv:
                await call.send(data)
                link.unsent -= 1
                self.bytes_out += len(data)
        except (RpcError, OSError) as exc:  # the neighbour went away: end the link, quietly
            log.debug("state link to %s closed: %s", link.peer[-8:], exc)
            scope.cancel()

    async def _serve(self, call: ServerCall, args: Any) -> Any:
        await self._run_link(call.ctx.peer, call, call.ctx.peer)
        return None

    async def _open(self, peer: str) -> None:
        heard = 0
        try:
            async with self.host.rpc.stream(peer, PROTOCOL_ID, "sync", None, timeout=24 * 3600) as call:
                heard = await self._run_link(peer, call, self.host.peer_id)
        except (RpcError, OSError) as exc:
            log.debug("state link to %s: %s", peer[-8:], exc)
        except Exception as exc:  # the peer speaks no state protocol, or the stream broke
            log.debug("state link to %s failed: %s: %s", peer[-8:], type(exc).__name__, exc)
        finally:
            self._opening.discard(peer)
            # a peer that never answered (no state protocol: a light host, an attacker's identity)
            # is tried again ever more rarely; one that spoke starts over at the shortest wait
            fails = self._fails[peer] = 0 if heard else self._fails.get(peer, 0) + 1
            self._retry_at[peer] = trio.current_time() + RETRY_S * 2 ** min(max(fails - 1, 0), MAX_DOUBLINGS)

    async def _connect_loop(self) -> None:
        me = self.host.peer_id
        while True:
            now = trio.current_time()
            connected = self.host.connected_peers()
            for table in (self._first_seen, self._retry_at, self._fails):  # only connected peers are remembered
                for gone in set(table).difference(connected):
                    del table[gone]
            for peer in connected:
                if peer in self.links or peer in self._opening:
                    continue
                first = self._first_seen.setdefault(peer, now)
                due = self._retry_at.get(peer, 0.0) <= now
                if due and (peer > me or now - first > OPEN_GRACE_S):
                    self._opening.add(peer)
                    self._retry_at[peer] = now + RETRY_S  # a peer without a state link is tried again after this
                    self._nursery.start_soon(self._open, peer)
            await trio.sleep(0.5)

    async def _tick_loop(self) -> None:
        while True:
            await trio.sleep(TICK_S * random.uniform(0.8, 1.2))
            self._dispatch(self.sync.tick(time.time()))

    async def _heartbeat_loop(self) -> None:
        while True:
            try:
                self.publish_now()
            except Exception:
                log.exception("publishing our swarm-state entry failed")
            await trio.sleep(self.heartbeat_s)

    async def _save_loop(self) -> None:
        while True:
            await trio.sleep(SAVE_S)
            if self.sync.dirty:
                self.save()
