"""`swarmlm testnet up|down|addr`: a local swarm of node processes on 127.0.0.1 (or in network namespaces).

``up --model M`` splits M's layers evenly over the nodes (auto placement, each capped at
``ceil(layers / nodes)``; ``--max-layers 0`` gives every node the whole model, which consensus
needs). ``addr`` prints a running node's address for scripts: ``--bootstrap "$(swarmlm testnet addr)"``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from swarmlm.errors import UsageError

from swarmlm.testnet.local import STATE_FILE, LocalTestnet, down
from swarmlm.testnet.netns_testnet import netns_demo_up, netns_down, netns_up

DEFAULT_BASE = ".testnet"


def cmd_up(ns: argparse.Namespace) -> int:
    if ns.netns and ns.demo:
        out = netns_demo_up(ns.base_dir, model=ns.model, timeout=ns.timeout)
        if ns.json:
            print(json.dumps(out))
        else:
            for n in out["nodes"]:
                print(f"{n['name']:<10} site {n['site']:<4} pid {n['pid']:<7} {n['addrs'][0]}")
        return 0
    if not 0 <= ns.rtt_ms <= 10_000 or (ns.bandwidth_mbps is not None and not ns.bandwidth_mbps > 0):
        print("error: --rtt-ms must be in 0..10000 and --bandwidth-mbps positive", file=sys.stderr)
        return 2
    if ns.netns:
        if ns.rtt_ms:
            print("error: --rtt-ms is for the loopback testnet (netns links take delays from the topology)", file=sys.stderr)
            return 2
        return netns_up(ns)
    extra = []
    max_layers = ns.max_layers
    if ns.model:
        extra += ["--model", ns.model]
        from swarmlm.models.config import ModelConfig  # lazy: imports torch (~1 s); `swarmlm --help` imports this module
        from swarmlm.models.registry import resolve  # lazy: as above

        layers = ModelConfig.from_dir(resolve(ns.model)).num_hidden_layers  # converts a builtin once, up front
        if max_layers is None:  # a swarm: each node a share of the layers
            max_layers = math.ceil(layers / ns.nodes)
    if max_layers:
        extra += ["--max-layers", str(max_layers)]
    net = LocalTestnet(ns.nodes, ns.base_dir, extra_args=extra, http=ns.http,
                       sequential=bool(ns.model), rtt_ms=ns.rtt_ms,
                       bandwidth_mbps=ns.bandwidth_mbps).up(timeout=ns.timeout)
    out = [{"index": n.index, "pid": n.pid, **n.ready} for n in net.nodes]
    if ns.json:
        print(json.dumps({"base_dir": str(net.base), "nodes": out}))
    else:
        for n in out:
            http = f"  http://{n['http']}" if n.get("http") else ""
            print(f"node{n['index']}  pid {n['pid']:<7} {n['addrs'][0]}{http}")
        print(f"testnet of {len(out)} nodes in {net.base}; stop it with `swarmlm testnet down --base-dir {ns.base_dir}`",
              file=sys.stderr)
    return 0


def cmd_addr(ns: argparse.Namespace) -> int:
    ready = Path(ns.base_dir) / f"node{ns.node}" / "ready.json"
    try:
        info = json.loads(ready.read_text())
    except (OSError, json.JSONDecodeError):
        raise UsageError(f"no running testnet node {ns.node} in {ns.base_dir} (start one: swarmlm testnet up)") from None
    if ns.http and not info.get("http"):
        raise UsageError(f"node {ns.node} serves no HTTP API (start the testnet with --http)")
    print(info["http"] if ns.http else info["addrs"][0])
    return 0


def cmd_down(ns: argparse.Namespace) -> int:
    state = Path(ns.base_dir) / STATE_FILE
    if state.exists() and "netns" in json.loads(state.read_text() or "{}"):
        n = netns_down(ns.base_dir)
    else:
        n = down(ns.base_dir)
    print(f"stopped {n} node processes", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("testnet", help="start or stop a local multi-node testnet")
    tsub = p.add_subparsers(dest="testnet_command", metavar="COMMAND", required=True)
    up = tsub.add_parser("up", help="start N node processes (node 0 is the bootstrap) and wait until ready")
    up.add_argument("--nodes", type=int, default=3, metavar="N")
    up.add_argument("--base-dir", default=DEFAULT_BASE, metavar="DIR", help=f"data dirs and logs (default {DEFAULT_BASE})")
    up.add_argument("--model", metavar="SPEC", help="model every node serves (auto layers)")
    up.add_argument("--max-layers", type=int, metavar="N",
                    help="each node hosts at most N layers (default: an even share; 0: the whole model)")
    up.add_argument("--http", action="store_true", help="each node serves its HTTP API on a free loopback port")
    up.add_argument("--demo", action="store_true",
                    help="with --netns: the docker compose swarm (testnet/description.py), from the same description")
    up.add_argument("--netns", action="store_true", help="start the nodes inside the simulated internet (root)")
    up.add_argument("--rtt-ms", type=float, default=0.0, metavar="MS",
                    help="every link gets this round trip (a user-space forwarder in front of each node)")
    up.add_argument("--bandwidth-mbps", type=float, default=None, metavar="MBPS",
                    help="with --rtt-ms: also cap each direction of each link")
    up.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for each node")
    up.add_argument("--json", action="store_true")
    up.set_defaults(func=cmd_up)
    addr = tsub.add_parser("addr", help="print a running node's multiaddr (or with --http its HOST:PORT)")
    addr.add_argument("--node", type=int, default=0, metavar="N", help="which node (default 0, the bootstrap)")
    addr.add_argument("--http", action="store_true", help="its HTTP API's HOST:PORT instead")
    addr.add_argument("--base-dir", default=DEFAULT_BASE, metavar="DIR")
    addr.set_defaults(func=cmd_addr)
    down = tsub.add_parser("down", help="stop exactly the processes `testnet up` started")
    down.add_argument("--base-dir", default=DEFAULT_BASE, metavar="DIR")
    down.set_defaults(func=cmd_down)
