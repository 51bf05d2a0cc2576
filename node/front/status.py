"""`swarmlm status` and `swarmlm peers`: the swarm state as a table, with one liveness column.

Both read the swarm through ``swarm_view`` (as a light peer with ``--bootstrap``, or a node's
``/api/swarm`` with ``--http``). ``status`` lists every peer the state knows -- what it hosts,
heartbeat age, reachability, load -- and its status (online, disconnected, left, offline);
``peers`` lists the live ones with the round trip from here and their addresses.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import httpx
import trio

from swarmlm.node.front.cli_common import bootstrap_addrs, http_url
from swarmlm.node.front.swarm_view import read_swarm, rows_from_api


def _rows(ns: argparse.Namespace, command: str) -> list[dict[str, Any]]:
    bootstrap = bootstrap_addrs(ns.bootstrap, command, getattr(ns, "http", None))
    if getattr(ns, "http", None):
        r = httpx.get(http_url(ns.http) + "/api/swarm", timeout=10)
        r.raise_for_status()
        return rows_from_api(r.json())
    return trio.run(read_swarm, bootstrap)


def _age(v: Any) -> str:
    return f"{v:.1f}s" if isinstance(v, (int, float)) else "-"


def status_command(ns: argparse.Namespace) -> int:
    rows = _rows(ns, "status")
    if ns.json:
        print(json.dumps({"peers": rows}))
        return 0
    if not rows:
        print("no peers in the swarm state yet", file=sys.stderr)
        return 1
    print(f"{'peer':<14} {'status':<12} {'heartbeat':>9}  {'reach':<8} {'tok/s':>7} {'free kv':>8}  hosts")
    for r in rows:
        tp = r.get("throughput")
        print(f"{'…' + r['peer_id'][-12:]:<14} {r['status']:<12} {_age(r.get('heartbeat_age_s')):>9}  "
              f"{r.get('reach', '?'):<8} {'-' if tp is None else round(tp, 1)!s:>7} {r.get('free_kv', '-')!s:>8}  "
              f"{', '.join(r.get('hosted') or []) or '-'}")
    online = sum(r["online"] for r in rows)
    print(f"{online} of {len(rows)} peers online", file=sys.stderr)
    return 0


def peers_command(ns: argparse.Namespace) -> int:
    rows = _rows(ns, "peers")
    live = [r for r in rows if r["online"]]
    if ns.json:
        print(json.dumps({"peers": [{k: r.get(k) for k in ("peer_id", "status", "rtt_ms", "addrs", "agent")}
                                    for r in live]}))
        return 0
    for r in live:
        rtt = "-" if r.get("rtt_ms") is None else f"{r['rtt_ms']:.1f} ms"
        print(f"{r['peer_id']}  {rtt:>9}  {' '.join(r.get('addrs', [])[:2])}")
    gone = len(rows) - len(live)
    print(f"{len(live)} peers online" + (f" ({gone} more not online: `swarmlm status` lists them)" if gone else ""),
          file=sys.stderr)
    return 0
