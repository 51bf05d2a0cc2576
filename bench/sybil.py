"""`swarmlm bench sybil`: an honest swarm under Sybil attacks, one attack class and size at a time.

Five honest node processes (``LocalTestnet``, builtin:tiny, layers 0:3, 3:6, 0:3, 3:6, 0:6, HTTP on
each; node 0 is everyone's bootstrap and the honest client's gateway), an honest client asking node
0's HTTP API continuously (``/v1/completions``, 4 tokens, one request at a time, in a thread), and
for every attack class (``--attacks``; see ``testnet/sybil_payloads.py``) and every M in
``--identities``: an attacker process (``python -m swarmlm.testnet.sybil``, idle CPU priority)
makes M identities and starts their hosts, a baseline window runs without attack, then the
attacker connects, attacks all five nodes for ``--attack-s`` and leaves. The log shows the slowest
honest request per second of the attack and the p95 per route length in both windows. Standing
is earned first: the client warms up until node 0's witness records made the servers it used
established.

JSON: {"model", "nodes", "attack_s", "results": {attack: {M: {"honest_success", "honest_p95_ms",
"baseline_p95_ms", "max_rss_mb", "rss_growth_mb", "recovered_s", "requests"}}}, "targets": {...},
"pass": bool}. ``recovered_s``: seconds from the attacker's exit until an honest request succeeded
and every node's ``/v1/models`` lists the model with its true layer count and full coverage (no
lingering ban, no lingering wrong shape); null if not within ``--recover-s``.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from typing import Any

from swarmlm.bench.common import emit, log, parser, percentile
from swarmlm.testnet.local import LocalTestnet
from swarmlm.testnet.sybil import ALL_PARTS, RPC_PARTS
from swarmlm.testnet.sybil_payloads import ATTACKS

MODEL = "builtin:tiny"
LAYERS = ["0:3", "3:6", "0:3", "3:6", "0:6"]
N_LAYERS = 6
TARGETS = {"honest_success": 0.99, "p95_ratio": 2.0, "rss_growth_mb": 200.0, "recovered_s": 60.0}


def _http(url: str, body: dict | None = None, timeout: float = 30.0) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"} if data else {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


class HonestClient:
    """Asks ``/v1/completions`` in a loop on a thread; records (start, ms, ok)."""

    def __init__(self, base: str, prompt: str = "Tell me about the swarm") -> None:
        self.base, self.prompt = base, prompt
        self.samples: list[tuple[float, float, bool]] = []
        self.hops: dict[float, int] = {}  # a sample's start -> its route's hop count
        self.slow: list[tuple[float, Any]] = []  # (ms, the swarm extension of answers slower than 2 s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                r = _http(self.base + "/v1/completions", {"model": MODEL, "prompt": self.prompt, "max_tokens": 4})
                ok = bool(r.get("choices"))
            except Exception as exc:  # counted as a failure: the bench measures exactly this
                ok, r = False, {"error": str(exc)[:200]}
            ms = (time.monotonic() - t0) * 1000.0
            if ok:
                self.hops[t0] = len((r.get("swarm") or {}).get("route") or [])
            self.samples.append((t0, ms, ok))
            if ms > 2000:
                self.slow.append((ms, r.get("swarm", r)))
            if not ok:
                time.sleep(0.1)

    def start(self) -> "HonestClient":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def window(self, t0: float, t1: float) -> list[tuple[float, float, bool]]:
        return [s for s in list(self.samples) if t0 <= s[0] < t1]


def _unhealthy(urls: list[str]) -> str:
    """Why the swarm is not recovered yet ("" when every node lists the model with its true shape
    and full coverage: nobody wrongly avoided, no wrong shape left)."""
    for i, base in enumerate(urls):
        try:
            cards = {c["id"]: c for c in _http(base + "/v1/models", timeout=5)["data"]}
        except Exception as exc:  # a node not answering is not recovered
            return f"node {i}: /v1/models: {type(exc).__name__}"
        card = cards.get(MODEL)
        if card is None or card["swarm"]["num_layers"] != N_LAYERS or card["swarm"]["coverage"] < 1.0:
            return f"node {i}: {card and card['swarm']}"
    return ""


def _warm_up(client: HonestClient, urls: list[str], timeout: float) -> int:
    """Until the servers node 0's client routed through are established in node 1's view (their
    standing earned from node 0's witness records); the number of established peers there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            used = {h["peer_id"] for r in _http(urls[0] + "/api/swarm")["routes"] for h in r["hops"]}
            peers = _http(urls[1] + "/api/swarm")["peers"]
            established = {p["peer_id"] for p in peers if (p.get("standing") or 0) >= 1.0}
            if used and used <= established:
                return len(established)
        except Exception:  # not up yet
            pass
        time.sleep(1.0)
    return -1


def _idle_priority() -> None:
    """In the attacker's child process: run only on CPU the honest processes leave idle (SCHED_IDLE,
    and nice 19 where that is not allowed): its own CPU models machines elsewhere. It still shares
    the cores' caches: one and two idle-class busy loops alone raised the honest p95 1.3x and 1.4x
    here."""
    os.nice(19)
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def _log_windows(client: HonestClient, base: list[tuple[float, float, bool]],
                 during: list[tuple[float, float, bool]], t_attack: float) -> None:
    """Where the time went: the slowest honest request per second of the attack, and each
    window's p95 per route length (the planner may move between routes of different lengths)."""
    by_second: dict[int, list[float]] = {}
    for t, ms, ok in during:
        by_second.setdefault(int(t - t_attack), []).append(ms)
    log("  slowest honest request by second of the attack: "
        + " ".join(f"{k}:{max(v):.0f}" for k, v in sorted(by_second.items())))
    for name, window in (("baseline", base), ("attack", during)):
        per_route: dict[int, list[float]] = {}
        for t, ms, ok in window:
            if ok:
                per_route.setdefault(client.hops.get(t, 0), []).append(ms)
        log(f"  {name} by route length: " + ", ".join(
            f"{h} hop(s): {len(v)} requests, p95 {percentile(v, 0.95):.1f} ms" for h, v in sorted(per_route.items())))


def _phase(net: LocalTestnet, client: HonestClient, urls: list[str], attack: str, m: int,
           ns: Any) -> dict[str, Any]:
    pids = [n.pid for n in net.nodes]
    rss0 = {p: _rss_mb(p) for p in pids}
    # the attacker is spawned before the baseline window and has made its identities and started
    # their hosts when it says "ready"; what is measured is what the honest nodes pay from its first
    # connection on
    cmd = [sys.executable, "-m", "swarmlm.testnet.sybil", "--wait-go", "--attack", attack,
           "--identities", str(m), "--duration", str(ns.attack_s), "--model", MODEL, "--parts", ns.rpc_parts]
    cmd += [x for n in net.nodes for x in ("--target", n.addr)]
    # its stderr goes to a file: a pipe nobody reads until it exits fills up and stalls it
    errf = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errf,
                            env=dict(os.environ), preexec_fn=_idle_priority)
    assert proc.stdout is not None
    if not select.select([proc.stdout], [], [], 180.0)[0] or proc.stdout.readline().strip() != b"ready":
        log("  the attacker did not say it was ready (it exited, or 180 s passed): going on")
    time.sleep(1.0)  # its start-up's last CPU
    log(f"  attacker ready; {ns.baseline_s:.0f} s baseline, then the attack")
    t_base = time.monotonic()
    time.sleep(ns.baseline_s)
    t_attack = time.monotonic()
    assert proc.stdin is not None
    proc.stdin.write(b"go\n")
    proc.stdin.close()
    peak = dict(rss0)
    while proc.poll() is None:
        for p in pids:
            peak[p] = max(peak[p], _rss_mb(p))
        if time.monotonic() - t_attack > ns.attack_s + 60:  # it should have left: make it
            log("  the attacker overstayed its duration by 60 s: killed")
            proc.kill()
        time.sleep(0.5)
    t_left = time.monotonic()
    errf.seek(0)
    err = errf.read().decode(errors="replace")[-300:]
    errf.close()
    recovered, why = None, ""
    while time.monotonic() - t_left < ns.recover_s:
        for p in pids:
            peak[p] = max(peak[p], _rss_mb(p))
        ok_after = any(ok for t, _, ok in client.window(t_left, time.monotonic()))
        prev, why = why, (_unhealthy(urls) if ok_after else "no honest answer since the attacker left")
        if why != prev and why:
            log(f"  +{time.monotonic() - t_left:.1f} s: {why}")
        if not why:
            recovered = round(time.monotonic() - t_left, 2)
            break
        time.sleep(0.5)
    slow = sorted(client.window(t_attack, time.monotonic()), key=lambda x: -x[1])[:3]
    log("  slowest honest requests: " + ", ".join(f"{ms:.0f} ms at +{t - t_left:.1f} s ({'ok' if ok else 'failed'})"
                                                  for t, ms, ok in slow))
    for ms, info in client.slow:
        log(f"  slow request {ms:.0f} ms: {json.dumps(info)[:400]}")
    client.slow.clear()
    if why:
        log(f"  not recovered after {ns.recover_s:.0f} s: {why}")
    elif recovered and recovered > 5:
        log(f"  recovered after {recovered} s")
    during = client.window(t_attack, t_left)
    base = client.window(t_base, t_attack)
    _log_windows(client, base, during, t_attack)
    res = {"honest_success": round(sum(ok for *_, ok in during) / max(1, len(during)), 4),
           "honest_p95_ms": round(percentile([ms for _, ms, ok in during if ok], 0.95), 1),
           "baseline_p95_ms": round(percentile([ms for _, ms, ok in base if ok], 0.95), 1),
           "max_rss_mb": round(max(peak.values()), 1),
           "rss_growth_mb": round(max(peak[p] - rss0[p] for p in pids), 1),
           "recovered_s": recovered, "requests": len(during)}
    if proc.returncode:
        res["attacker_error"] = err
    return res


