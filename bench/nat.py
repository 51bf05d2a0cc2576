"""`swarmlm bench nat`: hole punching through the netns NATs with our host (root).

Builds the simulated internet (``testnet/netns.py``), starts natlab agents (``testnet/natlab.py``),
and plays ``--trials`` fresh cone <-> cone trials (alternating direction): relayed connection, DCUtR,
direct connection. Reports the punch success rate, time from "connected through the relay" start to a
direct connection (median, p90, all), and echo-RPC RTT over the relay (punching off) vs direct.
Then the symmetric home C talks to A through the relay (``symmetric_relayed_ok``).

JSON: ``{"trials", "punch_success_rate", "time_to_direct_ms", "relayed_rtt_ms", "direct_rtt_ms",
"symmetric_relayed_ok", ...}``.
"""

from __future__ import annotations

from typing import Any, Sequence

from swarmlm.bench.common import emit, log, median, parser, percentile
from swarmlm.testnet.natlab import Lab
from swarmlm.testnet.netns import NetnsError, Topology, unavailable_reason


def run(trials: int, rtt_trials: int = 3) -> dict[str, Any]:
    reason = unavailable_reason()
    if reason:
        raise NetnsError(f"bench nat: {reason}")
    with Topology() as topo:
        lab = Lab(topo)
        try:
            rows = []
            for i in range(trials):
                x, y = ("a", "b") if i % 2 == 0 else ("b", "a")
                r = lab.trial(x, y, wait_s=8, pings=10)
                expected = f"/ip4/{topo.sites[y].public_ip}/tcp/{r.get('port')}"
                r["success"] = bool(r.get("ok")) and r.get("direct") == [expected] and r.get("via") == [expected]
                log(f"trial {i + 1}/{trials} {x}->{y}: {'direct' if r['success'] else 'NO direct'} "
                    f"relayed {r.get('relayed_ms')} ms, direct {r.get('direct_ms')} ms, rtt {r.get('rtt_ms')} ms")
                rows.append(r)
            relayed = []
            for i in range(rtt_trials):
                r = lab.trial("a", "b", punch=False, wait_s=0.01, pings=10)
                if r.get("ok") and not r.get("direct"):
                    relayed.append(r["rtt_ms"])
            log(f"relayed rtt (no punch) ms: {relayed}")
            sym = [lab.trial("c", "a", wait_s=3, pings=3) for _ in range(2)]
            sym_ok = all(s.get("ok") and not s.get("direct") and s.get("rtt_ms", 0) > 0 for s in sym)
        finally:
            lab.close()
    good = [r for r in rows if r["success"]]
    times = sorted(r["direct_ms"] for r in good)
    return {
        "trials": trials,
        "punch_success_rate": round(len(good) / trials, 3) if trials else 0.0,
        "time_to_direct_ms": {"median": round(median(times), 1) if times else None,
                              "p90": round(percentile(times, 0.9), 1) if times else None, "all": times},
        "relayed_rtt_ms": round(median(relayed), 3) if relayed else None,
        "direct_rtt_ms": round(median([r["rtt_ms"] for r in good]), 3) if good else None,
        "symmetric_relayed_ok": sym_ok,
        "relay_dial_ms": round(median([r["relayed_ms"] for r in rows if r.get("ok")]), 1) if rows else None,
        "failures": [{k: r.get(k) for k in ("error", "direct", "conns", "port")} for r in rows if not r["success"]],
    }


def _summary(r: dict[str, Any]) -> str:
    t = r["time_to_direct_ms"]
    return (f"cone<->cone punch: {r['punch_success_rate'] * 100:.0f}% of {r['trials']} trials; time to direct "
            f"median {t['median']} ms, p90 {t['p90']} ms\nRTT relayed {r['relayed_rtt_ms']} ms vs direct "
            f"{r['direct_rtt_ms']} ms; symmetric NAT over relay: {'ok' if r['symmetric_relayed_ok'] else 'FAILED'}")


def main(argv: Sequence[str] | None = None) -> int:
    p = parser("nat", "hole punching success and timing through simulated NATs (root)")
    p.add_argument("--trials", type=int, default=20, help="cone<->cone trials (default 20)")
    ns = p.parse_args(argv)
    emit(run(ns.trials), ns.json, _summary)
    return 0
