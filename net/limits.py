"""Resource accounting a node applies to its peers, I/O-free: token buckets, byte budgets, penalties.

Every resource a peer can make a node hold is bounded twice: per peer and in total (the RPC
server's streams, calls and buffered bytes in ``net/rpc_server.py``; the swarm state's pending
updates and new owners in ``net/state``). These are the small, clock-injected pieces they use:

* ``TokenBucket`` -- a rate with a burst (``take(n, now)`` says how long to wait for ``n``);
* ``RateTable`` -- one bucket per key (peer, IP prefix), bounded in how many keys it remembers;
* ``ByteBudget`` -- bytes held per key and in total, with a share of the total reserved for
  trusted keys, so that a flood of untrusted peers cannot starve established ones;
* ``Penalties`` -- strikes per peer; enough strikes within a window refuse the peer for a while
  (the node keeps serving everyone else).
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class TokenBucket:
    rate: float  # tokens per second
    burst: float
    tokens: float = -1.0
    last: float | None = None

    def _refill(self, now: float) -> None:
        if self.tokens < 0:
            self.tokens = self.burst
        if self.last is not None and now > self.last:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now if self.last is None else max(self.last, now)

    def try_take(self, n: float, now: float) -> bool:
        self._refill(now)
        if self.tokens >= n:
            self.tokens -= n
            return True
        return False

    def take(self, n: float, now: float) -> float:
        """Take ``n`` tokens (the balance may go negative); the seconds to wait before proceeding."""
        self._refill(now)
        self.tokens -= n
        return 0.0 if self.tokens >= 0 or self.rate <= 0 else -self.tokens / self.rate


class RateTable:
    """A ``TokenBucket`` per key; the least recently used keys are forgotten beyond ``max_keys``
    (a forgotten key starts again with a full burst, so ``max_keys`` must exceed honest fan-in)."""

    def __init__(self, rate: float, burst: float, max_keys: int = 4096) -> None:
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def bucket(self, key: str) -> TokenBucket:
        b = self._buckets.get(key)
        if b is None:
            b = self._buckets[key] = TokenBucket(self.rate, self.burst)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return b

    def try_take(self, key: str, n: float, now: float) -> bool:
        return self.bucket(key).try_take(n, now)


class ByteBudget:
    """Bytes held on behalf of keys: at most ``per_key`` each and ``total`` together; untrusted
    keys together at most ``total - reserved``, so the reserve stays free for trusted keys."""

    def __init__(self, per_key: int, total: int, reserved: int = 0) -> None:
        self.per_key, self.total, self.reserved = per_key, total, reserved
        self.held: dict[str, int] = {}
        self._untrusted: dict[str, int] = {}
        self.used = 0
        self.untrusted_used = 0

    def try_acquire(self, key: str, n: int, trusted: bool = False) -> bool:
        if n <= 0:
            return True
        mine = self.held.get(key, 0)
        if mine + n > self.per_key or self.used + n > self.total:
            return False
        if not trusted:
            if self.untrusted_used + n > self.total - self.reserved:
                return False
            self._untrusted[key] = self._untrusted.get(key, 0) + n
            self.untrusted_used += n
        self.held[key] = mine + n
        self.used += n
        return True

    def release(self, key: str, n: int) -> None:
        if n <= 0:
            return
        n = min(n, self.held.get(key, 0))
        u = min(n, self._untrusted.get(key, 0))
        for table, k in ((self.held, n), (self._untrusted, u)):
            left = table.get(key, 0) - k
            if left > 0:
                table[key] = left
            else:
                table.pop(key, None)
        self.used -= n
        self.untrusted_used -= u


@dataclass
class Penalties:
    """``strikes`` rule breaks within ``window_s`` refuse a peer for ``refuse_s`` seconds. At most
    ``max_peers`` offenders and refusals are remembered (beyond, the oldest go first)."""

    strikes: int = 8
    window_s: float = 60.0
    refuse_s: float = 30.0
    max_peers: int = 4096
    _log: dict[str, deque] = field(default_factory=dict)
    _until: dict[str, float] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)
    on_refuse: Callable[[str], None] | None = None

    def strike(self, peer: str, now: float, reason: str, weight: int = 1) -> bool:
        """Count a rule break (``weight`` strikes at once; ``strikes`` refuses the peer outright);
        True when the peer is refused from now on."""
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        log = self._log.setdefault(peer, deque())
        log.extend([now] * min(max(1, weight), self.strikes))
        while log and now - log[0] > self.window_s:
            log.popleft()
        if len(self._log) > self.max_peers:  # forget the oldest offenders first
            for p in list(self._log)[: len(self._log) - self.max_peers]:
                self._log.pop(p, None)
        if len(log) >= self.strikes:
            log.clear()
            self._until.pop(peer, None)  # re-inserted last: the table stays in order of expiry
            self._until[peer] = now + self.refuse_s
            for p in list(self._until):  # expired refusals of identities never seen again leave; at most max_peers
                if self._until[p] > now and len(self._until) <= self.max_peers:
                    break
                del self._until[p]
            if self.on_refuse is not None:
                self.on_refuse(peer)
            return True
        return False

    def refused(self, peer: str, now: float) -> bool:
        until = self._until.get(peer)
        if until is None:
            return False
        if now >= until:
            del self._until[peer]
            return False
        return True


def ip_prefix(addr: str) -> str:
    """The admission group of an IP address: its /24 (IPv4) or /48 (IPv6); other text unchanged."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return addr
    bits = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{bits}", strict=False))
