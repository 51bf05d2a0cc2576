"""`swarmlm bench load`: N concurrent clients generating through a 3-node local pipeline.

Three node processes (``LocalTestnet``, layers split in three, ``--max-sessions`` each) and one
client host in this process running N generations at once, for N in ``--clients`` (default
1, 4, 16, 64). Per level: throughput (generated tokens / wall time), p50/p99 latency per token
(time between a generation's consecutive tokens), peak RSS per node process (VmHWM, so far), and
requests rejected with a clear "busy" error (``BusyError``, HTTP 429) when nodes shed load.

JSON: {"model", "tokens", "max_sessions", "clients": {"1": {"tok_s", "p50_ms", "p99_ms", "peak_rss_mb",
"rejected", "failed", "completed"}, ...}}; ``peak_rss_mb`` is a list, one value per node.
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

import trio

from swarmlm.bench.common import emit, log, parser, percentile
from swarmlm.crypto.identity import Identity
from swarmlm.models.config import ModelConfig
from swarmlm.models.partition import split_layers
from swarmlm.models.registry import resolve
from swarmlm.models.sampling import SamplingParams
from swarmlm.net.host import HostConfig, SwarmHost
from swarmlm.net.state_service import StateService
from swarmlm.node.client.options import ClientOptions
from swarmlm.node.client.pipeline import PipelineGenerator
from swarmlm.node.generation import BusyError, GenerationRequest
from swarmlm.testnet.local import LocalTestnet

PROMPT = "Tell me about the swarm"


def _vmhwm_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


async def _level(client: Any, model: str, n: int, tokens: int) -> dict[str, Any]:
    gaps: list[float] = []
    out = {"completed": 0, "rejected": 0, "failed": 0, "tokens": 0, "errors": []}

    async def one(i: int) -> None:
        req = GenerationRequest(model=model, prompt=f"{PROMPT} #{i}", params=SamplingParams(max_new_tokens=tokens))
        try:
            async with client.generate(req) as gen:
                last = None
                async for chunk in gen:
                    now = time.perf_counter()
                    k = len(chunk.token_ids)
                    if last is not None and k:
                        gaps.extend([(now - last) * 1000.0 / k] * k)
                    last = now
            out["completed"] += 1
            out["tokens"] += len(gen.token_ids)
        except BusyError as exc:
            out["rejected"] += 1
            out["errors"].append(str(exc)[:160])
        except Exception as exc:  # counted and shown: a load bench must not stop on one failure
            out["failed"] += 1
            out["errors"].append(f"{type(exc).__name__}: {exc}"[:160])

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(one, i)
    wall = time.perf_counter() - t0
    return {"tok_s": round(out["tokens"] / wall, 2), "p50_ms": round(percentile(gaps, 0.5), 2),
            "p99_ms": round(percentile(gaps, 0.99), 2), "rejected": out["rejected"], "failed": out["failed"],
            "completed": out["completed"], "wall_s": round(wall, 2), "errors": sorted(set(out["errors"]))[:3]}


async def _run(ns: Any, result: dict[str, Any]) -> None:
    n_layers = ModelConfig.from_dir(resolve(ns.model)).num_hidden_layers
    ranges = split_layers(n_layers, 3)
    base = tempfile.mkdtemp(prefix="swarmlm-bench-load-")
    per_node = {i: ["--model", ns.model, "--layers", f"{a}:{b}"] for i, (a, b) in enumerate(ranges)}
    net = LocalTestnet(3, base, per_node_args=per_node,
                       env={"OMP_NUM_THREADS": "1", "SWARMLM_MAX_SESSIONS": str(ns.max_sessions)})
    log(f"starting 3 nodes ({ns.model}, layers {ranges}, max {ns.max_sessions} sessions each) in {base}")
    await trio.to_thread.run_sync(net.up)
    try:
        host = SwarmHost(Identity.generate(), HostConfig(listen=["/ip4/127.0.0.1/tcp/0"], bootstrap=[net.nodes[0].addr]))
        state = StateService(host, None, publish=False)
        async with host.running(), trio.open_nursery() as nursery:
            nursery.start_soon(state.run)
            with trio.fail_after(60):
                while len(state.state.peers(time.time())) < 3:
                    await trio.sleep(0.1)
            client = PipelineGenerator(host, state, ClientOptions(step_timeout_s=60.0, busy_retries=ns.busy_retries))
            await _level(client, ns.model, 1, 4)  # warm-up: tokenizer, connections
            for n in ns.clients:
                client.bans.until.clear()
                log(f"{n} concurrent clients x {ns.tokens} tokens")
                r = await _level(client, ns.model, n, ns.tokens)
                r["peak_rss_mb"] = [round(_vmhwm_mb(node.pid), 1) for node in net.nodes]
                result["clients"][str(n)] = r
                log(f"  {r}")
            nursery.cancel_scope.cancel()
    finally:
        await trio.to_thread.run_sync(net.down)


def _table(r: dict[str, Any]) -> str:
    lines = [f"bench load: {r['model']}, 3 local nodes (max {r['max_sessions']} sessions each), {r['tokens']} tokens "
             f"per client",
             f"{'clients':>7} {'tok/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'rejected':>8} {'failed':>6}  peak RSS per node (MB)"]
    for n, c in r["clients"].items():
        lines.append(f"{n:>7} {c['tok_s']:>8.1f} {c['p50_ms']:>8.1f} {c['p99_ms']:>8.1f} {c['rejected']:>8} "
                     f"{c['failed']:>6}  {' '.join(f'{x:.0f}' for x in c['peak_rss_mb'])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = parser("load", "concurrent clients through a 3-node local pipeline: throughput, latency, RSS, shedding")
    p.add_argument("--model", default="builtin:tiny")
    p.add_argument("--clients", default="1,4,16,64", help="comma-separated concurrency levels")
    p.add_argument("--tokens", type=int, default=16, help="new tokens per client")
    p.add_argument("--max-sessions", type=int, default=32, help="max_sessions of each node (SWARMLM_MAX_SESSIONS; load shedding)")
    p.add_argument("--busy-retries", type=int, default=3,
                   help="busy answers a client absorbs (backing off) before it reports the request rejected")
    ns = p.parse_args(argv)
    ns.clients = [int(x) for x in ns.clients.split(",") if x.strip()]
    result: dict[str, Any] = {"model": ns.model, "tokens": ns.tokens, "max_sessions": ns.max_sessions,
                              "busy_retries": ns.busy_retries, "clients": {}}
    try:
        trio.run(_run, ns, result)
    except BaseException as exc:  # noqa: BLE001 - a teardown error after the figures must not hide them
        if len(result["clients"]) < len(ns.clients):
            raise
        log(f"teardown: {type(exc).__name__}: {str(exc)[:200]}")
    emit(result, ns.json, _table)
    return 0
