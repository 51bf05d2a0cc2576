"""Admission of inbound connections, I/O-free: what a node accepts before it pays for a handshake.

Accepting a TCP connection costs a socket; the Noise handshake, the Yamux session and identify that
follow cost CPU, and an identity is free, so a node bounds them per IP prefix and in total (the
glue that applies this to py-libp2p's listener is ``net/transport/inbound_gate.py``):

* **rate**: new inbound connections per prefix, a token bucket (``rate_per_prefix``, ``burst``);
* **handshakes in flight**: at most ``handshakes_per_prefix`` per prefix and ``handshakes_total``
  in all; a connection beyond them *waits* (socket open, no CPU spent) for a slot, at most
  ``waiting_per_prefix`` per prefix, ``unestablished_total`` in flight and waiting together, and
  ``wait_s`` each; beyond any of these it is closed before the handshake;
* **established without standing**: inbound connections of peers without standing, at most
  ``untrusted_per_prefix`` per prefix and ``untrusted_total`` in all (py-libp2p refuses every
  connection past 300, ours outbound included, so newcomers never fill the table). Peers with
  standing (``trusted``) are never counted or refused, and nothing established is ever evicted for
  a newcomer: over a limit, the *newcomer* is closed.

The prefix of an address is its /24 (IPv4) or /56 (IPv6); every loopback address is one prefix
("loopback"), as all processes of one host are. Refusals are counted per prefix and reported in
operator-readable lines at most once per prefix per ``log_interval_s`` (``refusal_note``).
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass, field

from swarmlm.net.limits import RateTable

NO_ADDRESS = "no-address"  # connections whose remote IP is unknown (e.g. relayed) share one group


@dataclass
class InboundLimits:
    rate_per_prefix: float = 4.0  # new inbound connections per second per prefix ...
    burst: float = 48.0  # ... after a burst (an honest testnet of ~20 processes on one host joins at once)
    handshakes_per_prefix: int = 8  # in flight at once per prefix; more wait for a slot
    handshakes_total: int = 32  # in flight at once in all
    waiting_per_prefix: int = 64  # accepted sockets waiting for a handshake slot, per prefix
    unestablished_total: int = 256  # in flight and waiting, all prefixes together
    wait_s: float = 10.0  # a connection that waits longer for a slot is closed
    untrusted_per_prefix: int = 32  # established inbound connections of peers without standing
    untrusted_total: int = 192  # ... in all (py-libp2p's own cap is 300 connections, ours included)
    log_interval_s: float = 60.0

    def validate(self) -> None:
        for name in ("handshakes_per_prefix", "handshakes_total", "untrusted_per_prefix", "untrusted_total"):
            if getattr(self, name) < 1:
                raise ValueError(f"inbound limit {name} must be >= 1, got {getattr(self, name)}")
        for name in ("rate_per_prefix", "wait_s", "log_interval_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"inbound limit {name} must be > 0, got {getattr(self, name)}")
        if self.burst < 1 or self.waiting_per_prefix < 0 or self.unestablished_total < self.handshakes_total:
            raise ValueError("inbound limits: burst >= 1, waiting_per_prefix >= 0 and "
                             "unestablished_total >= handshakes_total")


def connection_prefix(ip: str | None) -> str:
    """The group an inbound connection's address counts in: its /24 or /56, "loopback" for every
    loopback address, ``NO_ADDRESS`` when unknown; text that is not an IP is its own group."""
    if not ip:
        return NO_ADDRESS
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if addr.is_loopback:
        return "loopback"
    bits = 24 if addr.version == 4 else 56
    return str(ipaddress.ip_network(f"{addr}/{bits}", strict=False))


@dataclass
class Ticket:
    """One inbound connection from arrival to close."""

    prefix: str
    state: str = "waiting"  # waiting | handshake | untrusted | trusted | gone
    peer: str = ""


@dataclass
class _Refusals:
    counts: dict[str, int] = field(default_factory=dict)
    last_note: float | None = None


class InboundAdmission:
    """The counters and decisions; the caller owns the sockets and the clock."""

    def __init__(self, limits: InboundLimits | None = None, max_prefixes: int = 4096) -> None:
        self.limits = limits or InboundLimits()
        self.limits.validate()
        self._rates = RateTable(self.limits.rate_per_prefix, self.limits.burst, max_keys=max_prefixes)
        self.in_flight: dict[str, int] = {}
        self.waiting: dict[str, int] = {}
        self.untrusted: dict[str, int] = {}
        self.in_flight_total = self.waiting_total = self.untrusted_total = 0
        self.refused_total: dict[str, int] = {}  # reason -> count, since start (metrics, tests)
        self._refusals: OrderedDict[str, _Refusals] = OrderedDict()
        self._max_prefixes = max_prefixes

    # -- decisions ------------------------------------------------------------------------------
    def arrive(self, ip: str | None, now: float) -> Ticket | str:
        """A new inbound connection: a ``Ticket`` (``state`` "handshake": go ahead; "waiting": wait
        for ``try_start``), or the reason it must be closed now (before any handshake)."""
        prefix = connection_prefix(ip)
        lim = self.limits
        if self.in_flight_total + self.waiting_total >= lim.unestablished_total:
            return self._refuse(prefix, "unestablished", now)
        if not self._rates.try_take(prefix, 1.0, now):
            return self._refuse(prefix, "rate", now)
        ticket = Ticket(prefix)
        if self._slot_free(prefix):
            self._start(ticket)
        elif self.waiting.get(prefix, 0) >= lim.waiting_per_prefix:
            return self._refuse(prefix, "queue_full", now)
        else:
            self.waiting[prefix] = self.waiting.get(prefix, 0) + 1
            self.waiting_total += 1
        return ticket

    def try_start(self, ticket: Ticket) -> bool:
        """For a waiting ticket: take a handshake slot if one is free now."""
        if ticket.state == "handshake":
            return True
        if ticket.state != "waiting" or not self._slot_free(ticket.prefix):
            return False
        self._unwait(ticket)
        self._start(ticket)
        return True

    def handshake_done(self, ticket: Ticket, peer: str, trusted: bool, now: float) -> str | None:
        """The handshake succeeded (``peer`` is authenticated): None to keep the connection, or the
        reason to close it (a peer without standing over the established limits)."""
        self._end_handshake(ticket)
        ticket.peer = peer
        if trusted:
            ticket.state = "trusted"
            return None
        lim = self.limits
        if self.untrusted.get(ticket.prefix, 0) >= lim.untrusted_per_prefix or self.untrusted_total >= lim.untrusted_total:
            ticket.state = "gone"
            self._refuse(ticket.prefix, "untrusted", now)
            return "untrusted"
        ticket.state = "untrusted"
        self.untrusted[ticket.prefix] = self.untrusted.get(ticket.prefix, 0) + 1
        self.untrusted_total += 1
        return None

    def close(self, ticket: Ticket, now: float | None = None, reason: str = "") -> None:
        """The connection is gone, at any stage (a wait that timed out: ``reason`` "wait_timeout"
        counts as a refusal). Idempotent."""
        if ticket.state == "waiting":
            self._unwait(ticket)
            if reason and now is not None:
                self._refuse(ticket.prefix, reason, now)
        elif ticket.state == "handshake":
            self._end_handshake(ticket)
        elif ticket.state == "untrusted":
            self._dec(self.untrusted, ticket.prefix)
            self.untrusted_total -= 1
        ticket.state = "gone"

    # -- operator notes ---------------------------------------------------------------------------
    def refusal_note(self, prefix: str, now: float) -> str | None:
        """A line for the log about ``prefix``'s refusals, at most once per ``log_interval_s`` (the
        first refusal is reported at once; later ones are summed into the next line)."""
        rec = self._refusals.get(prefix)
        if rec is None or not rec.counts:
            return None
        if rec.last_note is not None and now - rec.last_note < self.limits.log_interval_s:
            return None
        since = "" if rec.last_note is None else f" in the last {now - rec.last_note:.0f} s"
        rec.last_note = now
        what = ", ".join(f"{n} {_WHY[r]}" for r, n in sorted(rec.counts.items()))
        rec.counts.clear()
        lim = self.limits
        return (f"inbound connections from {prefix} refused{since}: {what} (limits per prefix: "
                f"{lim.rate_per_prefix:g}/s after a burst of {lim.burst:g}, {lim.handshakes_per_prefix} "
                f"handshakes at once, {lim.untrusted_per_prefix} peers without standing)")

    # -- internals --------------------------------------------------------------------------------
    def _slot_free(self, prefix: str) -> bool:
        return (self.in_flight.get(prefix, 0) < self.limits.handshakes_per_prefix
                and self.in_flight_total < self.limits.handshakes_total)

    def _start(self, ticket: Ticket) -> None:
        ticket.state = "handshake"
        self.in_flight[ticket.prefix] = self.in_flight.get(ticket.prefix, 0) + 1
        self.in_flight_total += 1

    def _end_handshake(self, ticket: Ticket) -> None:
        if ticket.state == "handshake":
            self._dec(self.in_flight, ticket.prefix)
            self.in_flight_total -= 1
            ticket.state = "gone"

    def _unwait(self, ticket: Ticket) -> None:
        self._dec(self.waiting, ticket.prefix)
        self.waiting_total -= 1
        ticket.state = "gone"

    @staticmethod
    def _dec(table: dict[str, int], key: str) -> None:
        left = table.get(key, 0) - 1
        if left > 0:
            table[key] = left
        else:
            table.pop(key, None)

    def _refuse(self, prefix: str, reason: str, now: float) -> str:
        self.refused_total[reason] = self.refused_total.get(reason, 0) + 1
        rec = self._refusals.get(prefix)
        if rec is None:
            rec = self._refusals[prefix] = _Refusals()
            while len(self._refusals) > self._max_prefixes:
                self._refusals.popitem(last=False)
        else:
            self._refusals.move_to_end(prefix)
        rec.counts[reason] = rec.counts.get(reason, 0) + 1
        return reason


_WHY = {
    "rate": "over the connection rate",
    "queue_full": "with the handshake queue full",
    "unestablished": "with too many connections handshaking in all",
    "wait_timeout": "that waited too long for a handshake",
    "untrusted": "of peers without standing over the limit",
}
