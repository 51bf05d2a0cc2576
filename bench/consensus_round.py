"""`swarmlm bench consensus --round-time`: wall time of consensus rounds on a local swarm of real node processes.

N node processes (``LocalTestnet``) each host all of the model (default ``builtin:smollm2-135m``,
3 nodes, their sampling profiles derived from their peer ids, the default pairwise judge). A light
client joins, waits until every node is an eligible whole-model host, runs one warm-up round (first
model use: tokenizer, the judge's first forward) and then ``--rounds`` rounds with ``max_tokens``
``--max-tokens``, each timed from the client's ``ask`` call to its answer. The coordinator's phase
times (``timing`` in the ``ask`` reply: candidates, commits, reveals) show where a round goes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Any

import trio

from swarmlm.bench.common import emit, log, median, parser
from swarmlm.bench.swarm_client import light_client
from swarmlm.models.config import ModelConfig
from swarmlm.models.registry import resolve
from swarmlm.node.directory import eligible_hosts
from swarmlm.node.wire import CONSENSUS_PROTOCOL
from swarmlm.testnet.local import LocalTestnet

QUESTIONS = ("What is the capital of France? Answer in one sentence.",
             "How many legs does a spider have? Answer in one sentence.",
             "What is 7 times 8? Answer in one sentence.",
             "Which planet is closest to the sun? Answer in one sentence.")


async def _rounds(addr: str, model: str, nodes: int, rounds: int, max_tokens: int, k: int) -> list[dict[str, Any]]:
    async with light_client(addr) as client:
        st = client.state
        with trio.fail_after(120):
            while len(eligible_hosts(st, model, time.time())) < nodes:
                await trio.sleep(0.2)
        peer = sorted(eligible_hosts(st, model, time.time()))[0]
        out = []
        for i in range(rounds + 1):
            args = {"model": model, "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                    "max_new_tokens": max_tokens, "stop": [], "k": k}
            t = time.perf_counter()
            res = await client.host.rpc.call(peer, CONSENSUS_PROTOCOL, "ask", args, timeout=600)
            wall = time.perf_counter() - t
            row = {"round": i, "warmup": i == 0, "wall_s": round(wall, 3), "timing": res.get("timing", {}),
                   "candidates": len(res.get("scores", [])), "completion_tokens": res.get("completion_tokens"),
                   "dropped": res.get("dropped", [])}
            log(f"round {i}{' (warm-up)' if i == 0 else ''}: {wall:.2f} s {row['timing']}")
            out.append(row)
        return out


def run(model: str, nodes: int, rounds: int, max_tokens: int, threads: int) -> dict[str, Any]:
    n_layers = ModelConfig.from_dir(resolve(model)).num_hidden_layers
    base = tempfile.mkdtemp(prefix="swarmlm-bench-round-")
    args = ["--model", model, "--layers", f"0:{n_layers}", "--no-reachability"]
    env = {}
    if threads > 0:
        args += ["--threads", str(threads)]
        env["OMP_NUM_THREADS"] = str(threads)
    net = LocalTestnet(nodes, base, extra_args=args, env=env)
    log(f"starting {nodes} node processes hosting {model} in {base}")
    t = time.perf_counter()
    net.up(timeout=300)
    try:
        started = time.perf_counter() - t
        rows = trio.run(_rounds, net.nodes[0].addr, model, nodes, rounds, max_tokens, min(nodes, 5))
    finally:
        net.down()
    shutil.rmtree(base, ignore_errors=True)  # kept (node logs) only when the run failed
    timed = [r for r in rows if not r["warmup"]]
    phases = sorted({p for r in timed for p in r["timing"]})
    return {"model": model, "nodes": nodes, "max_tokens": max_tokens, "threads": threads,
            "loadavg": [round(x, 2) for x in os.getloadavg()], "start_s": round(started, 1),
            "round_s_median": round(median(r["wall_s"] for r in timed), 3),
            "round_s_max": round(max(r["wall_s"] for r in timed), 3),
            "phase_s_median": {p: round(median(r["timing"].get(p, 0.0) for r in timed), 3) for p in phases},
            "target_s": 15.0, "rounds": rows}


def summary(r: dict[str, Any]) -> str:
    lines = [f"bench consensus --round-time: {r['nodes']} nodes, {r['model']}, max_tokens {r['max_tokens']}, "
             f"load {r['loadavg']}",
             f"round (median of {len(r['rounds']) - 1}): {r['round_s_median']:.2f} s, max {r['round_s_max']:.2f} s "
             f"(target < {r['target_s']:g} s); warm-up {r['rounds'][0]['wall_s']:.2f} s",
             "phases (median): " + ", ".join(f"{k} {v:.2f} s" for k, v in r["phase_s_median"].items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = parser("consensus --round-time", __doc__.splitlines()[0])
    p.add_argument("--round-time", action="store_true", required=True)
    p.add_argument("--model", default="builtin:smollm2-135m")
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3, help="timed rounds after one warm-up round (default 3)")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="torch threads per node process (default 1; 0: torch's)")
    ns = p.parse_args(argv)
    if not 2 <= ns.nodes <= 8 or not 1 <= ns.rounds <= 50 or not 1 <= ns.max_tokens <= 256 or ns.threads < 0:
        p.error("--nodes must be 2..8, --rounds 1..50, --max-tokens 1..256, --threads at least 0")
    emit(run(ns.model, ns.nodes, ns.rounds, ns.max_tokens, ns.threads), ns.json, summary)
    return 0
