"""Node configuration: defaults < TOML file < environment (``SWARMLM_<KEY>``) < command-line flags.

Every key is a field of ``NodeConfig``. An unknown key or a value of the wrong type is a
``ConfigError`` naming the key and where it came from, so the operator knows what to fix.
Lists come from TOML arrays, or from comma-separated environment variables.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from swarmlm.errors import ConfigError
from swarmlm.net.inbound import InboundLimits
from swarmlm.node.server.faults import Fault

ENV_PREFIX = "SWARMLM_"
LOG_FORMATS = ("text", "json")
DTYPES = ("fp32", "bf16", "fp16")


@dataclass
class NodeConfig:
    data_dir: str = "~/.local/share/swarmlm"
    listen: list[str] = field(default_factory=lambda: ["/ip4/0.0.0.0/tcp/0"])
    announce: list[str] = field(default_factory=list)
    bootstrap: list[str] = field(default_factory=list)
    quic: bool = False
    mdns: bool = False
    http: str = ""  # e.g. 127.0.0.1:8080; empty: no HTTP API
    http_token: str = ""  # optional bearer token for the HTTP API
    http_allow_hosts: list[str] = field(default_factory=list)  # Host names the HTTP API answers besides loopback/IPs; "*": any
    http_allow_origins: list[str] = field(default_factory=list)  # browser origins (scheme://host[:port]) allowed to call it
    trust: list[str] = field(default_factory=list)  # peer ids this node trusts as anchors of standing (besides its bootstrap peers)
    ready_file: str = ""
    log_format: str = "text"
    log_level: str = "info"
    # serving
    model: str = ""  # e.g. builtin:smollm2-135m; empty: a relay/bootstrap-only node
    layers: str = "auto"  # "auto" or "START:END"
    max_layers: int = 0  # 0: no cap beyond memory
    max_cache_tokens: int = 8192
    dtype: str = "fp32"
    max_sessions: int = 64
    peer_max_sessions: int = 0  # sessions one peer (e.g. a gateway) may hold here; 0: all but an eighth of max_sessions
    max_batch_tokens: int = 0  # token positions one batch of the step scheduler computes; 0: from measured speed; 1: no batching
    prefill_chunk: int = 256  # a prompt is computed in pieces of at most this many tokens, between other sessions' steps
    threads: int = 0  # torch compute threads; 0: torch's default (all cores). Several nodes on one host: fewer
    # NAT traversal (on by default)
    relay: bool = True  # serve circuit relay when public / use relays when private
    hole_punch: bool = True
    reachability: bool = True
    # inbound connections per IP prefix (/24, /56; all of loopback is one) and in total (net/inbound.py)
    inbound_rate: float = 4.0  # new connections per second per prefix, after a burst of inbound_burst
    inbound_burst: int = 48
    inbound_handshakes: int = 8  # handshakes in flight per prefix (more wait for a slot; 32 in all)
    inbound_untrusted: int = 32  # established connections of peers without standing, per prefix
    inbound_untrusted_total: int = 192
    # state sync
    heartbeat_s: float = 10.0
    state_ttl_s: float = 60.0  # a peer whose heartbeat is older is offline for every reader
    rebalance_s: float = 30.0  # how often an auto-placed node reconsiders its layer range
    witness_s: float = 120.0  # how often this node's client publishes what servers it saw working (standing)
    # consensus (docs/CONSENSUS.md)
    consensus_sampling: str = ""  # this node's answer profile, e.g. "temperature=0.7 top_p=0.9"; empty: derived
    consensus_judge: str = "pairwise"  # pairwise | loglik | prompt
    consensus_calibration: str = "off"  # off | required (judges must pass calibration first)
    ee_key: str = ""  # HTTP gateway: encrypt prompts with this equivariant-encryption key (docs/EE.md)
    fault: str = ""  # test-only misbehaviour, see docs/RELIABILITY.md

    def validate(self) -> None:
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(f"log_format: must be one of {', '.join(LOG_FORMATS)}, got {self.log_format!r}")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"log_level: must be debug, info, warning or error, got {self.log_level!r}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype: must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.layers != "auto":
            parse_layers(self.layers)
        for key in ("max_layers", "max_cache_tokens", "max_sessions", "threads", "max_batch_tokens", "peer_max_sessions"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key}: must be >= 0, got {getattr(self, key)}")
        for key in ("inbound_burst", "inbound_handshakes", "inbound_untrusted", "inbound_untrusted_total"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}: must be >= 1, got {getattr(self, key)}")
        if not self.inbound_rate > 0:
            raise ConfigError(f"inbound_rate: must be > 0 (connections per second), got {self.inbound_rate}")
        if self.peer_max_sessions > self.max_sessions:
            raise ConfigError(f"peer_max_sessions ({self.peer_max_sessions}) cannot exceed max_sessions ({self.max_sessions})")
        if not 1 <= self.prefill_chunk <= 4096:
            raise ConfigError(f"prefill_chunk: must be between 1 and 4096, got {self.prefill_chunk}")
        for key in ("heartbeat_s", "state_ttl_s", "rebalance_s", "witness_s"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key}: must be > 0, got {getattr(self, key)}")
        if self.state_ttl_s <= self.heartbeat_s:
            raise ConfigError(f"state_ttl_s ({self.state_ttl_s}) must exceed heartbeat_s ({self.heartbeat_s})")
        for key in ("listen", "announce", "bootstrap"):
            for addr in getattr(self, key):
                if not addr.startswith("/"):
                    raise ConfigError(f"{key}: {addr!r} is not a multiaddr (e.g. /ip4/127.0.0.1/tcp/4001)")
        for addr in self.bootstrap:
            if "/p2p/" not in addr:
                raise ConfigError(f"bootstrap: {addr!r} needs a /p2p/<peer id> part")
        for pid in self.trust:
            if not pid or "/" in pid or len(pid) > 128:
                raise ConfigError(f"trust: {pid!r} is not a peer id (as `swarmlm id` prints it)")
        for origin in self.http_allow_origins:
            if origin != "*" and not origin.startswith(("http://", "https://")):
                raise ConfigError(f"http_allow_origins: {origin!r} must look like http://host:port (or be *)")
        if self.http:
            parse_hostport(self.http, "http")
        if self.consensus_judge not in ("pairwise", "loglik", "prompt"):
            raise ConfigError(f"consensus_judge: must be pairwise, loglik or prompt, got {self.consensus_judge!r}")
        if self.consensus_calibration not in ("off", "required"):
            raise ConfigError(f"consensus_calibration: must be off or required, got {self.consensus_calibration!r}")
        try:
            Fault.parse(self.fault)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def inbound_limits(self) -> InboundLimits:
        d = InboundLimits()
        total = max(d.handshakes_total, self.inbound_handshakes)
        return InboundLimits(rate_per_prefix=self.inbound_rate, burst=float(self.inbound_burst),
                             handshakes_per_prefix=self.inbound_handshakes, handshakes_total=total,
                             unestablished_total=max(d.unestablished_total, total),
                             untrusted_per_prefix=self.inbound_untrusted, untrusted_total=self.inbound_untrusted_total)

    @property
    def data_path(self) -> Path:
        return Path(os.path.expanduser(self.data_dir))


def parse_layers(text: str) -> tuple[int, int]:
    try:
        a, b = text.split(":")
        start, end = int(a), int(b)
    except ValueError:
        raise ConfigError(f"layers: expected 'auto' or START:END (e.g. 0:10), got {text!r}") from None
    if start < 0 or end <= start:
        raise ConfigError(f"layers: need 0 <= START < END, got {text!r}")
    return start, end


def parse_hostport(text: str, key: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"{key}: expected HOST:PORT (e.g. 127.0.0.1:8080), got {text!r}")
    return host, int(port)


_FIELDS = {f.name: f for f in dataclasses.fields(NodeConfig)}


def _coerce(key: str, value: Any, source: str) -> Any:
    default = getattr(NodeConfig(), key)
    where = f"{key} (from {source})"
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if isinstance(default, list):
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
    if isinstance(value, str):
        return value
    raise ConfigError(f"{where}: expected a string, got {value!r}")


def apply(cfg: NodeConfig, values: Mapping[str, Any], source: str) -> None:
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in _FIELDS:
            close = [k for k in _FIELDS if k.startswith(name[:3])]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"unknown config key {key!r} in {source}{hint}")
        setattr(cfg, name, _coerce(name, value, source))


def load(path: str | os.PathLike | None = None, env: Mapping[str, str] | None = None,
         overrides: Mapping[str, Any] | None = None) -> NodeConfig:
    """Build and validate the config. ``overrides`` are flags (None values are ignored)."""
    cfg = NodeConfig()
    if path:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {p} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {p} is not valid TOML: {exc}") from None
        apply(cfg, data, str(p))
    env = os.environ if env is None else env
    from_env = {k[len(ENV_PREFIX):].lower(): v for k, v in env.items()
                if k.startswith(ENV_PREFIX) and k[len(ENV_PREFIX):].lower() in _FIELDS}
    apply(cfg, from_env, "environment")
    if overrides:
        apply(cfg, {k: v for k, v in overrides.items() if v is not None}, "command line")
    cfg.validate()
    return cfg
