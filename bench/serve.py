"""`swarmlm bench serve`: many users at once, the way vLLM's serving benchmark measures them.

N concurrent streaming clients (N in ``--clients``, default 1, 4, 8, 16, 32), each asking a different
prompt for exactly ``--tokens`` new tokens (end-of-sequence ignored), against (a) one node holding the
whole model and (b) a 3-node pipeline (layers split in thirds), each with continuous batching on (the
node's default ``--max-batch-tokens``) and off (``--max-batch-tokens 1``: one session per batch). Both
swarms of a setup run side by side and the levels alternate on/off, so both see the same machine load.
The clients run in this process on a light client host per swarm (``PipelineGenerator``).

Per level: ``agg_tok_s`` (all generated tokens / wall time of the level), time to first token and
inter-token latency (p50/p95, ms, as each streaming client sees them), ``failed`` requests.

JSON: {"whole": {"on": {"1": {"agg_tok_s", "ttft_ms_p50", "ttft_ms_p95", "itl_ms_p50", "itl_ms_p95",
"failed"}, "4": ...}, "off": {...}}, "pipeline": {...}, "speedup_16": {"whole", "pipeline"},
"itl_p95_ratio_16": {...}, "model", "tokens", "threads", "max_batch_tokens", "loadavg"}; ``speedup_16`` =
agg tok/s with batching at 16 clients / batching off at 1 client; ``itl_p95_ratio_16`` = ITL p95 at 16
clients / at 1 client (batching on).
"""

from __future__ import annotations

import os
import tempfile
import time
from contextlib import AsyncExitStack
from typing import Any

import trio

from swarmlm.bench.common import emit, log, parser, percentile
from swarmlm.bench.swarm_client import light_client
from swarmlm.models.config import ModelConfig
from swarmlm.models.partition import split_layers
from swarmlm.models.registry import resolve
from swarmlm.models.sampling import SamplingParams
from swarmlm.node.client.pipeline import PipelineGenerator
from swarmlm.node.generation import GenerationRequest
from swarmlm.node.wire import SHARD_PROTOCOL
from swarmlm.testnet.local import LocalTestnet

TOPICS = ["lighthouses", "bees", "volcanoes", "the moon", "trains", "chess", "rain", "bread", "rivers", "owls",
          "glass", "maps", "violins", "deserts", "kites", "coral"]
MODES = {"on": [], "off": ["--max-batch-tokens", "1"]}


def prompt(i: int) -> str:
    return f"Write a few sentences about {TOPICS[i % len(TOPICS)]} (note {i}):" + " please" * (i % 5)


class NoEos:
    """The model's tokenizer without end-of-sequence ids: every client gets exactly ``--tokens`` tokens."""

    eos_token_ids: tuple[int, ...] = ()

    def __init__(self, tok: Any) -> None:
        self._tok = tok

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tok, name)


async def _level(client: PipelineGenerator, model: str, n: int, tokens: int) -> dict[str, Any]:
    ttft: list[float] = []
    itl: list[float] = []
    counts = {"tokens": 0, "failed": 0}
    errors: list[str] = []

    async def one(i: int) -> None:
        req = GenerationRequest(model=model, prompt=prompt(i), params=SamplingParams(max_new_tokens=tokens))
        t0 = time.perf_counter()
        last, seen = None, 0
        try:
            async with client.generate(req) as gen:
                async for _ in gen:
                    now = time.perf_counter()
                    k = len(gen.token_ids) - seen
                    seen = len(gen.token_ids)
                    if last is None:
                        ttft.append((now - t0) * 1000.0)
                        k -= 1
                    elif k > 0:
                        itl.extend([(now - last) * 1000.0 / k] * k)
                    last = now
            counts["tokens"] += len(gen.token_ids)
        except Exception as exc:  # counted and shown: a serving bench must not stop on one failure
            counts["failed"] += 1
            errors.append(f"{type(exc).__name__}: {exc}"[:160])

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(one, i)
    wall = time.perf_counter() - t0
    out = {"agg_tok_s": round(counts["tokens"] / wall, 2),
           "ttft_ms_p50": round(percentile(ttft, 0.5), 1), "ttft_ms_p95": round(percentile(ttft, 0.95), 1),
           "itl_ms_p50": round(percentile(itl, 0.5), 1), "itl_ms_p95": round(percentile(itl, 0.95), 1),
           "failed": counts["failed"], "wall_s": round(wall, 2)}
    if errors:
        out["errors"] = sorted(set(errors))[:3]
    return out


def _testnet(kind: str, mode: str, ns: Any, n_layers: int, base: str) -> LocalTestnet:
    ranges = [(0, n_layers)] if kind == "whole" else split_layers(n_layers, 3)
    threads = ns.threads
    args = {i: ["--model", ns.model, "--layers", f"{a}:{b}", "--threads", str(threads), "--no-reachability"]
            + MODES[mode] for i, (a, b) in enumerate(ranges)}
    env = {"OMP_NUM_THREADS": str(threads)} if threads > 0 else {}
    return LocalTestnet(len(ranges), os.path.join(base, f"{kind}-{mode}"), per_node_args=args, env=env)


