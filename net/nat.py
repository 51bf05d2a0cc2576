"""NAT traversal for ``SwarmHost``: circuit relay v2 (serve / reserve / dial) and DCUtR hole punching.

``NatManager`` wires py-libp2p 0.8.1's own pieces (``CircuitV2Protocol``, ``CircuitV2Transport``,
``DCUtRProtocol``) into our host, with the product rules on top (docs/NAT.md, "Product behaviour"):

* **Serve** (hop) only while our reachability verdict is PUBLIC (or ``relay_serve="always"``), with
  limits (``RelayLimits``: reservations, circuits, per-circuit duration and bytes). Every circuit and
  reservation is logged on the relay.
* **Reserve** (``relay_reserve``: nodes) while not PUBLIC: on up to ``relay_reservations`` peers speaking the hop
  protocol; advertise ``<relay addr>/p2p-circuit`` (through identify's address list and the swarm
  state's ``addrs``), renew at half the reservation's lifetime, replace lost relays.
* **Dial** ``/p2p-circuit`` addresses (py-libp2p's swarm skips them) and, after a relayed connection,
  run DCUtR (timeout, one retry) to get a direct connection. The relayed connection stays as the
  fallback (py-libp2p would close it after 60 s); new streams prefer the direct one, and pooled RPC
  streams are dropped so the next call moves to it.

The changes this needs inside py-libp2p (per-peer connection trimming, advertised addresses, DCUtR's
relay close) are in ``swarmlm.net.transport.patches``. py-libp2p is imported inside the methods that
need it (a running host), so importing this module stays cheap.
"""

from __future__ import annotations

import logging
import time
from contextlib import AsyncExitStack
from typing import Any

import multiaddr
import trio

from swarmlm.net.notifee import QuietNotifee

log = logging.getLogger("swarmlm.nat")

HOP_PROTOCOL = "/libp2p/circuit/relay/0.2.0/hop"


def is_relayed(conn: Any) -> bool:
    try:
        return any("/p2p-circuit" in str(a) for a in conn.get_transport_addresses())
    except Exception:
        return False


class DirectNotifee(QuietNotifee):
    """Swarm notifee: logs relayed connections (open, and how long they lived); when a direct
    connection joins a relayed one, pooled RPC streams (opened on the relay) are dropped so the next
    call uses the direct connection."""

    def __init__(self, swarm: Any) -> None:
        self.swarm = swarm
        self._opened: dict[int, float] = {}

    async def connected(self, network: Any, conn: Any) -> None:
        peer = conn.muxed_conn.peer_id.to_base58()
        if is_relayed(conn):
            self._opened[id(conn)] = time.monotonic()
            log.info("relayed connection with %s opened (relay limits apply: time and bytes)", peer[-8:])
        elif self.swarm._nursery is not None and any(is_relayed(c) for c in self.swarm.connections(peer)):
            self.swarm._nursery.start_soon(self.swarm.rpc.forget, peer)

    async def disconnected(self, network: Any, conn: Any) -> None:
        opened = self._opened.pop(id(conn), None)
        if opened is not None:
            log.info("relayed connection with %s closed after %.0f s", conn.muxed_conn.peer_id.to_base58()[-8:],
                     time.monotonic() - opened)


