"""The `swarmlm` command line: one argparse tree; each command group lives in its own module.

Command modules expose ``register(subparsers)`` and set ``func`` on their parsers; handlers import
heavy dependencies (torch, libp2p) themselves, so ``swarmlm --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from swarmlm.version import __version__
from swarmlm.errors import SwarmError, UsageError

# Each module registers one or more top-level commands.
COMMAND_MODULES = [
    "swarmlm.node.front.cli_node",  # id, node run, peers, status
    "swarmlm.node.front.cli_model",  # model list/convert/info/encrypt
    "swarmlm.node.front.cli_key",  # key gen/info
    "swarmlm.node.front.cli_ask",  # ask
    "swarmlm.testnet.cli",  # testnet up/down
]

# `swarmlm bench NAME` runs swarmlm.bench.NAME.main(argv)
BENCHES = {
    "rpc": "network round trip, bulk and connect time: our libp2p RPC vs raw trio TCP",
    "model": "prefill and decode speed of builtin:smollm2-135m vs transformers",
    "crdt": "swarm-state convergence time and bytes for 10..100 replicas",
    "pipeline": "decode speed through 3 local node processes vs one process",
    "consensus": "simulated rounds: majority vs Bradley-Terry vs reputation-weighted BT",
    "ee": "equivariant-encryption overhead: plain vs encrypted decode",
    "ee-attacks": "token-recovery rates of attacks on equivariant encryption",
    "nat": "hole-punch success and relayed vs direct RTT in the netns internet (root)",
    "load": "concurrent clients through a 3-node pipeline: throughput, latency, shedding",
    "verify": "verified shards and failover: liars, dead and busy replicas, tolerance (real node processes)",
}


CliError = UsageError  # kept in swarmlm.errors so `python -m swarmlm.node.front.cli` sees the same class


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="run a benchmark (see `swarmlm bench --help`)",
                       description="Benchmarks print exactly one JSON object on stdout with --json; "
                                   "logs and progress go to stderr.\n\n"
                                   + "\n".join(f"  {k:<11} {v}" for k, v in BENCHES.items()),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=sorted(BENCHES), metavar="NAME", help="which benchmark")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments of that benchmark (try NAME --help)")

    def run(ns: argparse.Namespace) -> int:
        mod = importlib.import_module(f"swarmlm.bench.{ns.name.replace('-', '_')}")
        return int(mod.main(ns.args) or 0)

    p.set_defaults(func=run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="swarmlm",
        description="swarmlm: a peer-to-peer swarm for LLM inference. Run a node, join a swarm, ask it.",
    )
    parser.add_argument("--version", action="version", version=f"swarmlm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a module that exists but is broken must not be hidden
                raise
            continue
        mod.register(sub)
    _add_bench(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    if not getattr(ns, "func", None):
        parser.print_help()
        return 2
    try:
        return int(ns.func(ns) or 0)
    except KeyboardInterrupt:
        return 130
    except CliError as exc:  # usage errors: exit 2
        print(f"swarmlm: error: {exc}", file=sys.stderr)
        return 2
    except SwarmError as exc:  # user-facing errors from every layer carry a readable message
        print(f"swarmlm: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
