"""`swarmlm bench pipeline`: decode speed of builtin:smollm2-135m through 3 local node processes vs
the same model in one process, in the same run; plus the cost of one failover (a killed middle
server, replay on its replica).

JSON: {"local_tok_s", "pipeline_tok_s", "ratio", "ttft_ms", "per_hop_ms", "failover": {...}}; with
``--rtt-ms R [R ...]`` also ``"wan": {"<prompt set>": {"<R>": {...}}}`` (``bench/pipeline_wan.py``).
"""

from __future__ import annotations

import os
import signal
import statistics
import tempfile
import time
from typing import Any

from swarmlm.bench.common import emit, log, parser
from swarmlm.bench.pipeline_wan import run_wan
from swarmlm.models.generate import generate_stream, load_chain
from swarmlm.models.registry import resolve
from swarmlm.models.sampling import SamplingParams
from swarmlm.models.speculative_draft import load_draft_shard
from swarmlm.models.tokenizer import Tokenizer
from swarmlm.node.client.sdk import Client
from swarmlm.testnet.local import LocalTestnet

MODEL = "builtin:smollm2-135m"
PROMPT = [{"role": "user", "content": "Write a short story about a lighthouse keeper and a storm."}]


def _local(tokens: int, runs: int) -> dict[str, float]:
    tok = Tokenizer.from_dir(resolve(MODEL))
    ids = tok.encode_chat(PROMPT)
    shards = load_chain(MODEL, 1)
    rates = []
    for _ in range(runs):
        t0 = time.perf_counter()
        times: list[float] = []
        for _ev in generate_stream(shards, ids, SamplingParams(max_new_tokens=tokens), tok, eos_ids=[]):
            times.append(time.perf_counter())
        rates.append((len(times) - 1) / (times[-1] - times[0]))
        del t0
    return {"tok_s": statistics.median(rates)}


def _pipeline(net: Any, tokens: int, runs: int, kill_middle: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with Client([net.nodes[0].addr], join_timeout_s=60) as client:
        rates, ttfts, hop_ms = [], [], []
        for _ in range(runs):
            stamps: list[float] = []
            t0 = time.perf_counter()
            for _text in client.chat(PROMPT, model=MODEL, stream=True, max_new_tokens=tokens, stop=[]):
                stamps.append(time.perf_counter())
            s = client.last_summary
            rates.append(s.tokens_per_s)
            ttfts.append(s.ttft_ms)
            step_ms = 1000.0 / s.tokens_per_s if s.tokens_per_s else float("nan")
            compute = sum(h.ms for h in s.route)
            hop_ms.append((step_ms - compute) / (len(s.route) + 1))  # client->s1, s1->s2, s2->s3, s3->client
            del t0
        out.update(tok_s=statistics.median(rates), ttft_ms=statistics.median(ttfts),
                   per_hop_ms=statistics.median(hop_ms), route=[h.__dict__ for h in s.route])
        if kill_middle:
            out["failover"] = _failover(net, client, tokens)
    return out


def _failover(net: Any, client: Any, tokens: int) -> dict[str, Any]:
    """Kill the middle hop mid-generation; the slowest inter-token gap is the failover's cost."""
    route = client.route(MODEL)
    middle = route.hops[1].peer_id
    victim = next(n for n in net.nodes if n.ready["peer_id"] == middle)
    stamps: list[float] = []
    killed = False
    for _text in client.chat(PROMPT, model=MODEL, stream=True, max_new_tokens=tokens, stop=[]):
        stamps.append(time.perf_counter())
        if len(stamps) == tokens // 2 and not killed:
            os.killpg(victim.proc.pid, signal.SIGKILL)
            killed = True
    gaps = sorted(b - a for a, b in zip(stamps, stamps[1:]))
    normal = statistics.median(gaps)
    s = client.last_summary
    return {"failovers": s.failovers, "replayed_tokens": tokens // 2, "normal_step_ms": normal * 1000,
            "failover_step_ms": gaps[-1] * 1000, "extra_ms": (gaps[-1] - normal) * 1000}


def main(argv: list[str]) -> int:
    p = parser("pipeline", __doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=48)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--no-failover", action="store_true", help="skip the failover measurement")
    p.add_argument("--rtt-ms", type=float, nargs="+", default=[], metavar="R",
                   help="also run the pipeline with every link at these round trips "
                        "(client loop, server loop, speculative, both)")
    p.add_argument("--wan-only", action="store_true", help="with --rtt-ms: skip the loopback figures")
    p.add_argument("--draft-model", metavar="SPEC", help="with --rtt-ms: speculative drafts from this local model "
                   "(same tokenizer) instead of prompt lookup")
    p.add_argument("--repeats", type=int, default=1, help="with --rtt-ms: runs per prompt and mode (alternating)")
    ns = p.parse_args(argv)
    if any(not 0 <= r <= 10_000 for r in ns.rtt_ms):
        p.error("--rtt-ms values must be in 0..10000")
    if not 1 <= ns.repeats <= 20:
        p.error("--repeats must be in 1..20")
    resolve(MODEL)
    if ns.draft_model:  # a wrong draft model fails here, in one line, before any node starts
        load_draft_shard(ns.draft_model, Tokenizer.from_dir(resolve(MODEL)))
    if ns.wan_only and ns.rtt_ms:
        emit({"wan": run_wan(ns.rtt_ms, ns.tokens, ns.repeats, ns.draft_model), "tokens": ns.tokens}, ns.json)
        return 0
    log("local: whole model in this process")
    local = _local(ns.tokens, ns.runs)
    log(f"local decode {local['tok_s']:.2f} tok/s")
    layers = ["0:10", "10:20", "20:30"] + ([] if ns.no_failover else ["10:20"])
    with tempfile.TemporaryDirectory(prefix="swarmlm-bench-") as base:
        net = LocalTestnet(len(layers), base, extra_args=["--model", MODEL],
                           per_node_args={i: ["--layers", r] for i, r in enumerate(layers)})
        with net.up(timeout=300):
            log("pipeline: 3 node processes on loopback")
            pipe = _pipeline(net, ns.tokens, ns.runs, kill_middle=not ns.no_failover)
    result = {"local_tok_s": round(local["tok_s"], 2), "pipeline_tok_s": round(pipe["tok_s"], 2),
              "ratio": round(pipe["tok_s"] / local["tok_s"], 3), "ttft_ms": round(pipe["ttft_ms"], 1),
              "per_hop_ms": round(pipe["per_hop_ms"], 2), "tokens": ns.tokens, "runs": ns.runs}
    if "failover" in pipe:
        result["failover"] = {k: round(v, 1) if isinstance(v, float) else v for k, v in pipe["failover"].items()}
    if ns.rtt_ms:
        result["wan"] = run_wan(ns.rtt_ms, ns.tokens, ns.repeats, ns.draft_model)
    emit(result, ns.json)
    return 0
