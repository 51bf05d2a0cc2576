"""What a generation does when a server of its route fails: the failover policy.

``Bans`` remembers the peers this client avoids for a while. ``Failover`` counts a generation's
failures and decides: a real fault (a dead, refusing or lying server) bans the peer and re-plans
around it; a busy server (load shedding) or a broken link between two servers is routed around
without a ban, and when no other server is left the generation backs off (jittered, doubling, and
at least about the busy server's retry hint) and tries again; past ``max_failovers`` faults or ``busy_retries`` busy answers it gives up with a
clear error (``GenerationError``, or ``BusyError`` which the HTTP front answers with 429).
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import trio

from swarmlm.node.client.options import ClientOptions
from swarmlm.node.client.routing import Route, replan_after_failure
from swarmlm.node.generation import BusyError, GenerationError, NoRouteError

log = logging.getLogger("swarmlm.client")

MAX_HINT_WAIT_S = 10.0  # a busy server's retry hint is followed up to this long per wait


@dataclass
class Bans:
    """Peers the client avoids for a while after they failed."""

    duration_s: float = 60.0
    until: dict[str, float] = field(default_factory=dict)

    def ban(self, peer: str, now: float | None = None, duration_s: float | None = None) -> None:
        t = (time.monotonic() if now is None else now) + (self.duration_s if duration_s is None else duration_s)
        self.until[peer] = max(self.until.get(peer, 0.0), t)

    def active(self, now: float | None = None) -> frozenset[str]:
        now = time.monotonic() if now is None else now
        return frozenset(p for p, t in self.until.items() if t > now)


class Failover:
    """One generation's failure budget and the route it goes on with after each failure."""

    def __init__(self, options: ClientOptions, bans: Bans, rng: random.Random) -> None:
        self.options, self.bans, self.rng = options, bans, rng
        self.failovers = 0
        self.busy_waits = 0

    async def next_route(self, exc: Any, route: Route, servers: Sequence[Any], n_layers: int, need_tokens: int,
                         plan: Callable[[], Route]) -> Route:
        """``exc`` (a ``HopFailed`` or ``VerificationFailed`` naming ``exc.peer``) ended a session on
        ``route``: count it, ban the peer unless it was only busy or a link broke, and return the
        route to retry on (raises when the budget is spent or no route is left)."""
        busy = bool(getattr(exc, "busy", False))  # load shedding, not a fault: no ban
        soft = busy or bool(getattr(exc, "transient", False))  # route around it, but no ban
        if busy:
            self.busy_waits += 1
        else:
            self.failovers += 1
        if not soft:
            self.bans.ban(exc.peer)
        log.warning("hop %s failed (%s); failover %d", exc.peer[-8:], exc.reason, self.failovers)
        if busy and self.busy_waits > self.options.busy_retries:
            raise BusyError(f"the swarm is busy ({exc.reason}); retry later") from None
        if self.failovers > self.options.max_failovers:
            raise GenerationError(f"gave up after {self.failovers - 1} failovers: {exc}") from None
        try:  # a route around the failed (or busy) peer
            return replan_after_failure(route, exc.peer, servers, n_layers, need_cache_tokens=need_tokens,
                                        banned=self.bans.active())
        except NoRouteError:
            if not soft:
                raise
            # no other server: back off (jittered, doubling, at least the busy server's retry hint) and
            # try the same one again
            waits = max(self.busy_waits, self.failovers)
            backoff = self.options.busy_backoff_s * 2 ** (waits - 1) * (0.5 + self.rng.random())
            hint = getattr(exc, "retry_after", None) or 0.0
            await trio.sleep(max(backoff, min(hint, MAX_HINT_WAIT_S) * (0.5 + self.rng.random())))
            return plan()