def _passes(r: dict[str, Any]) -> bool:
    p95, base = r["honest_p95_ms"], r["baseline_p95_ms"]
    return (r["honest_success"] >= TARGETS["honest_success"] and r["recovered_s"] is not None
            and r["rss_growth_mb"] <= TARGETS["rss_growth_mb"] and p95 == p95 and base == base
            and p95 <= TARGETS["p95_ratio"] * base)


def main(argv: list[str] | None = None) -> int:
    p = parser("sybil", __doc__.split("\n")[0])
    p.add_argument("--attacks", default=",".join(ATTACKS), help=f"comma-separated, of {', '.join(ATTACKS)}")
    p.add_argument("--identities", default="1,16,256", help="attacker identities per run, comma-separated")
    p.add_argument("--attack-s", type=float, default=8.0)
    p.add_argument("--baseline-s", type=float, default=10.0,
                   help="honest requests before each attack, the p95 baseline (default 10: a few hundred requests)")
    p.add_argument("--recover-s", type=float, default=60.0)
    p.add_argument("--warmup-s", type=float, default=90.0)
    p.add_argument("--rpc-parts", default=",".join(RPC_PARTS),
                   help=f"the rpc attack's parts, comma-separated, of {', '.join(ALL_PARTS)} (to tell what costs; "
                        "idle: connect only)")
    p.add_argument("--log-level", default="warning", help="the nodes' log level (their logs: --dir)")
    p.add_argument("--dir", help="run the nodes in this directory and keep their logs (default: a temporary one)")
    ns = p.parse_args(argv)
    attacks = [a for a in ns.attacks.split(",") if a]
    sizes = [int(x) for x in ns.identities.split(",") if x]
    bad = [a for a in attacks if a not in ATTACKS]
    bad_parts = [x for x in ns.rpc_parts.split(",") if x not in ALL_PARTS]
    if bad or bad_parts or not sizes or min(sizes) < 1:
        p.error(f"--attacks takes {', '.join(ATTACKS)}; --rpc-parts {', '.join(ALL_PARTS)}; "
                "--identities positive integers")
    results: dict[str, dict[str, Any]] = {}
    with (contextlib.nullcontext(ns.dir) if ns.dir else tempfile.TemporaryDirectory(prefix="swarmlm-sybil-")) as tmp:
        net = LocalTestnet(5, tmp, extra_args=["--model", MODEL, "--threads", "1", "--no-reachability"],
                           per_node_args={i: ["--layers", lay] for i, lay in enumerate(LAYERS)},
                           env={"SWARMLM_WITNESS_S": "3", "SWARMLM_LOG_LEVEL": ns.log_level}, http=True)
        with net.up():
            urls = ["http://" + n.ready["http"] for n in net.nodes]
            log(f"5 honest nodes up; gateway {urls[0]}")
            warm = HonestClient(urls[0], prompt=" ".join(["swarm"] * 120)).start()
            established = _warm_up(warm, urls, ns.warmup_s)
            warm.stop()
            log(f"warm-up done: {established} peers established in node 1's view")
            client = HonestClient(urls[0]).start()
            try:
                for attack in attacks:
                    for m in sizes:
                        log(f"attack {attack} with {m} identities ...")
                        r = _phase(net, client, urls, attack, m, ns)
                        results.setdefault(attack, {})[str(m)] = r
                        log(f"  {attack} M={m}: {json.dumps(r)}")
            finally:
                client.stop()
    out = {"model": MODEL, "nodes": 5, "attack_s": ns.attack_s, "established_after_warmup": established,
           "results": results, "targets": TARGETS,
           "pass": all(_passes(r) for per in results.values() for r in per.values())}
    emit(out, ns.json, _summary)
    return 0


def _summary(out: dict[str, Any]) -> str:
    lines = [f"{'attack':10} {'M':>4} {'success':>8} {'p95 ms':>8} {'base ms':>8} {'rss MB':>7} {'+rss':>6} {'recov s':>7}"]
    for attack, per in out["results"].items():
        for m, r in per.items():
            lines.append(f"{attack:10} {m:>4} {r['honest_success']:>8.3f} {r['honest_p95_ms']:>8.1f} "
                         f"{r['baseline_p95_ms']:>8.1f} {r['max_rss_mb']:>7.0f} {r['rss_growth_mb']:>6.0f} "
                         f"{str(r['recovered_s']):>7}")
    lines.append(f"all targets met: {out['pass']}")
    return "\n".join(lines)
