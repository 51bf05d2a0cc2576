"""The swarm as `swarmlm status` and `swarmlm peers` see it: one liveness rule, two ways to look.

``read_swarm(bootstrap)`` joins as a light peer (fresh identity, read-only state, DHT client: it
leaves no trace in anyone's tables), waits until the replicated state stops growing, then dials
every peer the state lists as live (``node.dial.ensure_connected``) and pings it. Each row's
``status`` is ``net.state.swarm.peer_status`` with what the dial found: a peer that left cleanly is
``left`` (its signed leaving mark), one killed a moment ago is ``disconnected`` (its heartbeat is
still fresh but nobody answers), one silent for the state TTL ``offline``: the health page uses the
same rule with its own connections, so both agree within seconds.

``rows_from_api(snapshot)`` turns a node's ``/api/swarm`` (``status --http``) into the same rows.
"""

from __future__ import annotations

import time
from typing import Any

import trio

from swarmlm.crypto.identity import Identity
from swarmlm.node.dial import ensure_connected

SETTLE_S = 1.5  # the state counts as complete once its peer count held still this long
PROBE_S = 3.0  # per peer: dial and ping
PROBES_AT_ONCE = 16


async def _probe(host: Any, state: Any, peer: str, links: dict[str, str], rtts: dict[str, float]) -> None:
    with trio.move_on_after(PROBE_S):
        try:
            if await ensure_connected(host, state.state, peer):
                links[peer] = "up"
                rtts[peer] = round(await host.ping(peer), 2)
                return
        except Exception:  # any transport failure: not reachable from here
            pass
    links.setdefault(peer, "lost")


async def read_swarm(bootstrap: list[str], timeout_s: float = 20.0) -> list[dict[str, Any]]:
    """Rows of every peer in the swarm state (``SwarmState.status_rows`` plus ``rtt_ms``)."""
    from swarmlm.net.host import HostConfig, SwarmHost  # lazy: keeps `swarmlm --help` fast
    from swarmlm.net.state_service import StateService  # lazy: keeps `swarmlm --help` fast

    host = SwarmHost(Identity.generate(), HostConfig(listen=["/ip4/0.0.0.0/tcp/0"], bootstrap=bootstrap,
                                                     client_only=True))
    state = StateService(host, None, publish=False)
    links: dict[str, str] = {}
    rtts: dict[str, float] = {}
    async with host.running():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(state.run)
            deadline = trio.current_time() + timeout_s
            last, stable_since = -1, trio.current_time()
            while trio.current_time() < deadline:
                n = len(state.state.peers(time.time(), include_offline=True))
                if n != last:
                    last, stable_since = n, trio.current_time()
                elif n and trio.current_time() - stable_since >= SETTLE_S:
                    break
                await trio.sleep(0.1)
            limiter = trio.CapacityLimiter(PROBES_AT_ONCE)

            async def probe(peer: str) -> None:
                async with limiter:
                    await _probe(host, state, peer, links, rtts)

            async with trio.open_nursery() as probes:
                for entry in state.state.peers(time.time()):  # live by their own word: are they there?
                    probes.start_soon(probe, entry.peer_id)
            rows = state.state.status_rows(time.time(), links=links)
            nursery.cancel_scope.cancel()
    for row in rows:
        row["rtt_ms"] = rtts.get(row["peer_id"])
    return rows


def rows_from_api(snapshot: dict[str, Any]) -> list[dict[str, Any]]:
    """``/api/swarm``'s peers as status rows (the node's own view: its connections decide)."""
    rows = []
    for p in snapshot.get("peers") or []:
        if not isinstance(p, dict) or not isinstance(p.get("peer_id"), str):
            continue
        hosted = [f"{h.get('model')}[{h.get('start')}:{h.get('end')}]" for h in p.get("hosted") or []
                  if isinstance(h, dict)]
        status = str(p.get("status", "online"))
        rows.append({"peer_id": p["peer_id"], "agent": p.get("agent", ""), "reach": p.get("reach", "unknown"),
                     "addrs": p.get("addrs") or [], "hosted": hosted, "throughput": p.get("throughput"),
                     "free_kv": p.get("free_kv"), "load": p.get("load"), "heartbeat_age_s": p.get("heartbeat_age_s"),
                     "status": status, "online": status == "online", "rtt_ms": p.get("rtt_ms")})
    return rows
