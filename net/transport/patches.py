"""Every assignment we make into py-libp2p 0.8.1 objects, and the private upstream API we call.

Each function here changes py-libp2p objects in place; next to it, ``upstream.replaces`` records
the upstream behaviour it replaces (with the hash of its 0.8.1 source) and a comment says why:

* ``install_fast_muxer(host)``: the fast path's installer: the upgrader's muxer and security
  multistreams and every multistream-select client become ours (``multiselect``, ``fastyamux``);
* ``set_agent_version(agent)``: what identify tells other peers;
* ``disable_auto_connect(host)``: py-libp2p's auto-connector off;
* ``tolerate_handler_removal(host)``: a handler removed during a stream's negotiation fails that stream only;
* ``keep_relayed_connections(network)``: a relayed connection may stay next to a direct one;
* ``advertise_extra_addrs(host, extra)``: identify advertises our relay circuit addresses too;
* ``filter_advertised_addrs(host, keep)``: what the host advertises, filtered (``net.addrs``);
* ``KeepRelayDCUtR``: DCUtR that keeps the relayed connection and bounds its plain direct dial.

``build.build_libp2p_host`` applies the first four; ``swarmlm.net.nat`` ``keep_relayed_connections``,
``advertise_extra_addrs`` and ``KeepRelayDCUtR``; ``net/host.py`` ``filter_advertised_addrs``. The end of
the module records the private py-libp2p API that ``net/nat.py`` and ``net/host.py`` call without
patching it, so an upgrade that changes it fails the same test.
"""

from __future__ import annotations

from typing import Any, Callable

import multiaddr
import trio
from libp2p.identity.identify import identify as identify_mod
from libp2p.protocol_muxer.exceptions import MultiselectError
from libp2p.relay.circuit_v2.dcutr import DCUtRProtocol

from swarmlm.net.transport.fastyamux import fast_muxer_option
from swarmlm.net.transport.multiselect import (FastMuxerMultistream, FastSecurityMultistream,
                                               PipelinedMultiselectClient)
from swarmlm.net.transport.upstream import replaces


# py-libp2p 0.8.1 builds the upgrader's SecurityMultistream and MuxerMultistream, and a
# MultiselectClient in the host and in each multistream's selector, in their constructors; we
# swap in ours right after new_host: same wire protocols, fewer round trips (see multiselect).
@replaces("libp2p.transport.upgrader.TransportUpgrader.__init__", "02874fae1dd49f81")
@replaces("libp2p.stream_muxer.muxer_multistream.MuxerMultistream.__init__", "f48c738eefc0e756")
@replaces("libp2p.security.security_multistream.SecurityMultistream.__init__", "909cf16f400db438")
@replaces("libp2p.protocol_muxer.generic_selector.GenericMultistreamSelector.__init__", "388728456dce939a")
@replaces("libp2p.protocol_muxer.generic_selector.GenericMultistreamSelector.select", "acc9c4e6d4de14ce")
@replaces("libp2p.host.basic_host.BasicHost.new_stream", "df9efa1bac504f42")
def install_fast_muxer(host: Any, refuse_streams: Callable[[str], bool] | None = None) -> None:
    """Make ``host`` build ``FastYamux`` connections and pipeline multistream-select (call right
    after ``new_host``); ``refuse_streams(peer_id)``: reset that peer's new streams at their SYN."""
    upgrader = host.get_network().upgrader
    old = upgrader.muxer_multistream
    upgrader.muxer_multistream = FastMuxerMultistream(fast_muxer_option(), old.negotiate_timeout)
    upgrader.muxer_multistream.refuse_streams = refuse_streams
    upgrader.security_multistream = FastSecurityMultistream(upgrader.security_multistream.transports)
    client = PipelinedMultiselectClient()
    host.multiselect_client = client
    upgrader.muxer_multistream._selector.multiselect_client = client
    upgrader.security_multistream._selector.multiselect_client = client