class NatManager:
    """Relay + DCUtR for one running libp2p host (see the module docstring)."""

    def __init__(self, swarm: Any) -> None:
        self.swarm = swarm  # our SwarmHost
        cfg = swarm.config
        self.cfg = cfg
        self.serving = False
        self.reservations: dict[str, tuple[str, float]] = {}  # relay peer -> (circuit addr, expiry wall time)
        self._renew_at: dict[str, float] = {}  # relay peer -> wall time to renew (halfway to expiry)
        self._relay_failed: dict[str, float] = {}
        self.circuits_served = 0
        self.relayed_dials = 0
        self.punches = {"ok": 0, "failed": 0}
        self._host: Any = None
        self._protocol: Any = None
        self._transport: Any = None
        self._dcutr: Any = None
        self._nursery: Any = None
        self._punching: set[str] = set()

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self, host: Any, stack: AsyncExitStack, nursery: Any) -> None:
        from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole  # lazy: libp2p is slow to import (~1 s)
        from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol  # lazy: libp2p, as above
        from libp2p.relay.circuit_v2.resources import RelayLimits  # lazy: libp2p, as above
        from libp2p.relay.circuit_v2.transport import CircuitV2Transport  # lazy: libp2p, as above
        from libp2p.tools.anyio_service import background_trio_service  # lazy: libp2p, as above

        from swarmlm.net.transport import patches  # lazy: imports libp2p (~1 s)

        self._host, self._nursery = host, nursery
        patches.keep_relayed_connections(host.get_network())
        cfg = self.cfg
        limits = RelayLimits(duration=int(cfg.relay_max_duration_s), data=int(cfg.relay_max_bytes),
                             max_circuit_conns=cfg.relay_max_circuits, max_reservations=cfg.relay_max_reservations,
                             reservation_ttl=int(cfg.relay_reservation_ttl_s))
        if cfg.relay:
            self._protocol = CircuitV2Protocol(host, limits=limits, allow_hop=False)
            await stack.enter_async_context(background_trio_service(self._protocol))
            self._transport = CircuitV2Transport(host, self._protocol, RelayConfig(roles=RelayRole.STOP, limits=limits))
            patches.advertise_extra_addrs(host, self.circuit_addrs)  # identify advertises our relay addresses too
            if cfg.relay_serve == "always":
                self.set_serving(True)
            nursery.start_soon(self._reserve_loop)
        if cfg.hole_punch:  # DCUtR keeping the relayed fallback, with a short plain direct dial first
            self._dcutr = patches.KeepRelayDCUtR(host, dial_timeout=5)
            await stack.enter_async_context(background_trio_service(self._dcutr))

    # -- serving ---------------------------------------------------------------------------------
    def on_verdict(self, verdict: str) -> None:
        if self.cfg.relay and self.cfg.relay_serve == "auto" and self._protocol is not None:
            self.set_serving(verdict == "public")

    def set_serving(self, on: bool) -> None:
        if on == self.serving or self._host is None:
            return
        self.serving = on
        if on:
            self._host.set_stream_handler(HOP_PROTOCOL, self._handle_hop)
            log.warning("serving circuit relay v2 (limits: %d reservations, %d circuits, %d s, %d MiB per circuit)",
                        self.cfg.relay_max_reservations, self.cfg.relay_max_circuits,
                        self.cfg.relay_max_duration_s, self.cfg.relay_max_bytes >> 20)
        else:
            try:
                self._host.remove_stream_handler(HOP_PROTOCOL)
            except Exception:
                pass
            log.warning("stopped serving circuit relay")
        self._push_identify()

    async def _handle_hop(self, stream: Any) -> None:
        if not self.serving:
            await stream.reset()
            return
        peer = stream.muxed_conn.peer_id.to_base58()
        self.circuits_served += 1
        log.info("relay: hop request from %s (%d so far)", peer[-8:], self.circuits_served)
        await self._protocol._handle_hop_stream(stream)

    def _push_identify(self) -> None:
        push = getattr(self._host, "_push_identify_to_all_peers", None)
        if push is not None and self._nursery is not None:
            self._nursery.start_soon(push)

    # -- reserving -------------------------------------------------------------------------------
    def circuit_addrs(self) -> list[str]:
        return [a for a, _ in self.reservations.values()]

    def _hop_peers(self) -> list[str]:
        from libp2p.peer.id import ID  # lazy: libp2p is slow to import (~1 s)

        store = self._host.get_peerstore()
        out = []
        for pid in self.swarm.connected_peers():
            try:
                protos = store.get_protocols(ID.from_base58(pid))
            except Exception:
                continue
            if HOP_PROTOCOL in (protos or []):
                out.append(pid)
        return out

    def _relay_addr(self, relay: str) -> str | None:
        """The relay's direct address as we reach it (the remote address of our connection to it)."""
        for conn in self.swarm.connections(relay):
            if is_relayed(conn):
                continue
            for a in conn.get_transport_addresses():
                s = str(a)
                if "/tcp/" in s:
                    return s.split("/p2p/")[0] + f"/p2p/{relay}/p2p-circuit"
        return None

    async def reserve(self, relay: str) -> bool:
        """Reserve a slot on ``relay`` (renews an existing one). True on success."""
        from libp2p.peer.id import ID  # lazy: libp2p is slow to import (~1 s)

        addr = self._relay_addr(relay)
        if addr is None:
            return False
        rid = ID.from_base58(relay)
        try:
            with trio.fail_after(10):
                stream = await self._host.new_stream(rid, [HOP_PROTOCOL])
                try:
                    ok = await self._transport._make_reservation(stream, rid)
                finally:
                    await stream.close()
        except Exception as exc:
            log.debug("reservation on %s failed: %s", relay[-8:], exc)
            ok = False
        if not ok:
            self._relay_failed[relay] = time.time()
            return False
        expiry = float(self._transport._reservations.get(rid) or time.time() + 60)
        new = relay not in self.reservations
        self.reservations[relay] = (addr, expiry)
        self._renew_at[relay] = time.time() + max(1.0, (expiry - time.time()) / 2)
        if new:
            log.warning("reserved a relay slot: reachable at %s/p2p/%s", addr, self.swarm.peer_id)
            self._push_identify()
        return True

    async def _reserve_loop(self) -> None:
        while True:
            now = time.time()
            for relay in list(self.reservations):
                gone = not self.swarm.is_connected(relay)
                if gone or now >= self._renew_at.get(relay, 0.0):  # renew halfway through the lifetime
                    if gone or not await self.reserve(relay):
                        log.warning("lost relay %s", relay[-8:])
                        self.reservations.pop(relay, None)
                        self._push_identify()
                    else:
                        log.debug("renewed the slot on relay %s until %.0f", relay[-8:], self.reservations[relay][1])
            want = 0 if self.swarm.reachability == "public" or not self.cfg.relay_reserve else self.cfg.relay_reservations
            if len(self.reservations) < want:
                for relay in self._hop_peers():
                    if relay in self.reservations or now - self._relay_failed.get(relay, -1e18) < 60:
                        continue
                    await self.reserve(relay)
                    if len(self.reservations) >= want:
                        break
            elif want == 0 and self.reservations:
                self.reservations.clear()  # public now: they expire on the relay by themselves
                self._push_identify()
            nxt = min(self._renew_at.values(), default=now + 5.0) - time.time()
            await trio.sleep(0.5 if len(self.reservations) < want else max(0.2, min(5.0, nxt)))

    # -- dialing and punching --------------------------------------------------------------------
    async def dial_relayed(self, maddr: str, peer: str) -> None:
        """Connect to ``peer`` through the relay named in ``maddr`` (…/p2p/R/p2p-circuit/p2p/peer)."""
        if self._transport is None:
            raise ConnectionError("relay support is off")
        await self._transport.dial(multiaddr.Multiaddr(maddr))
        self.relayed_dials += 1
        log.info("connected to %s through relay %s", peer[-8:], maddr.split("/p2p-circuit")[0])
        self.punch_soon(peer)

    def punch_soon(self, peer: str) -> None:
        if self._dcutr is not None and self._nursery is not None and peer not in self._punching:
            self._punching.add(peer)
            self._nursery.start_soon(self._punch, peer)

    def _observed(self) -> list[str]:
        manager = getattr(self._host, "_observed_addr_manager", None)
        try:
            return [str(a) for a in manager.addrs(min_observers=1) if "/p2p-circuit" not in str(a)]
        except Exception:
            return []

    def has_direct(self, peer: str) -> bool:
        return any(not is_relayed(c) for c in self.swarm.connections(peer))

    async def _punch(self, peer: str, attempts: int = 2, timeout_s: float = 6.0) -> bool:
        """DCUtR with a timeout, retried once; True when a direct connection exists at the end."""
        from libp2p.peer.id import ID  # lazy: libp2p is slow to import (~1 s)

        try:
            t0 = trio.current_time()
            # DCUtR tells the peer our *observed* address (identify from the relay); right after joining
            # it may not be known yet, and the peer would dial our private address: wait a moment
            with trio.move_on_after(3.0):
                while not self._observed():
                    await trio.sleep(0.05)
            log.debug("punching %s; our observed addresses: %s", peer[-8:], self._observed())
            for _ in range(attempts):
                if self.has_direct(peer):
                    break
                with trio.move_on_after(timeout_s):
                    try:
                        await self._dcutr.initiate_hole_punch(ID.from_base58(peer))
                    except Exception as exc:
                        log.debug("DCUtR with %s: %s", peer[-8:], exc)
                    # the peer's own attempt may win ("in progress" -> False): look at the connections
                    for _ in range(20):
                        if self.has_direct(peer):
                            break
                        await trio.sleep(0.1)
            ok = self.has_direct(peer)
            self.punches["ok" if ok else "failed"] += 1
            if ok:
                log.info("direct connection to %s after %.2f s (relayed one kept as fallback)", peer[-8:],
                         trio.current_time() - t0)
                await self.swarm.rpc.forget(peer)  # pooled RPC streams ride the relay: move to direct
            else:
                log.info("hole punch to %s failed; traffic stays on the relay", peer[-8:])
            return ok
        finally:
            self._punching.discard(peer)

    def summary(self) -> dict:
        return {"serving_relay": self.serving, "reservations": self.circuit_addrs(),
                "circuits_served": self.circuits_served, "relayed_dials": self.relayed_dials,
                "punches": dict(self.punches)}
