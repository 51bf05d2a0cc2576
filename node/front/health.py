"""The swarm health page, its JSON API and the Prometheus endpoint, as routes of the node's HTTP API.

- ``GET /``                 the health page: server-rendered HTML (``health_page.render_page``) that
                            re-fetches ``/api/swarm/fragment`` every 2 s (``static/health.js``);
- ``GET /api/swarm``        the same data as JSON (``swarm_snapshot``; schema in docs/OPERATIONS.md);
- ``GET /api/swarm/fragment`` the page body alone (what the script swaps in);
- ``GET /metrics``          Prometheus text format (``swarmlm.node.front.metrics``);
- ``GET /static/{name}``    the page's CSS and JS, served from ``node/static`` (no CDN, no build step).

Everything is read from this node's view at request time: the swarm state (who hosts which layers,
heartbeats, leaving marks), the host's peer table and live connections (RTT, whether a peer just
left), the signed records in the state (consensus rounds, verification verdicts, reputation), the
routes its own client used and those of the sessions it served (any client's: `swarmlm ask`, the
SDK), and the operator's view of this node (``health_node``: the address to hand out, CPU/RAM,
sessions, request and error counts). A peer's status is ``net.state.swarm.peer_status``, the rule
`swarmlm status` and `peers` use too: ``left`` at once for a peer that stopped cleanly (its signed
leaving mark), ``disconnected`` at once for one whose connection to this node dropped (a killed
process), ``offline`` after the state TTL for one that went silent. Only ``online`` peers count
toward coverage. Rows: this node, then online peers, then the others by how recently they were seen.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import trio
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from swarmlm.version import AGENT_VERSION
from swarmlm.consensus.audit import verify_record
from swarmlm.consensus.reputation import compute_reputation
from swarmlm.node.front.health_cache import MAX_MODELS, MAX_PEERS, SnapshotCache, round_summary, verdict_rows
from swarmlm.net.state.swarm import peer_status
from swarmlm.node.front.health_node import ProcessStats, operator_view, served_routes
from swarmlm.node.front.health_page import render_fragment, render_page
from swarmlm.node.front.metrics import CONTENT_TYPE
from swarmlm.node.verification import verdicts_from_state

log = logging.getLogger("swarmlm.health")

STATIC_DIR = Path(__file__).parent / "static"
STATIC_FILES = {"health.css": "text/css; charset=utf-8", "health.js": "text/javascript; charset=utf-8"}
OPEN_PATHS = ("/", "/api/swarm", "/api/swarm/fragment", "/metrics",
              *(f"/static/{name}" for name in STATIC_FILES))
SHOW_OFFLINE_S = 600.0  # offline peers stay listed (greyed) this long after their last heartbeat
MAX_ROUNDS = 10
SCHEMA_VERSION = 1
REPUTATION_CACHE_S = 30.0


class HealthTracker:
    """What this node has observed over time: since when each peer is up, whom it was connected to."""

    def __init__(self) -> None:
        self.up_since: dict[str, float] = {}
        self.was_connected: set[str] = set()
        self.round_rows: dict[str, dict[str, Any]] = {}  # record key -> its row (verified once)
        self.reputation: tuple[Any, float, dict[str, float]] | None = None  # (records seen, when, scores)
        self.verdict_authors: Any = None  # whose verdicts count (the node's standing view), None: all

    def observe(self, peer: str, live: bool, connected: bool, now: float) -> float | None:
        """Record one observation; returns how long ``peer`` has been up as seen from here."""
        if connected:
            self.was_connected.add(peer)
        if not live:
            self.up_since.pop(peer, None)
            return None
        return now - self.up_since.setdefault(peer, now)


# -- reading the node ----------------------------------------------------------------------------

def _connection(node: Any, peer: str) -> str:
    """'direct' / 'relayed' for a live connection from this node, 'none' without one."""
    host = node.host
    try:
        if not host.is_connected(peer):
            return "none"
        conns = host.libp2p.get_network().get_connections(host._peer(peer))
        kinds = {str(getattr(c.get_connection_type(), "name", "")).lower() for c in conns}
        return "relayed" if kinds and all("relay" in k for k in kinds) else "direct"
    except Exception:  # libp2p internals moved: a live connection of unknown kind
        return "direct" if host.is_connected(peer) else "none"


def _reach(entry_reach: str, connection: str) -> str:
    """A relayed peer we reach over a direct connection got there by hole punching."""
    if entry_reach == "relayed" and connection == "direct":
        return "punched"
    return entry_reach


def _verdicts(state: Any) -> dict[str, list[dict[str, Any]]]:
    """Verification verdict records by the peer they judge (newest first; schema-checked)."""
    return verdict_rows(state)


def _rounds(state: Any, tracker: HealthTracker) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Recent consensus rounds (newest first) and the reputation the signed rounds imply."""

    rounds, shown = [], {}
    for rec in list(reversed(state.records(kind="round")))[:MAX_ROUNDS]:
        body = rec.body
        if rec.key in tracker.round_rows:  # verified once: records never change
            rounds.append(shown.setdefault(rec.key, tracker.round_rows[rec.key]))
            continue
        row: dict[str, Any] = {"round_id": rec.key[:16], "coordinator": rec.author, "at": rec.created,
                               "winner": None, "scores": []}
        if isinstance(body, (bytes, bytearray)):  # a signed consensus RoundRecord
            try:
                v = verify_record(bytes(body))
                strengths = v.record.strengths
                row.update(round_id=v.round_id[:16], at=v.time, winner=v.node_of(v.record.winner),
                           scores=sorted(({"peer_id": v.node_of(c), "score": round(strengths.get(c, 0.0), 4)}
                                          for c in v.candidate_ids), key=lambda s: -s["score"]))
                row["verified"] = True
            except Exception as exc:  # noqa: BLE001 - shown, not trusted
                row["verified"], row["error"] = False, str(exc)[:120]
        elif isinstance(body, dict):  # a plain summary {"round_id", "winner", "scores": {peer: score}}
            round_summary(body, row)
        rounds.append(row)
        shown[rec.key] = row
    tracker.round_rows = shown  # only the rows on display are kept
    reputation: dict[str, float] = {}
    recs = [r for r in state.records(kind="round") if isinstance(r.body, (bytes, bytearray))]
    cal_recs = [r for r in state.records(kind="calibration") if isinstance(r.body, (bytes, bytearray))]
    key = (tuple(r.key for r in recs), tuple(r.key for r in cal_recs), tuple(r.key for r in state.records(kind="verdict")))
    cached = tracker.reputation
    if recs and cached is not None and cached[0] == key and time.monotonic() - cached[1] < REPUTATION_CACHE_S:
        return rounds, cached[2]  # the fold verifies every record: not on every 2 s refresh
    verdicts = verdicts_from_state(state, tracker.verdict_authors)
    if recs or verdicts:
        all_blobs, cals = [bytes(r.body) for r in recs], [bytes(r.body) for r in cal_recs]
        try:
            reputation = compute_reputation(all_blobs, time.time(), calibrations=cals, verdicts=verdicts).scores()
        except Exception as exc:  # noqa: BLE001
            log.debug("reputation fold failed: %s", exc)
    tracker.reputation = (key, time.monotonic(), reputation)
    return rounds, reputation


