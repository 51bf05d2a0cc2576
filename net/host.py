"""Our libp2p host: py-libp2p 0.8.1 on trio with Noise only, Yamux, identify, ping, a Kademlia DHT
(server mode, signed records), optional mDNS, a peer table with RTTs, and the RPC server/client.

The py-libp2p host itself is built by ``swarmlm.net.transport.build`` (Noise as the only security
transport, our fast path, ``max_connections_per_peer=1``); NAT traversal is ``net.nat`` and
``net.dialback``. Everything above this module talks to ``SwarmHost``. py-libp2p is imported inside
the methods that need it (a running host), so importing this module stays cheap.
"""

from __future__ import annotations

import logging
import random
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import multiaddr
import trio
import trio.testing

from swarmlm.crypto.identity import Identity
from swarmlm.errors import SwarmError
from swarmlm.net.addrs import advertised
from swarmlm.net.dht_records import NAMESPACE, RecordError, SignedRecord, SignedRecordValidator, record_key
from swarmlm.net.dialback import DialbackService
from swarmlm.net.echo import ECHO_PROTOCOL, echo
from swarmlm.net.inbound import InboundLimits
from swarmlm.net.nat import DirectNotifee, NatManager
from swarmlm.net.peers import PeerTable
from swarmlm.net.rawstream import TrioByteStream
from swarmlm.net.rpc import RpcClient
from swarmlm.net.rpc_server import RpcServer

log = logging.getLogger("swarmlm.host")

class HostError(SwarmError):
    """A peer that cannot be reached, an address that does not parse, a failed listen."""


@dataclass
class HostConfig:
    listen: list[str] = field(default_factory=lambda: ["/ip4/0.0.0.0/tcp/0"])
    bootstrap: list[str] = field(default_factory=list)
    quic: bool = False
    mdns: bool = False
    ping_interval_s: float = 10.0  # keep-alive; well under conntrack's 120 s for TCP
    discovery_interval_s: float = 15.0
    dial_timeout_s: float = 10.0
    announce: list[str] = field(default_factory=list)
    fastpath: bool = True  # net.transport Noise/Yamux/multistream subclasses (same wire protocols); False = stock
    # NAT traversal (net.nat, net.dialback; docs/NAT.md)
    relay: bool = True  # dial /p2p-circuit addresses; reserve on relays unless public; serve when public
    hole_punch: bool = True  # DCUtR after a relayed connection
    reachability: bool = False  # ask peers to dial us back (nodes turn this on) and help others do so
    relay_serve: str = "auto"  # "auto": serve relay while our verdict is public; "always"; "never"
    relay_reserve: bool = False  # hold relay slots while not public (nodes; light clients only dial out)
    relay_reservations: int = 2  # relays to hold a slot on while not public
    relay_max_reservations: int = 128
    relay_max_circuits: int = 256
    relay_max_duration_s: float = 3600.0  # per relayed connection
    relay_max_bytes: int = 1 << 30  # per relayed connection
    relay_reservation_ttl_s: float = 600.0
    # a light client (SDK, `swarmlm ask/status/peers`): DHT in client mode (never in anyone's routing
    # table, no lookups), the bootstrap joined before ``running()`` yields (HostError when none answers)
    client_only: bool = False
    inbound: InboundLimits | None = field(default_factory=InboundLimits)  # net.inbound; None: accept all


def split_p2p_addr(maddr: str) -> tuple[str, str]:
    """'/ip4/1.2.3.4/tcp/5/p2p/Qm..' -> (transport part, peer id)."""
    if "/p2p/" not in maddr:
        raise HostError(f"address {maddr!r} has no /p2p/<peer id> part")
    base, _, pid = maddr.rpartition("/p2p/")
    if not pid or "/" in pid:
        raise HostError(f"address {maddr!r} has a malformed /p2p/ part")
    return base, pid


