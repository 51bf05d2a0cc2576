"""Reachability verdict: public / private / unknown from several peers' dial-back answers (no I/O).

A node asks several peers to dial it back at its advertised addresses. The dial-back must come over a
*fresh* connection (py-libp2p 0.8.1's AutoNAT v1 reuses the open connection and so says PUBLIC for
everyone): record ``REACHED`` only when this node itself saw the peer's nonce arrive on a new inbound
connection (from a separate ephemeral identity), ``UNREACHABLE`` when the peer tried and that never
happened, ``ERROR`` when the peer could not try (refused, rate limited, the request itself failed).

``Reachability`` keeps the latest answer per answering source (a peer id, or a network group such as a
/16 so one operator's many peers count once) within ``ttl_s`` and decides:

* PUBLIC  when at least ``min_answers`` sources reached us and successes >= ``ratio`` x failures;
* PRIVATE when at least ``min_answers`` sources could not and failures >= ``ratio`` x successes;
* UNKNOWN otherwise (too few answers, or a split such as a flaky port forward).

ERROR answers never count. ``next_probe_in`` says when to ask again: soon while UNKNOWN, rarely once
settled. ``summary`` is what the swarm state publishes and ``swarmlm status`` shows.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field


class Verdict(str, enum.Enum):
    PUBLIC = "public"
    PRIVATE = "private"
    UNKNOWN = "unknown"


class Outcome(str, enum.Enum):
    REACHED = "reached"  # our nonce arrived on a fresh inbound connection from the dial-back
    UNREACHABLE = "unreachable"  # the peer dialed back and nothing arrived
    ERROR = "error"  # the peer could not try; says nothing about us


@dataclass(frozen=True)
class Answer:
    """One peer's dial-back result for one of our addresses at time ``at`` (seconds on the caller's
    clock; use wall time when the summary is published, since ``since`` is reported on it)."""

    peer: str  # answering peer id
    address: str  # our address it dialed (multiaddr text)
    outcome: Outcome
    at: float
    group: str | None = None  # network group of the answering peer; answers count once per group


@dataclass(frozen=True)
class ReachabilityConfig:
    min_answers: int = 3  # distinct sources needed for a PUBLIC or PRIVATE verdict
    ratio: float = 2.0  # the winning side must outnumber the other this many times
    ttl_s: float = 1800.0  # answers older than this are forgotten
    retry_s: float = 60.0  # probe interval while UNKNOWN
    refresh_s: float = 900.0  # probe interval once settled

    def __post_init__(self) -> None:
        if self.min_answers < 1 or self.ratio < 1.0 or self.ttl_s <= 0:
            raise ValueError("min_answers >= 1, ratio >= 1 and ttl_s > 0 are required")


def network_group(ip: str, v4_prefix: int = 16, v6_prefix: int = 32) -> str:
    """The network a peer's IP belongs to (``"v4:10.1.0.0/16"``) to count one answer per operator."""
    addr = ipaddress.ip_address(ip)
    prefix = v4_prefix if addr.version == 4 else v6_prefix
    return f"v{addr.version}:{ipaddress.ip_network(f'{ip}/{prefix}', strict=False)}"


@dataclass
class Reachability:
    """Collects answers and turns them into a verdict; feed it ``record`` and ask ``verdict(now)``."""

    config: ReachabilityConfig = field(default_factory=ReachabilityConfig)
    _latest: dict[str, Answer] = field(default_factory=dict)
    _last_change: float | None = None
    _last_verdict: Verdict = Verdict.UNKNOWN

    def record(self, answer: Answer) -> Verdict:
        """Add one answer (ERRORs are ignored) and return the verdict as of ``answer.at``."""
        if answer.outcome is not Outcome.ERROR:
            key = answer.group or f"peer:{answer.peer}"
            old = self._latest.get(key)
            if old is None or answer.at >= old.at:
                self._latest[key] = answer
        return self.verdict(answer.at)

    def _live(self, now: float) -> list[Answer]:
        horizon = now - self.config.ttl_s
        for key in [k for k, a in self._latest.items() if a.at < horizon]:
            del self._latest[key]
        return list(self._latest.values())

    def counts(self, now: float) -> tuple[int, int]:
        """(sources that reached us, sources that could not) among live answers."""
        live = self._live(now)
        ok = sum(1 for a in live if a.outcome is Outcome.REACHED)
        return ok, len(live) - ok

    def verdict(self, now: float) -> Verdict:
        ok, fail = self.counts(now)
        cfg = self.config
        if ok >= cfg.min_answers and ok >= cfg.ratio * fail:
            result = Verdict.PUBLIC
        elif fail >= cfg.min_answers and fail >= cfg.ratio * ok:
            result = Verdict.PRIVATE
        else:
            result = Verdict.UNKNOWN
        if result is not self._last_verdict:
            self._last_verdict, self._last_change = result, now
        return result

    def confirmed_addresses(self, now: float) -> list[str]:
        """Our addresses that some live answer reached (advertise these when PUBLIC), sorted."""
        return sorted({a.address for a in self._live(now) if a.outcome is Outcome.REACHED})

    def next_probe_in(self, now: float) -> float:
        """Seconds until the next round of dial-back requests."""
        return self.config.retry_s if self.verdict(now) is Verdict.UNKNOWN else self.config.refresh_s

    def summary(self, now: float) -> dict:
        """JSON-ready record for the swarm state and ``swarmlm status``."""
        ok, fail = self.counts(now)
        verdict = self.verdict(now)
        return {"verdict": verdict.value, "reached": ok, "unreachable": fail,
                "addresses": self.confirmed_addresses(now),
                "since": self._last_change, "next_probe_in": self.next_probe_in(now)}