def _coverage(model: Any, hosts: list[dict[str, Any]]) -> dict[str, Any]:
    n = model.layers
    layer_hosts: list[list[str]] = [[] for _ in range(n)]
    for h in hosts:
        if not h["live"]:
            continue
        for layer in range(max(0, h["start"]), min(n, h["end"])):
            layer_hosts[layer].append(h["peer_id"])
    gaps, start = [], None
    for layer in range(n + 1):
        empty = layer < n and not layer_hosts[layer]
        if empty and start is None:
            start = layer
        elif not empty and start is not None:
            gaps.append([start, layer])
            start = None
    covered = sum(1 for x in layer_hosts if x)
    return {"model_id": model.model_id, "layers": n, "dtype": model.dtype, "config_hash": model.config_hash,
            "coverage": round(covered / n, 4) if n else 0.0, "complete": covered == n, "gaps": gaps,
            "hosts": sorted(hosts, key=lambda h: (h["start"], h["end"], h["peer_id"])), "layer_hosts": layer_hosts}


STATUS_ORDER = {"online": 0, "disconnected": 1, "left": 2, "offline": 3}


def _sort_key(p: dict[str, Any]) -> tuple:
    """This node first, then online peers by id, then the others, most recently seen first."""
    return (not p["self"], STATUS_ORDER.get(p["status"], 4), p["heartbeat_age_s"] if p["status"] != "online" else 0,
            p["peer_id"])


