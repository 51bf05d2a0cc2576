"""How a client runs generations through the swarm: failover, routing, verification, wire dtype."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ClientOptions:
    max_failovers: int = 5
    step_timeout_s: float = 30.0
    ban_s: float = 60.0
    route_mode: str = "latency"
    wire_dtype: str | None = None  # "fp16"/"bf16": down-cast activations between servers (half the bytes)
    check_fraction: float = 0.0  # verified shards: the share of steps re-run on a replica (docs/RELIABILITY.md)
    verify_final: bool = False  # also check the whole history before a verified generation ends
    verdict_ban_s: float = 3600.0  # peers with a "fail" verdict record this recent are not routed to
    prefer: tuple[str, ...] = ()  # peers the first plan favours (tests, benches)
    busy_backoff_s: float = 0.25  # first back-off after a "busy" answer with no other server (then doubling)
    busy_retries: int = 3  # "busy" answers a generation absorbs before it gives up with BusyError (HTTP 429)
    speculative: bool = False  # prompt-lookup drafts verified k+1 positions per pass (models/speculative.py)
    draft_k_max: int = 8  # the longest draft a verify pass carries (k adapts to the acceptance rate)
