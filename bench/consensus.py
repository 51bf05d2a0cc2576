"""`swarmlm bench consensus`: seeded simulation of consensus rounds and the BT fit time.

Compares plurality voting, unweighted Bradley-Terry and reputation-weighted BT on simulated
multiple-choice rounds (see ``swarmlm.consensus.sim``), sweeps the share of colluding malicious
nodes from 0 to 50%, checks that weak judges make BT lose to majority, and times the weighted BT
fit for 50 candidates x 50 judges. Pure CPU, no model, no network; deterministic for a seed.
"""

from __future__ import annotations

import math
import sys
from dataclasses import replace
from typing import Any

from swarmlm.bench import consensus_real
from swarmlm.bench.common import emit, log, median, parser, percentile
from swarmlm.consensus.sim import SimConfig, fit_time_ms, simulate
from swarmlm.consensus.simhard import DEFENSES, HardConfig, over_seeds

SHARES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
HARD_SHARES = (0.0, 0.1, 0.2, 0.3, 0.4)


def run_hard(rounds: int, seeds: list[int]) -> dict[str, Any]:
    """The harder simulation (adaptive colluders, correlated judges): every cell a mean over seeds."""
    cells, targets = [], {}
    # (defense, rejoin, author prior): "ground" is the node's default; "ground/judges" the same without the
    # candidates' author priors (the judges' standing alone), to compare in the same run
    variants = [(d, "sleep", True) for d in DEFENSES] + [("ground", "attack", True), ("ground", "sleep", False)]
    for defense, rejoin, prior in variants:
        name = defense + ("" if rejoin == "sleep" else f"/{rejoin}") + ("" if prior else "/judges")
        margins = []
        for s in HARD_SHARES:
            r = over_seeds(HardConfig(rounds=rounds, malicious_share=s, defense=defense, rejoin=rejoin,
                                      author_prior=prior), seeds)
            log(f"hard, defense {name}, share {s:.0%}: majority {r['majority_acc']:.3f} bt {r['bt_acc']:.3f} "
                f"bt_rep {r['bt_rep_acc']:.3f} (+-{r['spread']['bt_rep_acc']['std']:.3f})")
            cells.append({"defense": name, "share": s, **r})
            if s <= 0.3:
                margins.append(r["bt_rep_acc"] - r["majority_acc"])
        # the target: BT + rep >= majority + 10 points on average over 0-30% colluders, no cell < -5
        targets[name] = {"mean_margin_0_30": round(100 * sum(margins) / len(margins), 1),
                         "worst_cell_margin_0_30": round(100 * min(margins), 1)}
    c = HardConfig()
    return {"seeds": seeds, "rounds": rounds, "attack": c.attack, "cells": cells, "targets": targets,
            "config": {k: v for k, v in c.__dict__.items() if k not in ("rounds", "seed", "malicious_share", "defense")}}


def run(rounds: int, share: float, warmup: int, seed: int, fit_repeats: int, seeds: int = 5,
        hard_rounds: int = 400) -> dict[str, Any]:
    base = SimConfig(rounds=rounds, malicious_share=share, seed=seed)
    log(f"main: {rounds} rounds, {base.pool} nodes, k={base.k}, malicious share {share:.0%}")
    main = simulate(base)
    curve = []
    for s in SHARES:
        cold = simulate(replace(base, malicious_share=s))
        est = simulate(replace(base, malicious_share=s, warmup_rounds=warmup))
        log(f"share {s:.0%}: majority {cold.majority_acc:.3f} bt {cold.bt_acc:.3f} "
            f"bt_rep {cold.bt_rep_acc:.3f} (established swarm {est.bt_rep_acc:.3f})")
        curve.append({"share": s, "majority_acc": round(cold.majority_acc, 4), "bt_acc": round(cold.bt_acc, 4),
                      "bt_rep_acc": round(cold.bt_rep_acc, 4),
                      "bt_rep_acc_established": round(est.bt_rep_acc, 4),
                      "majority_acc_established": round(est.majority_acc, 4)})
    weak = simulate(replace(base, malicious_share=0.0, judge_acc=(0.45, 0.65)))
    log(f"weak judges: majority {weak.majority_acc:.3f} bt {weak.bt_acc:.3f} bt_rep {weak.bt_rep_acc:.3f}")
    times, core = fit_time_ms(50, 50, repeats=fit_repeats, seed=seed)
    hard = run_hard(hard_rounds, list(range(seed, seed + seeds))) if seeds > 0 else None
    return {
        "hard": hard,
        "seeds": hard["seeds"] if hard else [],
        "spread": {f"{c['defense']}@{c['share']:g}": c["spread"] for c in hard["cells"]} if hard else {},
        "majority_acc": round(main.majority_acc, 4),
        "bt_acc": round(main.bt_acc, 4),
        "bt_rep_acc": round(main.bt_rep_acc, 4),
        "malicious_curve": curve,
        "fit_ms": round(median(times), 3),
        "fit_ms_p90": round(percentile(times, 0.9), 3),
        "fit_matrix_ms": round(median(core), 3),
        "bt_rep_acc_late": round(main.bt_rep_acc_late, 4),
        "best_node_acc": round(main.best_node_acc, 4),
        "mean_node_acc": round(main.mean_node_acc, 4),
        "rep_honest": round(main.rep_honest, 4),
        "rep_malicious": round(main.rep_malicious, 4),
        "weak_judges": {"judge_acc": [0.45, 0.65], "majority_acc": round(weak.majority_acc, 4),
                        "bt_acc": round(weak.bt_acc, 4), "bt_rep_acc": round(weak.bt_rep_acc, 4)},
        "config": {"rounds": rounds, "pool": base.pool, "k": base.k, "options": base.options,
                   "malicious_share": share, "answer_acc": list(base.answer_acc),
                   "judge_acc": list(base.judge_acc), "warmup_rounds": warmup, "seed": seed,
                   "fit": "50 candidates x 50 judges, 150 votes each"},
    }