class SwarmHost:
    """A running libp2p node: connect, open RPC streams, DHT records, peer table."""

    def __init__(self, identity: Identity, config: HostConfig | None = None,
                 rpc_server: RpcServer | None = None) -> None:
        self.identity = identity
        self.config = config or HostConfig()
        self.rpc_server = rpc_server or RpcServer()
        self.rpc = RpcClient(self.open_stream)
        self.peers = PeerTable()
        self.validator = SignedRecordValidator()
        self._host: Any = None
        self._dht: Any = None
        self._seq = 0
        self._handled: set[str] = set()
        self._nursery: Any = None
        self.nat: Any = None  # net.nat.NatManager while running
        self.dialback: Any = None
        self.reachability_listeners: list[Any] = []  # callables(verdict) run when the verdict changes
        self.rpc_server.add_unary(ECHO_PROTOCOL, "echo", echo)
        if self.config.reachability:
            self.dialback = DialbackService(self, on_change=self._on_verdict)

    # -- identity and addresses -------------------------------------------------------------
    @property
    def peer_id(self) -> str:
        return self.identity.peer_id

    @property
    def addrs(self) -> list[str]:
        """Dialable addresses with the /p2p/ suffix; relay (/p2p-circuit) ones first while we hold
        reservations (we are not publicly reachable, so dialers should not wait on direct ones)."""
        if self._host is None:
            return []
        out = []
        for a in self._host.get_addrs():
            s = str(a)
            out.append(s if "/p2p/" in s else f"{s}/p2p/{self.peer_id}")
        return sorted(out, key=lambda a: "/p2p-circuit" not in a)

    @property
    def libp2p(self) -> Any:
        return self._host

    @property
    def reachability(self) -> str:
        """"public", "private" or "unknown" (dial-back verdict; "unknown" until answered or when off)."""
        return self.dialback.verdict if self.dialback is not None else "unknown"

    def _on_verdict(self, verdict: str) -> None:
        if self.nat is not None:
            self.nat.on_verdict(verdict)
        for fn in list(self.reachability_listeners):
            fn(verdict)

    def direct_addrs(self) -> list[str]:
        """Our non-circuit addresses, plus each externally observed IP with our listen ports (what a
        port-preserving NAT maps them to)."""
        if self._host is None:
            return []
        out = [a for a in self.addrs if "/p2p-circuit" not in a]
        ports = {str(a).split("/tcp/")[1].split("/")[0] for a in self._host.get_transport_addrs() if "/tcp/" in str(a)}
        manager = getattr(self._host, "_observed_addr_manager", None)
        try:
            observed = [str(a) for a in manager.addrs(min_observers=1)] if manager is not None else []
        except Exception:
            observed = []
        for a in observed:
            parts = a.split("/")
            if len(parts) > 2 and parts[1] in ("ip4", "ip6") and "p2p-circuit" not in parts:
                out += [f"/{parts[1]}/{parts[2]}/tcp/{port}/p2p/{self.peer_id}" for port in sorted(ports)]
        return list(dict.fromkeys(out))

    def connections(self, peer: str) -> list[Any]:
        try:
            return list(self._host.get_network().get_connections(self._peer(peer)))
        except Exception:
            return []

    def connection_addrs(self, peer: str) -> list[str]:
        """Remote transport addresses of our connections to ``peer`` (circuit ones contain /p2p-circuit)."""
        out = []
        for conn in self.connections(peer):
            try:
                out += [str(a) for a in conn.get_transport_addresses()]
            except Exception:
                continue
        return out

    def supports(self, peer: str, protocol: str) -> bool:
        """Whether ``peer`` listed ``protocol`` in identify (False when unknown)."""
        try:
            return protocol in (self._host.get_peerstore().get_protocols(self._peer(peer)) or [])
        except Exception:
            return False

    def remote_ip(self, peer: str) -> str | None:
        """The IP a direct connection from/to ``peer`` comes from; None when only relayed (or none)."""
        for a in self.connection_addrs(peer):
            parts = a.split("/")
            if "p2p-circuit" not in parts and len(parts) > 2 and parts[1] in ("ip4", "ip6"):
                return parts[2]
        return None

    # -- lifecycle -------------------------------------------------------------------------
    @asynccontextmanager
    async def running(self) -> AsyncIterator["SwarmHost"]:
        from libp2p.kad_dht.kad_dht import DHTMode, KadDHT  # lazy: libp2p is slow to import (~1 s)
        from libp2p.records.validator import NamespacedValidator  # lazy: libp2p, as above
        from libp2p.tools.anyio_service import background_trio_service  # lazy: libp2p, as above

        from swarmlm.net.transport.patches import filter_advertised_addrs  # lazy: imports libp2p (~1 s)

        host, listen = self._build()
        self._host = host
        filter_advertised_addrs(host, advertised)  # never 0.0.0.0 or link-local (net.addrs)
        self._register_handlers()
        validator = NamespacedValidator({NAMESPACE: self.validator}, strict_validation=True)
        mode = DHTMode.CLIENT if self.config.client_only else DHTMode.SERVER
        failed: list[BaseException] = []
        try:
            async with host.run(listen_addrs=listen):
                self._dht = KadDHT(host, mode, validator=validator, validator_changed=True,
                                   strict_validation=True, max_peers_per_subnet=0)
                async with background_trio_service(self._dht):
                    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
                        self._nursery = nursery
                        if self.config.relay or self.config.hole_punch:
                            self.nat = NatManager(self)
                            await self.nat.start(host, stack, nursery)
                            host.get_network().register_notifee(DirectNotifee(self))
                        if self.dialback is not None:
                            nursery.start_soon(self.dialback.run)  # background: readiness never waits
                        nursery.start_soon(self._ping_loop)
                        if self.config.client_only:
                            await self.join(self.config.bootstrap)
                        else:
                            nursery.start_soon(self._bootstrap_and_discover)
                        log.info("host %s listening on %s", self.peer_id, ", ".join(self.addrs))
                        try:
                            yield self
                        except BaseException as exc:
                            if not isinstance(exc, trio.Cancelled):
                                failed.append(exc)
                            raise
                        finally:
                            nursery.cancel_scope.cancel()
        finally:
            self._host = None
            self._dht = None
            self._nursery = None
            self.nat = None
        if failed:  # py-libp2p's service managers can turn the body's exception into a Cancelled that
            raise failed[0]  # their own scope then absorbs: a failing node would exit 0, saying nothing

    def _build(self) -> tuple[Any, list[Any]]:
        from swarmlm.net.transport.build import AddressError, build_libp2p_host  # lazy: imports libp2p (~1 s)

        cfg, rpc = self.config, self.rpc_server  # rpc.trusted: standing (the node sets it); refusing: penalties
        try:
            return build_libp2p_host(self.identity, cfg.listen, announce=cfg.announce, quic=cfg.quic, mdns=cfg.mdns,
                                     dial_timeout_s=cfg.dial_timeout_s, fastpath=cfg.fastpath, inbound=cfg.inbound,
                                     trusted=lambda peer: rpc.trusted(peer), refused=rpc.refusing)
        except AddressError as exc:
            raise HostError(str(exc)) from None

    def _register_handlers(self) -> None:
        for proto in sorted(self.rpc_server.protocols() - self._handled):
            self._host.set_stream_handler(proto, self._make_handler(proto))
            self._handled.add(proto)

    def refresh_handlers(self) -> None:
        """Call after adding RPC methods of a new protocol to ``rpc_server`` while running."""
        if self._host is not None:
            self._register_handlers()

    def _make_handler(self, protocol: str):
        async def handler(stream: Any) -> None:
            peer = stream.muxed_conn.peer_id.to_base58()
            await self.rpc_server.serve_stream(stream, protocol, peer)

        return handler

    # -- connections -----------------------------------------------------------------------
    async def connect(self, maddr: str) -> str:
        """Dial a full multiaddr (with /p2p/); returns the peer id. Raises HostError."""
        from libp2p.peer.peerinfo import info_from_p2p_addr  # lazy: libp2p is slow to import (~1 s)

        split_p2p_addr(maddr)
        try:
            info = info_from_p2p_addr(multiaddr.Multiaddr(maddr))
        except Exception as exc:
            raise HostError(f"cannot parse {maddr!r}: {exc}") from None
        pid = info.peer_id.to_base58()
        if pid == self.peer_id:
            return pid
        try:
            with trio.fail_after(self.config.dial_timeout_s):
                if "/p2p-circuit" in maddr:
                    if self.nat is None or not self.config.relay:
                        raise HostError("relay support is off")
                    if not self.is_connected(pid):
                        await self.nat.dial_relayed(maddr, pid)
                else:
                    self._drop_closed(pid)  # a listed dead connection would make connect() a no-op
                    await self._host.connect(info)
        except Exception as exc:
            self.peers.record_failure(pid)
            if isinstance(exc, trio.TooSlowError):
                why = f"no answer within {self.config.dial_timeout_s:.0f} s"
            elif type(exc).__name__ == "SwarmDialAllFailedError":
                why = "nothing accepted a connection there (refused or unreachable)"
            else:
                why = f"{type(exc).__name__}: {exc}"
            raise HostError(f"cannot connect to {maddr}: {why}") from None
        self.peers.connected(pid, [str(a) for a in info.addrs], trio.current_time())
        if self._dht is not None:
            try:
                await self._dht.add_peer(info.peer_id)
            except Exception as exc:  # a peer without DHT support is still a peer
                log.debug("routing table refused %s: %s", pid[-8:], exc)
        return pid

    def _peer(self, peer: str) -> Any:
        from libp2p.peer.id import ID  # lazy: libp2p is slow to import (~1 s)
        return ID.from_base58(peer)

    def _drop_closed(self, peer: str) -> None:
        """Forget closed connections to ``peer`` py-libp2p still lists (it would not dial past them)."""
        for conn in self.connections(peer):
            if getattr(conn, "is_closed", False):
                self._host.get_network().remove_conn(conn)

    def is_connected(self, peer: str) -> bool:
        """Whether an open connection to ``peer`` exists (a closed one still listed counts as none)."""
        try:
            return any(not getattr(c, "is_closed", False) for c in self.connections(peer))
        except Exception:
            return False

    async def open_stream(self, peer: str, protocol: str) -> Any:
        """A new libp2p stream to ``peer`` for ``protocol`` (dialing known addresses if needed).

        A stream to ourselves (a node that is also the client of its own route) is an in-memory
        pair served by our RPC server, so callers need no special case."""
        if peer == self.peer_id:
            return await self._loopback(protocol)
        if self.config.fastpath:  # the protocol proposal rides with the first request: no round trip
            from swarmlm.net.transport.multiselect import open_lazy_stream  # lazy: imports libp2p (~1 s)

            return await open_lazy_stream(self._host, self._peer(peer), protocol)
        return await self._host.new_stream(self._peer(peer), [protocol])

    async def _loopback(self, protocol: str) -> Any:
        if protocol not in self.rpc_server.protocols() or self._nursery is None:
            raise HostError(f"no local handler for {protocol}")
        ours, theirs = trio.testing.memory_stream_pair()
        self._nursery.start_soon(self.rpc_server.serve_stream, TrioByteStream(theirs), protocol, self.peer_id)
        return TrioByteStream(ours)

    def connected_peers(self) -> list[str]:
        return [p.to_base58() for p in self._host.get_connected_peers()]

    async def ping(self, peer: str) -> float:
        """One round trip in ms over our echo RPC (py-libp2p's ping has 1 ms resolution)."""
        start = trio.current_time()
        await self.rpc.call(peer, ECHO_PROTOCOL, "echo", None, timeout=5)
        ms = (trio.current_time() - start) * 1000.0
        self.peers.record_rtt(peer, ms, trio.current_time())
        return ms

    async def _ping_loop(self) -> None:
        while True:
            for peer in self.connected_peers():
                try:
                    with trio.fail_after(5):
                        await self.ping(peer)
                except Exception:
                    self.peers.record_failure(peer)
            for info in self.peers.all():
                if info.connected and not self.is_connected(info.peer_id):
                    self.peers.disconnected(info.peer_id)
                    await self.rpc.forget(info.peer_id)
            await trio.sleep(self.config.ping_interval_s)

    # -- discovery -------------------------------------------------------------------------
    async def join(self, bootstrap: list[str]) -> list[str]:
        """Connect to every bootstrap address at once; returns the peer ids reached. Raises one
        HostError naming each failure when none answers (an empty list joins nobody)."""
        reached: list[str] = []
        errors: list[str] = []

        async def one(addr: str) -> None:
            try:
                reached.append(await self.connect(addr))
            except HostError as exc:
                errors.append(str(exc))
        async with trio.open_nursery() as nursery:
            for addr in bootstrap:
                nursery.start_soon(one, addr)
        if bootstrap and not reached:
            raise HostError("cannot reach the bootstrap peer: " + "; ".join(errors)
                            + " (is that node running, and is the address the one it printed?)")
        return reached

    async def _bootstrap_and_discover(self) -> None:
        started, first = trio.current_time(), True
        while True:
            if first or not self.connected_peers():  # retried quietly while this node has no peer
                for addr in self.config.bootstrap:
                    try:
                        await self.connect(addr)
                        log.info("connected to bootstrap %s", addr)
                    except HostError as exc:  # reported once, not at every retry
                        if first:
                            log.warning("%s; retrying while this node has no peers", exc)
                first = False
            t0 = trio.current_time()
            try:
                new = await self.discover()
                log.debug("discovery round: %d new peers in %.1f s", len(new), trio.current_time() - t0)
            except Exception as exc:
                log.debug("discovery round failed: %s", exc)
            # the first minute every 3 s: peers behind NATs become dialable (relay slots) only after joining
            early = self.config.relay and trio.current_time() - started < 60
            interval = min(3.0, self.config.discovery_interval_s) if early else self.config.discovery_interval_s
            await trio.sleep(interval * random.uniform(0.8, 1.2))

    async def discover(self) -> list[str]:
        """One Kademlia lookup of our own id: connect to every peer it finds; returns new peers."""
        from libp2p.peer.id import ID  # lazy: libp2p is slow to import (~1 s)

        found = await self._dht.peer_routing.find_closest_peers_network(ID.from_base58(self.peer_id).to_bytes())
        new = []
        known = set(self.connected_peers())
        for pid in found:
            b58 = pid.to_base58()
            if b58 == self.peer_id or b58 in known:
                continue
            addrs = sorted(self._host.get_peerstore().addrs(pid), key=lambda a: "/p2p-circuit" not in str(a))
            for a in addrs:
                try:
                    await self.connect(f"{a}/p2p/{b58}")
                    new.append(b58)
                    break
                except HostError:
                    continue
        return new

    # -- DHT records -----------------------------------------------------------------------
    async def put_record(self, name: str, value: bytes) -> None:
        """Publish a record we own: /swarmlm/<our id>/<name>, signed, newest wins."""
        self._seq = max(self._seq + 1, int(trio.current_time() * 1000))
        raw = SignedRecord.make(self.identity, name, value, self._seq)
        await self._dht.put_value(record_key(self.peer_id, name), raw)

    async def get_record(self, owner: str, name: str) -> bytes | None:
        raw = await self._dht.get_value(record_key(owner, name))
        if raw is None:
            return None
        try:
            return SignedRecord.verify(record_key(owner, name), raw).value
        except RecordError:
            return None

    async def provide(self, key: str) -> bool:
        return await self._dht.provide(key)

    async def find_providers(self, key: str, count: int = 20) -> list[str]:
        return [p.peer_id.to_base58() for p in await self._dht.find_providers(key, count)]