async def _client(stack: AsyncExitStack, net: LocalTestnet, model: str, tokens: int) -> PipelineGenerator:
    client = await stack.enter_async_context(light_client(net.nodes[0].addr, step_timeout_s=120.0, busy_retries=10))
    with trio.fail_after(60):
        while len(client.state.peers(time.time())) < len(net.nodes):
            await trio.sleep(0.1)
    client.tokenizers[model] = NoEos(await client.tokenizer(model))
    await _level(client, model, 2, 4)  # warm-up: connections, the first batches
    return client


async def _max_batch_tokens(client: PipelineGenerator) -> int:
    peer = client.servers(next(iter(client.tokenizers)))[0].peer_id
    info = await client.host.rpc.call(peer, SHARD_PROTOCOL, "info", None, timeout=10)
    return int(info.get("max_batch_tokens", 0))


async def _run(ns: Any, result: dict[str, Any]) -> None:
    n_layers = ModelConfig.from_dir(resolve(ns.model)).num_hidden_layers
    base = tempfile.mkdtemp(prefix="swarmlm-bench-serve-")
    for kind in ns.setups:
        nets = {mode: _testnet(kind, mode, ns, n_layers, base) for mode in MODES}
        log(f"{kind}: starting two swarms of {nets['on'].n} node(s) (batching on / off) in {base}")
        try:
            for net in nets.values():
                await trio.to_thread.run_sync(net.up)
            async with AsyncExitStack() as stack:
                clients = {mode: await _client(stack, net, ns.model, ns.tokens) for mode, net in nets.items()}
                result["max_batch_tokens"][kind] = await _max_batch_tokens(clients["on"])
                res = result[kind] = {mode: {} for mode in MODES}
                for n in ns.clients:
                    for mode in MODES:
                        clients[mode].bans.until.clear()
                        r = await _level(clients[mode], ns.model, n, ns.tokens)
                        res[mode][str(n)] = r
                        log(f"{kind} batching {mode:>3} {n:>2} clients: {r}")
        finally:
            for net in nets.values():
                await trio.to_thread.run_sync(net.down)
        on, off = result[kind]["on"], result[kind]["off"]
        if "16" in on and "1" in off and off["1"]["agg_tok_s"] > 0:
            result["speedup_16"][kind] = round(on["16"]["agg_tok_s"] / off["1"]["agg_tok_s"], 2)
        if "16" in on and "1" in on and on["1"]["itl_ms_p95"] > 0:
            result["itl_p95_ratio_16"][kind] = round(on["16"]["itl_ms_p95"] / on["1"]["itl_ms_p95"], 2)


def _table(r: dict[str, Any]) -> str:
    lines = [f"bench serve: {r['model']}, {r['tokens']} tokens per client, load {r['loadavg']}"]
    for kind in ("whole", "pipeline"):
        if kind not in r:
            continue
        lines.append(f"{kind} (max_batch_tokens {r['max_batch_tokens'].get(kind)}): speedup_16 "
                     f"{r['speedup_16'].get(kind)}, ITL p95 16/1 {r['itl_p95_ratio_16'].get(kind)}")
        lines.append(f"  {'batching':>8} {'clients':>7} {'tok/s':>8} {'TTFT p50':>9} {'p95':>8} {'ITL p50':>8} "
                     f"{'p95':>7} {'failed':>6}")
        for mode in MODES:
            for n, c in r[kind][mode].items():
                lines.append(f"  {mode:>8} {n:>7} {c['agg_tok_s']:>8.1f} {c['ttft_ms_p50']:>9.0f} "
                             f"{c['ttft_ms_p95']:>8.0f} {c['itl_ms_p50']:>8.1f} {c['itl_ms_p95']:>7.1f} {c['failed']:>6}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = parser("serve", "N concurrent streaming clients, whole model and a 3-node pipeline, batching on and off")
    p.add_argument("--model", default="builtin:smollm2-135m")
    p.add_argument("--clients", default="1,4,8,16,32", help="comma-separated concurrency levels")
    p.add_argument("--tokens", type=int, default=32, help="new tokens per client")
    p.add_argument("--setups", default="whole,pipeline", help="whole, pipeline or both (comma-separated)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per node process (default 1: the clients and each node's network thread need "
                        "the other cores; 0: all cores)")
    ns = p.parse_args(argv)
    ns.clients = [int(x) for x in ns.clients.split(",") if x.strip()]
    ns.setups = [s for s in ns.setups.split(",") if s.strip()]
    if not ns.clients or any(n < 1 for n in ns.clients) or not set(ns.setups) <= {"whole", "pipeline"} or ns.tokens < 2:
        p.error("--clients needs positive numbers, --setups whole and/or pipeline, --tokens at least 2")
    result: dict[str, Any] = {"model": ns.model, "tokens": ns.tokens, "threads": ns.threads, "max_batch_tokens": {},
                              "speedup_16": {}, "itl_p95_ratio_16": {}}
    load0 = os.getloadavg()
    trio.run(_run, ns, result)
    result["loadavg"] = {"before": [round(x, 2) for x in load0], "after": [round(x, 2) for x in os.getloadavg()]}
    emit(result, ns.json, _table)
    return 0