def summary(r: dict[str, Any]) -> str:
    c = r["config"]

    def pct(x: float) -> str:
        return "  n/a " if math.isnan(x) else f"{100 * x:5.1f}%"

    lines = [
        f"consensus simulation: {c['rounds']} rounds, {c['pool']} nodes, {c['k']} per round, "
        f"{c['options']} options, seed {c['seed']}",
        f"main (malicious share {c['malicious_share']:.0%}, reputation learned from scratch):",
        f"  majority vote        {pct(r['majority_acc'])}",
        f"  Bradley-Terry        {pct(r['bt_acc'])}",
        f"  reputation-weighted  {pct(r['bt_rep_acc'])}   (second half: {pct(r['bt_rep_acc_late'])})",
        f"  best single node     {pct(r['best_node_acc'])}   mean honest node {pct(r['mean_node_acc'])}",
        f"  final reputation: honest nodes {r['rep_honest']:.3f}, malicious nodes {r['rep_malicious']:.3f} (mean)",
        "",
        "malicious share | majority |    BT    | BT+rep (cold) | BT+rep (established swarm)",
    ]
    for row in r["malicious_curve"]:
        lines.append(f"     {row['share']:4.0%}       |  {pct(row['majority_acc'])}  |  {pct(row['bt_acc'])}  |"
                     f"    {pct(row['bt_rep_acc'])}     |   {pct(row['bt_rep_acc_established'])}")
    w = r["weak_judges"]
    lines += ["",
              f"weak judges (pairwise accuracy {w['judge_acc'][0]}-{w['judge_acc'][1]}): majority "
              f"{pct(w['majority_acc'])}, BT {pct(w['bt_acc'])}, BT+rep {pct(w['bt_rep_acc'])}",
              f"weighted BT fit, 50 candidates x 50 judges (7500 votes): {r['fit_ms']:.2f} ms median from the "
              f"votes, {r['fit_ms_p90']:.2f} ms p90; {r['fit_matrix_ms']:.2f} ms on the win matrix (target < 20 ms)"]
    h = r.get("hard")
    if h:
        lines += ["", f"harder simulation ({h['attack']} colluders, correlated judges, self-preference), "
                      f"{h['rounds']} rounds, mean over seeds {h['seeds']} (std):",
                  "defense        share | majority        | BT              | BT+rep"]
        for c in h["cells"]:
            sp = c["spread"]
            lines.append(f"{c['defense']:<14} {c['share']:4.0%} | "
                         + " | ".join(f"{pct(c[m])} ({100 * sp[m]['std']:4.1f})" for m in ("majority_acc", "bt_acc",
                                                                                            "bt_rep_acc")))
        lines += [f"target (BT+rep - majority, 0-30%): {name}: mean {t['mean_margin_0_30']:+.1f} points, "
                  f"worst cell {t['worst_cell_margin_0_30']:+.1f}" for name, t in h.get("targets", {}).items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    if "--real" in (sys.argv[1:] if argv is None else argv):  # real model on the labeled set
        return consensus_real.main(argv)
    if "--round-time" in (sys.argv[1:] if argv is None else argv):  # rounds of real node processes
        from swarmlm.bench import consensus_round  # lazy: libp2p and node processes only for --round-time
        return consensus_round.main(argv)
    p = parser("consensus", __doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=800, help="rounds per simulation (default 800)")
    p.add_argument("--malicious", type=float, default=0.2, help="malicious share in the main run (default 0.2)")
    p.add_argument("--warmup", type=int, default=200,
                   help="honest-only rounds before attackers join, for the established-swarm curve (default 200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fit-repeats", type=int, default=50, help="timed BT fits (default 50)")
    p.add_argument("--seeds", type=int, default=5, help="seeds per cell of the harder simulation (default 5; 0: skip)")
    p.add_argument("--hard-rounds", type=int, default=400, help="rounds per harder-simulation run (default 400)")
    ns = p.parse_args(argv)
    if ns.rounds < 1 or not 0.0 <= ns.malicious <= 1.0:
        p.error("--rounds must be positive and --malicious within 0..1")
    if ns.seeds < 0 or ns.hard_rounds < 1:
        p.error("--seeds must be at least 0 and --hard-rounds positive")
    emit(run(ns.rounds, ns.malicious, ns.warmup, ns.seed, ns.fit_repeats, ns.seeds, ns.hard_rounds), ns.json, summary)
    return 0
