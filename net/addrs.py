"""The addresses a host advertises (identify, the swarm state, the ready file): dialable ones only.

A host listening on ``/ip4/0.0.0.0/tcp/N`` (the default) accepts connections on every interface, but
``0.0.0.0`` is not an address anyone can dial: advertised as is, it made peers store it and retry it
("Failed to open TCP stream ... 0.0.0.0:N"). ``advertised`` replaces an unspecified address by the
host's interface addresses (``local_ips``) with the same port, and drops what nobody else can use:
unspecified and link-local addresses. ``local_ips`` reads the interfaces with psutil.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Iterable

import psutil

UNSPECIFIED = {"ip4": "0.0.0.0", "ip6": "::"}


def local_ips() -> dict[str, list[str]]:
    """This machine's interface addresses by multiaddr protocol ("ip4", "ip6"), loopback last."""
    out: dict[str, list[str]] = {"ip4": [], "ip6": []}
    try:
        interfaces = psutil.net_if_addrs()
    except (OSError, RuntimeError):  # no /proc (sandboxes): loopback is all we can be sure of
        return {"ip4": ["127.0.0.1"], "ip6": []}
    for addrs in interfaces.values():
        for a in addrs:
            proto = "ip4" if a.family == socket.AF_INET else "ip6" if a.family == socket.AF_INET6 else None
            if proto is None:
                continue
            ip = a.address.split("%", 1)[0]
            try:
                parsed = ipaddress.ip_address(ip)
            except ValueError:
                continue
            if parsed.is_link_local or parsed.is_unspecified or parsed.is_multicast:
                continue
            out[proto].append(ip)
    for proto, ips in out.items():
        out[proto] = sorted(set(ips), key=lambda ip: (ipaddress.ip_address(ip).is_loopback, ip))
    return out


def _parts(addr: str) -> list[str]:
    return addr.split("/")


def is_dialable(addr: str) -> bool:
    """False for an unspecified (0.0.0.0, ::) or link-local IP address; True otherwise."""
    parts = _parts(addr)
    if len(parts) < 3 or parts[1] not in UNSPECIFIED:
        return True
    try:
        ip = ipaddress.ip_address(parts[2].split("%", 1)[0])
    except ValueError:
        return False
    return not (ip.is_unspecified or ip.is_link_local)


def advertised(addrs: Iterable[str], ips: dict[str, list[str]] | None = None) -> list[str]:
    """``addrs`` with every unspecified IP replaced by the interface addresses ``ips`` (default:
    ``local_ips()``), undialable ones dropped, duplicates removed (order kept)."""
    out: list[str] = []
    for addr in addrs:
        parts = _parts(addr)
        if len(parts) > 2 and parts[1] in UNSPECIFIED and parts[2] == UNSPECIFIED[parts[1]]:
            ips = local_ips() if ips is None else ips
            out += ["/".join(parts[:2] + [ip] + parts[3:]) for ip in ips.get(parts[1], [])]
        elif is_dialable(addr):
            out.append(addr)
    return list(dict.fromkeys(out))


def best_for_sharing(addrs: Iterable[str]) -> str | None:
    """The address to hand to others as ``--bootstrap``: a direct one, not loopback when there is a
    choice (the first of ``addrs`` otherwise), None without any."""
    addrs = list(addrs)
    direct = [a for a in addrs if "/p2p-circuit" not in a and is_dialable(a)]
    for a in direct:
        parts = _parts(a)
        try:
            if not ipaddress.ip_address(parts[2]).is_loopback:
                return a
        except (ValueError, IndexError):
            return a  # a DNS name
    return direct[0] if direct else (addrs[0] if addrs else None)
