"""How a client runs generations through the swarm: failover, routing, verification, wire dtype."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ClientOptions:
    max_failovers: int = 5
    step_timeout_s: float = 30.0
    open_timeout_s: float = 10.0  # opening a route session (every hop) within this, or fail over
    ban_s: float = 60.0
    route_mode: str = "latency"
    wire_dtype: str | None = None  # "fp16"/"bf16": down-cast activations between servers (half the bytes)
    # verified shards (docs/RELIABILITY.md): servers with standing are checked on this share of steps,
    # servers without (new identities) on every step until they passed ``standing_steps``; 0: off
    check_fraction: float = 0.1
    standing_steps: int = 32  # checked steps a server must pass to earn standing (0: sample everyone)
    verify_final: bool = False  # always check the tail before a verified generation ends
    check_timeout_s: float = 10.0  # a reference replica slower than this is replaced by the next one
    verdict_ban_s: float = 3600.0  # > 0: avoid peers recent verdicts with standing convict (node/trust.py); 0: off
    witness_s: float = 120.0  # publish a witness record of the servers used at most this often (standing)
    prefer: tuple[str, ...] = ()  # peers the first plan favours (tests, benches)
    busy_backoff_s: float = 0.25  # first back-off after a "busy" answer with no other server (then doubling)
    busy_retries: int = 3  # "busy" answers a generation absorbs before it gives up with BusyError (HTTP 429)
    speculative: bool = False  # prompt-lookup drafts verified k+1 positions per pass (models/speculative.py)
    draft_model: str | None = None  # a local model with the same tokenizer drafts (implies speculative)
    draft_k_max: int = 8  # the longest draft a verify pass carries (k adapts to the acceptance rate)
    server_loop: bool = False  # the head feeds each token to the first hop itself (node/client/server_loop.py)
