"""The cost half of ``swarmlm bench verify``: tokens/s of a default client over an unverified one.

Two clients ask the same swarm in turn (``asks`` each): a default one (``ClientOptions()``: servers
new to it are checked on every step, established ones at ``check_fraction`` 0.1) and one with
verification off. Measured twice: while the servers are new to the default client, and once it has
seen every server of its route earn standing. ``on_swarm`` starts a swarm of its own (``--cost-model``:
a real model, 2 ranges x 2 replicas), so the cost is also seen where a step is real compute.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from typing import Any, Callable

import trio

from swarmlm.bench.common import log
from swarmlm.bench.swarm_client import light_client
from swarmlm.models.config import ModelConfig
from swarmlm.models.registry import resolve
from swarmlm.models.sampling import SamplingParams
from swarmlm.node.generation import GenerationRequest
from swarmlm.testnet.local import LocalTestnet


def client(addr: str, **options: Any) -> Any:
    """A light client of the bench's swarm (``bench/swarm_client.py``), peers discovered every second."""
    return light_client(addr, discovery_interval_s=1.0, **options)


async def listed(c: Any, model: str, peers: list[str]) -> None:
    with trio.fail_after(120):
        while not set(peers) <= {s.peer_id for s in c.servers(model)}:
            await trio.sleep(0.2)


async def _ask(c: Any, model: str, prompt: str, tokens: int) -> tuple[Any, float]:
    req = GenerationRequest(model=model, prompt=prompt, params=SamplingParams(max_new_tokens=tokens))
    t0 = time.perf_counter()
    try:
        async with c.generate(req) as g:
            async for _ in g:
                pass
    except Exception as exc:  # counted out of the rates: a cost bench must not stop on one failure
        log(f"  ask failed: {type(exc).__name__}: {str(exc)[:160]}")
        return None, time.perf_counter() - t0
    return g, time.perf_counter() - t0


async def measure(addr: str, model: str, peers: list[str], prompt: str, tokens: int, asks: int,
                  prepare: Callable[[Any], None] = lambda c: None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with client(addr) as default, client(addr, check_fraction=0.0) as off:
        for c in (default, off):
            await listed(c, model, peers)
            prepare(c)
        for phase in ("new_servers", "established"):
            if phase == "established":  # ask on until every server it may route through has standing
                for _ in range(60):
                    if all(default.standing.established(p) for p in peers):
                        break
                    await _ask(default, model, prompt, tokens)
            rates: dict[str, list[float]] = {"default": [], "unverified": []}
            for _ in range(asks):
                for name, c in (("default", default), ("unverified", off)):
                    gen, wall = await _ask(c, model, prompt, tokens)
                    if gen is not None:
                        rates[name].append(len(gen.token_ids) / wall)
            d, u = statistics.median(rates["default"]), statistics.median(rates["unverified"])
            out[phase] = {"ratio": round(d / u, 3), "default_tok_s": round(d, 2), "unverified_tok_s": round(u, 2)}
            log(f"  {model}, {phase}: {out[phase]}")
    return out


async def on_swarm(model: str, prompt: str, tokens: int, asks: int, parts: int = 2) -> dict[str, Any]:
    """The cost on a swarm of ``model`` of its own: ``parts`` layer ranges x 2 replicas (node
    processes; ``swarmlm bench verify --only cost`` runs builtin:tiny in the main bench's 3 ranges)."""
    n = ModelConfig.from_dir(resolve(model)).num_hidden_layers
    ranges = [f"{n * k // parts}:{n * (k + 1) // parts}" for k in range(parts)]
    args = {i: ["--layers", ranges[i // 2]] for i in range(2 * parts)}
    net = LocalTestnet(2 * parts, tempfile.mkdtemp(prefix="swarmlm-bench-verify-cost-"), extra_args=["--model", model],
                       per_node_args=args, env={"OMP_NUM_THREADS": "1", "SWARMLM_LOG_QUIET": "1"})
    log(f"cost on {model}: {2 * parts} node processes, layers {', '.join(ranges)} x 2")
    await trio.to_thread.run_sync(net.up)
    try:
        ids = [nd.ready["peer_id"] for nd in net.nodes]
        return await measure(net.nodes[0].addr, model, ids, prompt, tokens, asks)
    finally:
        await trio.to_thread.run_sync(net.down)
