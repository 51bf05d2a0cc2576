"""Building a py-libp2p 0.8.1 host: the one a ``SwarmHost`` runs, and dial-back's throwaway ones.

``build_libp2p_host(identity, listen, ...)`` returns the host and its parsed listen addresses.
Security: ``sec_opt`` names Noise alone, so a peer offering only plaintext (or secio, or TLS) fails
the handshake; Yamux is the only muxer. Connection set-up: ``max_connections_per_peer=1`` skips
py-libp2p's 250 ms happy-eyeballs wait. With ``fastpath`` (the default) the Noise session, Yamux
and multistream-select are ours (``fastnoise``, ``fastyamux``, ``multiselect``: same wire
protocols, several times faster); identify reports our agent version and py-libp2p's
auto-connector is off (``patches``).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import multiaddr
from libp2p import create_yamux_muxer_option, new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as new_x25519
from libp2p.network.config import ConnectionConfig
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_ID
from libp2p.security.noise.transport import Transport as NoiseTransport

from swarmlm.version import AGENT_VERSION
from swarmlm.crypto.identity import Identity
from swarmlm.errors import SwarmError
from swarmlm.net.inbound import InboundAdmission, InboundLimits
from swarmlm.net.transport.fastnoise import FastNoiseTransport
from swarmlm.net.transport.fastyamux import fast_muxer_option
from swarmlm.net.transport.inbound_gate import install_inbound_gate
from swarmlm.net.transport.patches import (disable_auto_connect, install_fast_muxer, set_agent_version,
                                          tolerate_handler_removal)


class AddressError(SwarmError):
    """A listen or announce address that does not parse."""


def _libp2p_key_pair(identity: Identity) -> Any:
    """Our Ed25519 identity as a py-libp2p key pair (same peer id)."""
    return create_new_key_pair(identity.seed)


def build_libp2p_host(identity: Identity, listen: Sequence[str], *, announce: Sequence[str] = (),
                      quic: bool = False, mdns: bool = False, dial_timeout_s: float = 10.0,
                      fastpath: bool = True, inbound: InboundLimits | None = None,
                      trusted: Callable[[str], bool] = lambda peer: False,
                      refused: Callable[[str], bool] | None = None) -> tuple[Any, list[Any]]:
    """A py-libp2p host with Noise as the only security transport and Yamux as the only muxer,
    and its listen multiaddrs (``quic`` adds a QUIC address beside each TCP one). ``inbound``:
    bound inbound connections per IP prefix and in total (``net.inbound``; ``trusted(peer)``: peers
    with standing, never counted); ``refused(peer)``: peers whose new streams are reset at once
    (fast path only). Raises AddressError."""
    set_agent_version(AGENT_VERSION)  # what identify tells other peers
    key_pair = _libp2p_key_pair(identity)
    noise_cls, muxer_opt = NoiseTransport, create_yamux_muxer_option()
    if fastpath:  # same /noise and /yamux/1.0.0 on the wire, several times faster
        noise_cls, muxer_opt = FastNoiseTransport, fast_muxer_option()
    sec = {NOISE_ID: noise_cls(key_pair, noise_privkey=new_x25519().private_key)}
    listen_strs = list(listen)
    if quic and not any("/quic" in a for a in listen_strs):  # experimental: QUIC beside each TCP address
        listen_strs += [a.replace("/tcp/", "/udp/") + "/quic-v1" for a in listen if "/tcp/" in a]
    try:
        listen_addrs = [multiaddr.Multiaddr(a) for a in listen_strs]
        announce_addrs = [multiaddr.Multiaddr(a) for a in announce] or None
    except Exception as exc:
        raise AddressError(f"bad listen/announce address: {exc}") from None
    host = new_host(
        key_pair=key_pair,
        sec_opt=sec,
        muxer_opt=muxer_opt,
        listen_addrs=listen_addrs,
        enable_quic=quic,
        enable_mDNS=mdns,
        connection_config=ConnectionConfig(max_connections_per_peer=1, dial_timeout=dial_timeout_s),
        announce_addrs=announce_addrs,
    )
    if fastpath:
        install_fast_muxer(host, refused)
    disable_auto_connect(host)  # our discovery loop decides whom to connect to
    tolerate_handler_removal(host)  # a service stopping mid-negotiation fails one stream, not the host
    if inbound is not None:
        install_inbound_gate(host, InboundAdmission(inbound), trusted)
    return host, listen_addrs