def swarm_snapshot(node: Any, tracker: HealthTracker | None = None, now: float | None = None,
                   metrics: Any = None, proc: ProcessStats | None = None) -> dict[str, Any]:
    """Everything the health page shows, as plain JSON-ready values (see docs/OPERATIONS.md)."""
    tracker = tracker if tracker is not None else HealthTracker()
    now = time.time() if now is None else now
    state = node.state.state
    me = node.peer_id
    verdicts = _verdicts(state)
    rounds, reputation = _rounds(state, tracker)
    consensus = node.consensus
    if consensus is not None:  # the node's own policy (calibration on or off) and incremental book
        try:
            reputation = dict(consensus.reputation(now).scores())
        except Exception as exc:  # noqa: BLE001 - the page shows what it can
            log.debug("reputation from the consensus service failed: %s", exc)
    trust = getattr(node, "trust", None)
    standing = trust.standing_map() if trust is not None else None  # this node's view (node/trust.py)
    peers, status = [], {}
    listed = state.peers(now, include_offline=True)
    listed = [e for e in listed if e.peer_id == me] + [e for e in listed if e.peer_id != me][:MAX_PEERS]
    for e in listed:
        age = e.age(now)
        if age > SHOW_OFFLINE_S and e.peer_id != me:
            continue
        is_self = e.peer_id == me
        conn = "self" if is_self else _connection(node, e.peer_id)
        link = "up" if conn != "none" else "lost" if e.peer_id in tracker.was_connected else "unknown"
        st = "online" if is_self else peer_status(e, now, state.ttl, link)
        status[e.peer_id] = st
        uptime = tracker.observe(e.peer_id, st == "online", conn not in ("none", "self"), now)
        epoch = getattr(state.docs.get(e.peer_id), "epoch", 0) / 1000.0  # its state epoch began at its start
        if uptime is not None and 0 < now - epoch < 10 * 365 * 86400:
            uptime = now - epoch
        if is_self:
            try:
                uptime = trio.current_time() - node.started_at if node.started_at else uptime
            except RuntimeError:  # not inside trio (tests calling directly)
                pass
        info = node.host.peers.get(e.peer_id)
        peers.append({
            "peer_id": e.peer_id, "self": is_self, "agent": e.agent, "status": st,
            "reach": node.reachability if is_self else _reach(e.reach, conn), "connection": conn,
            "rtt_ms": None if is_self or st != "online" or info is None or info.rtt_ms is None else round(info.rtt_ms, 2),
            "last_seen": round(e.heartbeat, 3), "left": round(e.left, 3) if e.has_left else None,
            "uptime_s": None if uptime is None else round(uptime, 1), "heartbeat_age_s": round(max(0.0, age), 1),
            "hosted": [{"model": h.model, "start": h.start, "end": h.end} for h in e.hosted],
            "throughput": round(e.throughput, 2), "free_kv": e.free_kv, "load": round(e.load, 3),
            "sessions": e.sessions, "queue": e.queue, "served_tok_s": round(e.served, 1),
            "reputation": None if e.peer_id not in reputation else round(reputation[e.peer_id], 4),
            "standing": None if standing is None else round(standing.get(e.peer_id, 0.0), 3),
            "verdicts": verdicts.get(e.peer_id, []),
        })
    peers.sort(key=_sort_key)
    models = []
    for model in list(state.models(now).values())[:MAX_MODELS]:
        hosts = [{"peer_id": p["peer_id"], "start": h["start"], "end": h["end"], "throughput": p["throughput"],
                  "free_kv": p["free_kv"], "sessions": p["sessions"], "queue": p["queue"],
                  "served_tok_s": p["served_tok_s"], "status": p["status"], "live": p["status"] == "online"}
                 for p in peers for h in p["hosted"] if h["model"] == model.model_id]
        models.append(_coverage(model, hosts))
    own = [dict(r, source="client") for r in (node.client.recent_routes if node.client is not None else [])]
    routes = sorted(own + served_routes(node), key=lambda r: -float(r.get("at") or 0))[:10]
    return {
        "version": SCHEMA_VERSION, "generated_at": round(now, 3),
        "node": {"peer_id": me, "agent": AGENT_VERSION, "reach": node.reachability, "http": node.http_addr,
                 "addrs": list(node.host.addrs[:4]), "state_ttl_s": state.ttl,
                 **operator_view(node, metrics, proc)},
        "summary": {"peers": len(peers), "online": sum(1 for p in peers if p["status"] == "online"),
                    "models": len(models), "complete": all(m["complete"] for m in models) if models else False},
        "models": models, "peers": peers, "rounds": rounds, "routes": routes,
    }


# -- routes --------------------------------------------------------------------------------------

def health_routes(node: Any, metrics: Any) -> list[Any]:
    """The routes above for ``node`` (added to the HTTP app by ``HttpService``); ``metrics``: its ``NodeMetrics``."""
    tracker, proc = HealthTracker(), ProcessStats()
    trust = getattr(node, "trust", None)
    tracker.verdict_authors = trust.is_established if trust is not None else None
    no_cache = {"cache-control": "no-store"}

    def snapshot() -> dict[str, Any]:
        return swarm_snapshot(node, tracker, metrics=metrics, proc=proc)

    cache = SnapshotCache(snapshot)  # one bounded summary per second at most

    async def page(request: Request) -> Response:
        return HTMLResponse(await cache.rendered("page", render_page), headers=no_cache)

    async def fragment(request: Request) -> Response:
        return HTMLResponse(await cache.rendered("fragment", render_fragment), headers=no_cache)

    async def api(request: Request) -> Response:
        return JSONResponse(await cache.get(), headers=no_cache)

    async def prometheus(request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC_FILES:
            return PlainTextResponse("not found", status_code=404)
        return Response((STATIC_DIR / name).read_bytes(), media_type=STATIC_FILES[name])

    return [Route("/", page), Route("/api/swarm", api), Route("/api/swarm/fragment", fragment),
            Route("/metrics", prometheus), Route("/static/{name}", static)]
