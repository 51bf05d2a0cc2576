"""`swarmlm status`: the swarm state as a table — peers, what they host, heartbeat age, load.

Joins through ``--bootstrap`` as a light peer (fresh identity, read-only state) and waits until the
state stops growing, or asks a node's ``/api/swarm`` with ``--http``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import httpx
import trio

from swarmlm.crypto.identity import Identity
from swarmlm.errors import UsageError as CliError


async def _rows_p2p(bootstrap: list[str], settle_s: float = 3.0, timeout_s: float = 20.0) -> list[dict[str, Any]]:
    from swarmlm.net.host import HostConfig, SwarmHost  # lazy: keeps `swarmlm --help` fast
    from swarmlm.net.state_service import StateService  # lazy: keeps `swarmlm --help` fast

    host = SwarmHost(Identity.generate(), HostConfig(listen=["/ip4/0.0.0.0/tcp/0"], bootstrap=bootstrap))
    state = StateService(host, None, publish=False)
    async with host.running():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(state.run)
            deadline = trio.current_time() + timeout_s
            last, stable_since = -1, trio.current_time()
            while trio.current_time() < deadline:
                n = len(state.state.peers(time.time(), include_offline=True))
                if n != last:
                    last, stable_since = n, trio.current_time()
                elif n and trio.current_time() - stable_since >= settle_s:
                    break
                await trio.sleep(0.2)
            rows = state.state.status_rows(time.time())
            nursery.cancel_scope.cancel()
    return rows


def _rows_http(url: str) -> list[dict[str, Any]]:
    r = httpx.get(url.rstrip("/") + "/api/swarm", timeout=10)
    r.raise_for_status()
    data = r.json()
    return data.get("status_rows") or data.get("peers") or []


def status_command(ns: argparse.Namespace) -> int:
    if bool(ns.bootstrap) == bool(ns.http):
        raise CliError("status: give --bootstrap MADDR or --http URL")
    rows = _rows_http(ns.http) if ns.http else trio.run(_rows_p2p, ns.bootstrap)
    if ns.json:
        print(json.dumps({"peers": rows}))
        return 0
    if not rows:
        print("no peers in the swarm state yet", file=sys.stderr)
        return 1
    print(f"{'peer':<14} {'online':<7} {'heartbeat':>9}  {'reach':<8} {'tok/s':>7} {'free kv':>8}  hosts")
    for r in rows:
        age = r.get("heartbeat_age_s", r.get("age"))
        age_s = f"{age:.1f}s" if isinstance(age, (int, float)) else "-"
        tp = r.get("throughput")
        print(f"{'…' + r['peer_id'][-12:]:<14} {('yes' if r.get('online') else 'no'):<7} {age_s:>9}  "
              f"{r.get('reach', '?'):<8} {tp if tp is None else round(tp, 1)!s:>7} {r.get('free_kv', '-')!s:>8}  "
              f"{', '.join(r.get('hosted') or []) or '-'}")
    return 0
