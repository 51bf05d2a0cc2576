"""The `swarmlm` command line: one argparse tree; each command group lives in its own module.

Command modules expose ``register(subparsers)`` and set ``func`` on their parsers; handlers import
heavy dependencies (torch, libp2p) themselves, so ``swarmlm --help`` stays fast.

``main`` is the one boundary every command runs behind: logging is configured first (``node.logs``:
third-party lines stay out unless ``--log-level debug``), and whatever a command raises becomes an
exit status and one line on stderr (``cli_errors.describe``); ``--debug`` adds the traceback. Every
command accepts ``--debug`` and ``--log-level``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from swarmlm.version import __version__
from swarmlm.errors import UsageError
from swarmlm.node import logs
from swarmlm.node.front.cli_errors import describe

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
    "pipeline": "decode speed through 3 local node processes vs one process; --rtt-ms: client loop, "
                "server loop, speculative",
    "consensus": "simulated rounds: majority vs Bradley-Terry vs reputation-weighted BT; --real: the "
                 "labeled set on SmolLM2; --round-time: 3-node rounds",
    "ee": "equivariant-encryption overhead: plain vs encrypted decode",
    "ee-attacks": "token-recovery rates of attacks on equivariant encryption",
    "nat": "hole-punch success and relayed vs direct RTT in the netns internet (root)",
    "load": "concurrent clients through a 3-node pipeline: throughput, latency, shedding",
    "serve": "N streaming clients, whole model and 3-node pipeline, continuous batching on vs off",
    "sybil": "an honest swarm under Sybil attacks (1..256 identities): success, p95, RSS, recovery",
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


def _leaf_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every parser of the tree that runs a command (those without subcommands of their own)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [parser]
    return [leaf for a in subs for p in dict.fromkeys(a.choices.values()) for leaf in _leaf_parsers(p)]


def _add_common_flags(parser: argparse.ArgumentParser) -> None:
    for p in _leaf_parsers(parser):
        known = {o for a in p._actions for o in a.option_strings}
        if "--debug" not in known:
            p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                           help="on failure, print the traceback too")
        if "--log-level" not in known:
            p.add_argument("--log-level", choices=logs.LEVELS, default=argparse.SUPPRESS,
                           help="log lines to show on stderr (default error; debug also shows libraries' own)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="swarmlm",
        description="swarmlm: a peer-to-peer swarm for LLM inference. Run a node, join a swarm, ask it.",
    )
    parser.add_argument("--version", action="version", version=f"swarmlm {__version__}")
    parser.add_argument("--debug", action="store_true", help="on failure, print the traceback too")
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
    _add_common_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    if not getattr(ns, "func", None):
        parser.print_help()
        return 2
    debug = bool(getattr(ns, "debug", False)) or os.environ.get("SWARMLM_DEBUG", "") not in ("", "0")
    logs.setup(getattr(ns, "log_level", None) or "error")  # `node run` sets up its own from its config
    try:
        return int(ns.func(ns) or 0)
    except BaseException as exc:  # the one boundary: an exit status and one line, never a traceback
        if isinstance(exc, SystemExit):
            raise
        status, line = describe(exc)
        if debug:
            traceback.print_exception(exc)
        print(f"swarmlm: error: {line}", file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
