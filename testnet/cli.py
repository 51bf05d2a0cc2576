"""`swarmlm testnet up|down`: a local swarm of node processes on 127.0.0.1 (or in network namespaces)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

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
    if ns.model:
        extra += ["--model", ns.model]
        from swarmlm.models.registry import resolve  # lazy: imports torch (~1 s); `swarmlm --help` imports this module

        resolve(ns.model)  # convert a builtin once, before N nodes would all try
    if ns.max_layers:
        extra += ["--max-layers", str(ns.max_layers)]
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
    up.add_argument("--max-layers", type=int, metavar="N", help="each node hosts at most N layers (auto placement)")
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
    down = tsub.add_parser("down", help="stop exactly the processes `testnet up` started")
    down.add_argument("--base-dir", default=DEFAULT_BASE, metavar="DIR")
    down.set_defaults(func=cmd_down)
