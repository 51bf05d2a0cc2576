"""HTML of the health page, rendered on the server from a ``health.swarm_snapshot`` dict.

``render_page`` is the whole document; ``render_fragment`` is the part inside ``<main>`` that
``static/health.js`` swaps in every 2 s. Every value is escaped. Elements carry ``data-*``
attributes (peer count, coverage, status) so tools and tests can read the page without parsing text.
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


def _peers(peers: list[dict[str, Any]], me: str, now: float) -> str:
    out = ['<table class="list peers"><thead><tr><th>peer</th><th>agent</th><th>status</th><th>reachability</th>'
           '<th>RTT from here</th><th>uptime</th><th>hosts</th><th>reputation</th><th>recent verdicts</th>'
           "</tr></thead><tbody>"]
    for p in peers:
        hosted = ", ".join(f'{h["model"]}[{h["start"]}:{h["end"]})' for h in p["hosted"]) or "-"
        verdicts = " ".join(
            f'<span class="verdict {"ok" if v["verdict"] in ("pass", "ok", "true") else "badv"}" '
            f'title="by {escape(v["by"])} {escape(_ago(v["at"], now))} {escape(v["detail"])}">'
            f'{escape(v["verdict"])}</span>' for v in p["verdicts"]) or "-"
        conn = "" if p["connection"] in ("self", "none") else f' <small>({escape(p["connection"])})</small>'
        out.append(
            f'<tr class="peer {escape(p["status"])}" data-peer="{escape(p["peer_id"])}" data-status="{escape(p["status"])}">'
            f'<td>{_peer(p["peer_id"], me)}</td><td>{escape(p["agent"])}</td>'
            f'<td><span class="dot"></span>{escape(p["status"])}</td><td>{escape(p["reach"])}{conn}</td>'
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
    out = ['<table class="list"><thead><tr><th>when</th><th>model</th><th>hops (layers, ms per step)</th>'
           "<th>tok/s</th></tr></thead><tbody>"]
    for r in routes:
        hops = " → ".join(f'{_peer(h.get("peer_id"), me)} [{h.get("start")}:{h.get("end")}) '
                          f'{_num(h.get("ms"), "{:.1f} ms")}' for h in r.get("hops", []))
        out.append(f'<tr><td>{_ago(r.get("at"), now)}</td><td>{escape(str(r.get("model", "")))}</td>'
                   f'<td>{hops or "-"}</td><td>{_num(r.get("tokens_per_s"))}</td></tr>')
    out.append("</tbody></table>")
    return "".join(out)


def render_fragment(snap: dict[str, Any]) -> str:
    me, now, s = snap["node"]["peer_id"], snap["generated_at"], snap["summary"]
    complete = "true" if s["complete"] else "false"
    head = (f'<div id="summary" data-peers="{s["peers"]}" data-online="{s["online"]}" data-complete="{complete}" '
            f'data-generated="{now}"><b>{s["online"]}</b> of {s["peers"]} peers online · {s["models"]} model(s) · '
            + ('<span class="good">all layers covered</span>' if s["complete"] else '<span class="bad">layers missing</span>')
            + f' · viewed from {_peer(me, me)} ({escape(snap["node"]["reach"])}) · '
            f'updated {time.strftime("%H:%M:%S", time.localtime(now))}</div>')
    models = "".join(_model(m, me) for m in snap["models"]) or '<p class="empty">No model is served yet.</p>'
    return (head + "<h2>Layer coverage</h2>" + models
            + f'<h2>Peers <small>({len(snap["peers"])})</small></h2>' + _peers(snap["peers"], me, now)
            + "<h2>Recent consensus rounds</h2>" + _rounds(snap["rounds"], me, now)
            + "<h2>Recent routes</h2>" + _routes(snap["routes"], me, now))


def render_page(snap: dict[str, Any]) -> str:
    return ('<!doctype html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>swarmlm · {escape(short(snap["node"]["peer_id"]))}</title>'
            '<link rel="stylesheet" href="/static/health.css"></head><body>'
            '<header><h1>swarmlm swarm health</h1><span id="live" class="live">live</span>'
            '<nav><a href="/api/swarm">JSON</a> · <a href="/metrics">metrics</a> · <a href="/v1/models">models</a></nav>'
            f'</header><main id="swarm">{render_fragment(snap)}</main>'
            '<script src="/static/health.js"></script></body></html>')
