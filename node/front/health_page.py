"""HTML of the health page, rendered on the server from a ``health.swarm_snapshot`` dict.

``render_page`` is the whole document; ``render_fragment`` is the part inside ``<main>`` that
``static/health.js`` swaps in every 2 s. Every value is escaped. Elements carry ``data-*``
attributes (peer count, coverage, status) so tools and tests can read the page without parsing text.

Sections: the summary; "This node" (the address to hand out, CPU/RAM, sessions, requests and
errors); layer coverage; live peers; offline and departed peers apart, with when they were last
seen; consensus rounds; recent routes (this node's own asks and the sessions it served for any
client); a legend of statuses and reachability values.
"""

from __future__ import annotations

import time
from html import escape
from typing import Any


def short(peer_id: str | None) -> str:
    return "…" + peer_id[-8:] if peer_id else "-"


def _dur(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _ago(t: float | None, now: float) -> str:
    return "-" if not t else _dur(max(0.0, now - t)) + " ago"


def _num(v: Any, fmt: str = "{:.1f}") -> str:
    return "-" if v is None else fmt.format(v)


def _peer(pid: str | None, me: str) -> str:
    if not pid:
        return "-"
    label = short(pid) + (" (this node)" if pid == me else "")
    return f'<span class="pid" title="{escape(pid)}">{escape(label)}</span>'


def _model(m: dict[str, Any], me: str) -> str:
    n = m["layers"]
    gaps = set(layer for a, b in m["gaps"] for layer in range(a, b))
    state = "complete" if m["complete"] else "gaps"
    out = [f'<section class="model" data-model="{escape(m["model_id"])}" data-coverage="{state}" '
           f'data-layers="{n}">',
           f'<h3>{escape(m["model_id"])} <small>{n} layers · {escape(m["dtype"])} · '
           f'coverage {m["coverage"] * 100:.0f}%</small>'
           + ("" if m["complete"] else
              ' <span class="bad">gaps: ' + ", ".join(f"[{a}, {b})" for a, b in m["gaps"]) + "</span>")
           + "</h3>",
           '<div class="scroll"><table class="cov"><thead><tr><th>host</th>']
    out += [f'<th class="{"gap" if i in gaps else ""}">{i}</th>' for i in range(n)]
    out.append("</tr></thead><tbody>")
    for h in m["hosts"]:
        cls = "" if h["live"] else f' class="{escape(h["status"])}"'
        out.append(f'<tr{cls}><td>{_peer(h["peer_id"], me)} [{h["start"]}:{h["end"]})</td>')
        out += ['<td class="on"></td>' if h["start"] <= i < h["end"] else "<td></td>" for i in range(n)]
        out.append("</tr>")
    out.append('<tr class="count"><td>hosts per layer</td>')
    for i, hs in enumerate(m["layer_hosts"]):
        title = escape(", ".join(short(p) for p in hs) or "nobody")
        out.append(f'<td class="{"gap" if i in gaps else "ok"}" title="{title}">{len(hs)}</td>')
    out.append("</tr></tbody></table></div>")
    out.append('<table class="list"><thead><tr><th>host</th><th>layers</th><th>status</th>'
               '<th>throughput (tok/s)</th><th>free cache (tokens)</th><th>sessions</th><th>queued steps</th>'
               '<th>served (tok/s)</th></tr></thead><tbody>')
    for h in m["hosts"]:
        out.append(f'<tr class="{escape(h["status"])}"><td>{_peer(h["peer_id"], me)}</td>'
                   f'<td>[{h["start"]}, {h["end"]})</td><td>{escape(h["status"])}</td>'
                   f'<td>{_num(h["throughput"])}</td><td>{h["free_kv"]}</td><td>{h.get("sessions", 0)}</td>'
                   f'<td>{h.get("queue", 0)}</td><td>{_num(h.get("served_tok_s"))}</td></tr>')
    out.append("</tbody></table></section>")
    return "".join(out)


REACH_HELP = {
    "unknown": "no dial-back verdict yet: two peers must dial it back on a fresh connection and agree "
               "(a new node, a swarm of fewer than three nodes, or --no-reachability)",
    "public": "peers can dial it directly", "private": "behind a NAT or firewall, no relay slot yet",
    "relayed": "behind a NAT, reachable through a relay", "punched": "behind a NAT, connected here directly by hole punching",
}
STATUS_HELP = {
    "online": "fresh heartbeat and reachable", "disconnected": "heartbeat still fresh, but its connection to this node "
    "closed (a killed process shows here at once)", "left": "stopped cleanly: it published a signed leaving mark",
    "offline": "no heartbeat for the state TTL (it went silent)",
}


def _reach(value: str, extra: str = "") -> str:
    return f'<abbr title="{escape(REACH_HELP.get(value, ""))}">{escape(value)}</abbr>{extra}'


def _this_node(n: dict[str, Any]) -> str:
    boot = n.get("bootstrap")
    cpu, rss, ram, ram_pct = n.get("cpu_percent"), n.get("rss_mb"), n.get("ram_total_mb"), n.get("ram_used_percent")
    hand_out = (f'<p>Hand this address out to join the swarm: <code id="bootstrap-addr">{escape(boot)}</code><br>'
                f'<small>swarmlm node run --bootstrap {escape(boot)} --model …</small></p>' if boot else
                '<p class="empty">No dialable address yet.</p>')
    return ('<section id="this-node"' + f' data-sessions="{n.get("sessions_open", 0)}" data-requests="{n.get("http_requests", 0)}"'
            f' data-errors="{n.get("http_errors", 0)}">' + hand_out +
            '<table class="list kv"><tbody>'
            f'<tr><th>CPU (this process)</th><td>{_num(cpu, "{:.0f} %")}</td>'
            f'<th>memory (RSS)</th><td>{_num(rss, "{:.0f} MB")}</td>'
            f'<th>RAM of the machine</th><td>{_num(ram, "{:.0f} MB")} ({_num(ram_pct, "{:.0f} %")} used)</td></tr>'
            f'<tr><th>open sessions</th><td class="sessions">{n.get("sessions_open", 0)}</td>'
            f'<th>HTTP requests (errors)</th><td class="requests">{n.get("http_requests", 0)} '
            f'({n.get("http_errors", 0)})</td>'
            f'<th>RPC calls (errors)</th><td>{n.get("rpc_calls", 0)} ({n.get("rpc_errors", 0)})</td></tr>'
            "</tbody></table></section>")


def _departed(peers: list[dict[str, Any]], me: str, now: float) -> str:
    gone = [p for p in peers if p["status"] in ("left", "offline")]
    if not gone:
        return '<p class="empty">None.</p>'
    out = ['<table class="list peers departed"><thead><tr><th>peer</th><th>status</th><th>last seen</th>'
           '<th>hosted</th></tr></thead><tbody>']
    for p in gone:
        hosted = ", ".join(f'{h["model"]}[{h["start"]}:{h["end"]})' for h in p["hosted"]) or "-"
        out.append(f'<tr class="peer {escape(p["status"])}" data-peer="{escape(p["peer_id"])}" '
                   f'data-status="{escape(p["status"])}"><td>{_peer(p["peer_id"], me)}</td>'
                   f'<td><span class="dot"></span><abbr title="{escape(STATUS_HELP.get(p["status"], ""))}">'
                   f'{escape(p["status"])}</abbr></td><td class="last-seen">{_ago(p.get("last_seen"), now)}</td>'
                   f'<td>{escape(hosted)}</td></tr>')
    out.append("</tbody></table>")
    return "".join(out)


def _legend() -> str:
    return ('<dl class="legend"><dt>status</dt><dd>' + " · ".join(
        f"<b>{k}</b>: {escape(v)}" for k, v in STATUS_HELP.items()) + '</dd><dt>reachability</dt><dd>' + " · ".join(
        f"<b>{k}</b>: {escape(v)}" for k, v in REACH_HELP.items()) + "</dd></dl>")


def _peers(peers: list[dict[str, Any]], me: str, now: float) -> str:
    out = ['<table class="list peers"><thead><tr><th>peer</th><th>agent</th><th>status</th><th>reachability</th>'
           '<th>RTT from here</th><th>uptime</th><th>hosts</th><th>reputation</th><th>recent verdicts</th>'
           "</tr></thead><tbody>"]
    for p in peers:
        if p["status"] in ("left", "offline"):
            continue  # listed apart
        hosted = ", ".join(f'{h["model"]}[{h["start"]}:{h["end"]})' for h in p["hosted"]) or "-"
        verdicts = " ".join(
            f'<span class="verdict {"ok" if v["verdict"] in ("pass", "ok", "true") else "badv"}" '
            f'title="by {escape(v["by"])} {escape(_ago(v["at"], now))} {escape(v["detail"])}">'
            f'{escape(v["verdict"])}</span>' for v in p["verdicts"]) or "-"
        conn = "" if p["connection"] in ("self", "none") else f' <small>({escape(p["connection"])})</small>'
        out.append(
            f'<tr class="peer {escape(p["status"])}" data-peer="{escape(p["peer_id"])}" data-status="{escape(p["status"])}">'
            f'<td>{_peer(p["peer_id"], me)}</td><td>{escape(p["agent"])}</td>'
            f'<td><span class="dot"></span>{escape(p["status"])}</td><td>{_reach(p["reach"], conn)}</td>'
            f'<td>{_num(p["rtt_ms"], "{:.1f} ms")}</td><td>{_dur(p["uptime_s"])}</td><td>{escape(hosted)}</td>'
            f'<td>{_num(p["reputation"], "{:.3f}")}</td><td>{verdicts}</td></tr>')
    out.append("</tbody></table>")
    return "".join(out)


def _rounds(rounds: list[dict[str, Any]], me: str, now: float) -> str:
    if not rounds:
        return '<p class="empty">No consensus rounds in the swarm state yet.</p>'
    out = ['<table class="list"><thead><tr><th>round</th><th>when</th><th>coordinator</th><th>winner</th>'
           "<th>scores</th></tr></thead><tbody>"]
    for r in rounds:
        scores = " · ".join(f'{escape(short(s.get("peer_id")))} {_num(s.get("score"), "{:.3f}")}'
                            for s in r["scores"]) or "-"
        flag = "" if r.get("verified", True) else ' <span class="bad">unverified</span>'
        out.append(f'<tr><td>{escape(str(r["round_id"]))}{flag}</td><td>{_ago(r["at"], now)}</td>'
                   f'<td>{_peer(r["coordinator"], me)}</td><td>{_peer(r["winner"], me)}</td><td>{scores}</td></tr>')
    out.append("</tbody></table>")
    return "".join(out)


def _routes(routes: list[dict[str, Any]], me: str, now: float) -> str:
    if not routes:
        return '<p class="empty">No requests routed by this node yet.</p>'
    out = ['<table class="list routes"><thead><tr><th>when</th><th>asked by</th><th>model</th>'
           "<th>hops (layers, ms per step)</th><th>steps · tok/s</th></tr></thead><tbody>"]
    for r in routes:
        hops = " → ".join(f'{_peer(h.get("peer_id"), me)} [{h.get("start")}:{h.get("end")})'
                          + ("" if h.get("ms") is None else f' {_num(h.get("ms"), "{:.1f} ms")}')
                          for h in r.get("hops", []))
        served = r.get("source") == "served"
        who = f'client {_peer(r.get("client"), me)}' if served else "this node"
        speed = f'{r.get("steps", "-")} steps' if served else _num(r.get("tokens_per_s"), "{:.1f} tok/s")
        out.append(f'<tr class="route {"served" if served else "own"}"><td>{_ago(r.get("at"), now)}</td><td>{who}</td>'
                   f'<td>{escape(str(r.get("model", "")))}</td><td>{hops or "-"}</td><td>{speed}</td></tr>')
    out.append("</tbody></table>")
    return "".join(out)


def render_fragment(snap: dict[str, Any]) -> str:
    me, now, s = snap["node"]["peer_id"], snap["generated_at"], snap["summary"]
    complete = "true" if s["complete"] else "false"
    head = (f'<div id="summary" data-peers="{s["peers"]}" data-online="{s["online"]}" data-complete="{complete}" '
            f'data-generated="{now}"><b>{s["online"]}</b> of {s["peers"]} peers online · {s["models"]} model(s) · '
            + ('<span class="good">all layers covered</span>' if s["complete"] else '<span class="bad">layers missing</span>')
            + f' · viewed from {_peer(me, me)} (reachability {_reach(snap["node"]["reach"])}) · '
            f'updated {time.strftime("%H:%M:%S", time.localtime(now))}</div>')
    models = "".join(_model(m, me) for m in snap["models"]) or '<p class="empty">No model is served yet.</p>'
    live = [p for p in snap["peers"] if p["status"] not in ("left", "offline")]
    return (head + "<h2>This node</h2>" + _this_node(snap["node"]) + "<h2>Layer coverage</h2>" + models
            + f'<h2>Peers <small>({len(live)})</small></h2>' + _peers(snap["peers"], me, now)
            + f'<h2>Offline and departed peers <small>({len(snap["peers"]) - len(live)})</small></h2>'
            + _departed(snap["peers"], me, now)
            + "<h2>Recent consensus rounds</h2>" + _rounds(snap["rounds"], me, now)
            + "<h2>Recent routes</h2>" + _routes(snap["routes"], me, now) + _legend())


def render_page(snap: dict[str, Any]) -> str:
    return ('<!doctype html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>swarmlm · {escape(short(snap["node"]["peer_id"]))}</title>'
            '<link rel="stylesheet" href="/static/health.css"></head><body>'
            '<header><h1>swarmlm swarm health</h1><span id="live" class="live">live</span>'
            '<nav><a href="/api/swarm">JSON</a> · <a href="/metrics">metrics</a> · <a href="/v1/models">models</a></nav>'
            f'</header><main id="swarm">{render_fragment(snap)}</main>'
            '<script src="/static/health.js"></script></body></html>')
