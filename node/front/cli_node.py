"""`swarmlm id` (also `swarmlm node id`), `swarmlm node run`, `swarmlm peers`, `swarmlm status`."""

from __future__ import annotations

import argparse
import sys

import trio

from swarmlm.crypto.identity import load_or_create
from swarmlm.node import config, logs


def _add_node_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML config file (its keys: docs/CONFIG.md)")
    p.add_argument("--data-dir", metavar="DIR", help="where the identity key and state live")
    p.add_argument("--listen", metavar="MADDR", action="append", help="listen multiaddr (repeatable)")
    p.add_argument("--announce", metavar="MADDR", action="append", help="address to advertise (repeatable)")
    p.add_argument("--bootstrap", metavar="MADDR", action="append", help="bootstrap peer multiaddr with /p2p/ (repeatable)")
    p.add_argument("--ready-file", metavar="FILE", help="write {peer_id, addrs, http} here once serving")
    p.add_argument("--http", metavar="HOST:PORT", help="serve the HTTP API (OpenAI-compatible) and health page here")
    p.add_argument("--http-token", metavar="TOKEN", help="require this bearer token on the HTTP API")
    p.add_argument("--http-allow-host", dest="http_allow_hosts", metavar="NAME", action="append",
                   help="answer HTTP requests for this Host name too (default: loopback and IP addresses; * for any)")
    p.add_argument("--http-allow-origin", dest="http_allow_origins", metavar="ORIGIN", action="append",
                   help="let web pages from this origin (http://host:port) call the HTTP API")
    p.add_argument("--trust", metavar="PEER_ID", action="append",
                   help="trust this peer as an anchor of standing, like a bootstrap peer (repeatable)")
    p.add_argument("--model", metavar="SPEC", help="model to serve, e.g. builtin:smollm2-135m or builtin:tiny")
    p.add_argument("--layers", metavar="START:END|auto", help="layer range to host (default: auto)")
    p.add_argument("--max-layers", type=int, metavar="N", help="host at most N layers")
    p.add_argument("--max-cache-tokens", type=int, metavar="N", help="KV-cache budget in tokens")
    p.add_argument("--max-batch-tokens", type=int, metavar="N",
                   help="token positions per batch of concurrent sessions' steps (default: from measured speed; 1: no batching)")
    p.add_argument("--prefill-chunk", type=int, metavar="N", help="compute prompts in chunks of N tokens (default 256)")
    p.add_argument("--peer-max-sessions", type=int, metavar="N",
                   help="sessions one peer (e.g. a gateway) may hold here (default: all but an eighth of max_sessions)")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], help="compute dtype")
    p.add_argument("--threads", type=int, metavar="N", help="torch compute threads (default: all cores)")
    p.add_argument("--mdns", action="store_const", const=True, help="discover peers on the LAN with mDNS")
    p.add_argument("--quic", action="store_const", const=True, help="also listen on QUIC (experimental)")
    p.add_argument("--no-relay", dest="relay", action="store_const", const=False, help="neither serve nor use circuit relays")
    p.add_argument("--no-hole-punch", dest="hole_punch", action="store_const", const=False, help="do not try DCUtR hole punching")
    p.add_argument("--no-reachability", dest="reachability", action="store_const", const=False, help="skip the dial-back reachability check")
    p.add_argument("--log-format", choices=["text", "json"], help="log lines as text (default) or JSON")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--consensus-sampling", metavar="PROFILE", help='how this node answers consensus rounds, e.g. "temperature=0.7 top_p=0.9"')
    p.add_argument("--consensus-judge", choices=["loglik", "prompt"], help="how this node judges answers")
    p.add_argument("--consensus-calibration", choices=["off", "required"], help="judges must pass calibration first")
    p.add_argument("--ee-key", metavar="KEYFILE", help="as an HTTP gateway, encrypt prompts with this EE key")
    p.add_argument("--fault", metavar="KIND[:ARG]", help=argparse.SUPPRESS)  # tests: node/server/faults.py


_FLAG_KEYS = ("threads", "data_dir", "listen", "announce", "bootstrap", "ready_file", "http", "http_token",
              "http_allow_hosts", "http_allow_origins", "trust", "model", "layers",
              "max_layers", "max_cache_tokens", "max_batch_tokens", "prefill_chunk", "peer_max_sessions", "dtype", "mdns", "quic", "relay", "hole_punch", "reachability",
              "log_format", "log_level", "fault", "ee_key",
              "consensus_sampling", "consensus_judge", "consensus_calibration")


def load_config(ns: argparse.Namespace):
    return config.load(getattr(ns, "config", None), overrides={k: getattr(ns, k, None) for k in _FLAG_KEYS})


def cmd_run(ns: argparse.Namespace) -> int:
    from swarmlm.node.assemble import build_node  # lazy: keeps `swarmlm --help` free of torch and libp2p

    cfg = load_config(ns)
    logs.setup(cfg.log_level, cfg.log_format)
    node = build_node(cfg)
    node.settle_heap_on_start = True  # this process is the node's alone
    trio.run(node.run)
    return 0


def cmd_id(ns: argparse.Namespace) -> int:
    cfg = load_config(ns)
    ident, created = load_or_create(cfg.data_path)
    if created:
        print(f"created a new identity in {cfg.data_path}", file=sys.stderr)
    print(ident.peer_id)
    return 0


def cmd_peers(ns: argparse.Namespace) -> int:
    from swarmlm.node.front.status import peers_command  # lazy: keeps `swarmlm --help` fast

    return peers_command(ns)


def cmd_status(ns: argparse.Namespace) -> int:
    from swarmlm.node.front.status import status_command  # lazy: keeps `swarmlm --help` fast

    return status_command(ns)


def register(sub: argparse._SubParsersAction) -> None:
    id_help = "print this node's peer id (creates the identity key on first use)"
    node = sub.add_parser("node", help="run a node daemon, or print its peer id")
    nsub = node.add_subparsers(dest="node_command", metavar="COMMAND", required=True)
    for group in (sub, nsub):  # `swarmlm id` and `swarmlm node id` are the same command
        p = group.add_parser("id", help=id_help)
        p.add_argument("--config", metavar="FILE", help="TOML config file (its keys: docs/CONFIG.md)")
        p.add_argument("--data-dir", metavar="DIR", help="where the identity key lives")
        p.set_defaults(func=cmd_id)
    run = nsub.add_parser("run", help="run the node in the foreground until SIGINT/SIGTERM")
    _add_node_flags(run)
    run.set_defaults(func=cmd_run)

    for name, func, help_ in (("peers", cmd_peers, "list the live peers of the swarm with their round trip"),
                              ("status", cmd_status, "show the swarm state: peers, status, what they host")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--bootstrap", metavar="MADDR", action="append",
                       help="join through this peer (with /p2p/; repeatable; default $SWARMLM_BOOTSTRAP)")
        p.add_argument("--http", metavar="HOST:PORT", help="read a node's /api/swarm instead (its own view)")
        p.add_argument("--json", action="store_true", help="one JSON object on stdout")
        p.set_defaults(func=func)