# py-libp2p 0.8.1 Multiselect.negotiate checks that a stream's protocol has a handler, writes its
# answer, then looks the handler up again: a service that removes its handler in between (DCUtR
# at shutdown, while a peer opens a hole-punch stream) makes it raise KeyError, which the host's
# stream handler does not catch, so a node or a CLI command ended on an internal error. The
# failed lookup is a failed negotiation: the host resets that one stream and goes on.
@replaces("libp2p.protocol_muxer.multiselect.Multiselect.negotiate", "e870e3fe41c87e3c")
def tolerate_handler_removal(host: Any) -> None:
    """Make ``host``'s inbound protocol negotiation survive a handler removed while it runs."""
    multiselect = host.multiselect
    negotiate = multiselect.negotiate

    async def _negotiate(communicator: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await negotiate(communicator, *args, **kwargs)
        except KeyError as exc:
            raise MultiselectError(f"the handler of {exc} was removed during negotiation") from None

    multiselect.negotiate = _negotiate


# py-libp2p 0.8.1 identify sends the module global AGENT_VERSION ("py-libp2p/<version>"), read at
# every identify; there is no parameter for it, so we set the global to our agent string.
@replaces("libp2p.identity.identify.identify._mk_identify_protobuf", "5361becff806511c")
def set_agent_version(agent: str) -> None:
    """What identify tells other peers our agent is (process-wide)."""
    identify_mod.AGENT_VERSION = agent


# py-libp2p 0.8.1's auto-connector redials every address in the peerstore (stale ones of departed
# peers included) to reach a connection target of ~150; our discovery loop decides whom to connect
# to, so its maybe_connect becomes a no-op on this host.
@replaces("libp2p.network.auto_connector.AutoConnector.maybe_connect", "018fac95eafc2413")
def disable_auto_connect(host: Any) -> None:
    """Switch py-libp2p's auto-connector off for ``host``."""
    network = host.get_network()
    if hasattr(network, "auto_connector"):
        async def _no_auto_connect() -> None:
            return None

        network.auto_connector.maybe_connect = _no_auto_connect


# py-libp2p 0.8.1 Swarm._trim_connections trims a peer to max_connections_per_peer (we keep 1: it
# skips the 250 ms happy-eyeballs wait on every dial), typically closing the relayed fallback when
# DCUtR's simultaneous open briefly yields two direct connections.
@replaces("libp2p.network.swarm.Swarm._trim_connections", "bbc40f6542d22196")
def keep_relayed_connections(network: Any, allow: int = 4) -> None:
    """Let a peer keep a relayed connection next to the direct one(s): trim only beyond ``allow``."""
    original = network._trim_connections

    def trim(peer_id: Any) -> None:
        if len(network.connections.get(peer_id, [])) > allow:
            original(peer_id)

    network._trim_connections = trim


# py-libp2p 0.8.1 BasicHost.get_addrs is what identify advertises (listen and observed addresses);
# an addrs_factory would cut everything after a relay's /p2p/, so the method itself is wrapped.
@replaces("libp2p.host.basic_host.BasicHost.get_addrs", "9d79f88eb0d4824b")
@replaces("libp2p.identity.identify.identify._mk_identify_protobuf", "5361becff806511c")
def advertise_extra_addrs(host: Any, extra: Callable[[], list[str]]) -> None:
    """Make ``host`` advertise ``extra()`` (relay circuit addresses, without our /p2p/) as well."""
    plain_get_addrs = host.get_addrs

    def get_addrs() -> list:  # what identify advertises: ours plus our relay addresses
        mine = f"/p2p/{host.get_id()}"
        return list(plain_get_addrs()) + [multiaddr.Multiaddr(a + mine) for a in extra()]

    host.get_addrs = get_addrs


# py-libp2p 0.8.1 BasicHost.get_addrs passes its candidates (listen, announce and observed addresses)
# through ``_addrs_factory``; it advertises an unspecified listen address (0.0.0.0) as it is.
@replaces("libp2p.host.basic_host.BasicHost.__init__", "6a81506e92fbd211")
def filter_advertised_addrs(host: Any, keep: Callable[[list[str]], list[str]]) -> None:
    """Make ``host`` advertise ``keep(addresses)`` (as strings, without our /p2p/) instead of its
    candidate addresses; any factory already set (``announce_addrs``) runs first."""
    inner = getattr(host, "_addrs_factory", None)

    def factory(candidates: list) -> list:
        addrs = list(inner(candidates)) if inner is not None else list(candidates)
        return [multiaddr.Multiaddr(a) for a in keep([str(a) for a in addrs])]

    host._addrs_factory = factory


class KeepRelayDCUtR(DCUtRProtocol):
    """py-libp2p 0.8.1's DCUtR, keeping the relayed connection as the fallback after a punch."""

    # py-libp2p 0.8.1 closes the relayed connection 60 s after a successful punch
    @replaces("libp2p.relay.circuit_v2.dcutr.DCUtRProtocol._schedule_relay_close", "77e45deb1be40a8f")
    def _schedule_relay_close(self, peer_id: Any) -> None:  # keep the relayed fallback
        return None

    # py-libp2p 0.8.1 first dials the peer's addresses directly, waiting out the full dial timeout
    # on addresses behind a NAT (5 s before every punch); a reachable address answers within 1 s
    @replaces("libp2p.relay.circuit_v2.dcutr.DCUtRProtocol._try_unilateral_upgrade", "093ad0e04435dd57")
    @replaces("libp2p.relay.circuit_v2.dcutr.DCUtRProtocol._verify_direct_connection", "27fcf95158cf24dc")
    async def _try_unilateral_upgrade(self, peer_id: Any) -> bool:
        with trio.move_on_after(1.0):
            return await super()._try_unilateral_upgrade(peer_id)
        return await self._verify_direct_connection(peer_id)


# Private py-libp2p 0.8.1 API called (not patched) by net/nat.py: serving a hop stream, making a
# reservation and reading its expiry, pushing identify after our addresses change; and by
# net/host.py and net/nat.py: the observed-address manager (our addresses as peers see them).
replaces("libp2p.relay.circuit_v2.protocol.CircuitV2Protocol._handle_hop_stream", "a28ce9cea8920661")
replaces("libp2p.relay.circuit_v2.transport.CircuitV2Transport._make_reservation", "98917af1085e0c5c")
replaces("libp2p.relay.circuit_v2.transport.CircuitV2Transport.__init__", "f1ec2ac4db379c6a")
replaces("libp2p.host.basic_host.BasicHost._push_identify_to_all_peers", "b646c752b6ee52d4")
replaces("libp2p.host.observed_addr_manager.ObservedAddrManager.addrs", "ee68b725d076db69")
