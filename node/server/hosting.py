"""Deciding what a node hosts and loading it: model resolution, auto placement, shard loading,
the start-up speed measurement (``measure_speed``, the prior of ``node/server/speed.py``), and
rebalancing later on (with hysteresis, see placement.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any

import msgpack
import torch
import trio

from swarmlm.crypto.ee_checkpoint import read_ee_info
from swarmlm.errors import ConfigError
from swarmlm.models.config import ModelConfig
from swarmlm.models.kvcache import KVCacheManager
from swarmlm.models.registry import resolve, shard_bytes
from swarmlm.models.shard import load_shard
from swarmlm.net.state.schema import ModelInfo
from swarmlm.node.config import parse_layers
from swarmlm.node.directory import servers_for
from swarmlm.node.server.placement import choose_range, rebalance_candidates, should_rebalance
from swarmlm.node.server.speed import SpeedModel
from swarmlm.node.wire import ee_model_id

log = logging.getLogger("swarmlm.hosting")

# How long a node with bootstrap peers waits to learn the swarm before choosing layers.
PLACEMENT_WAIT_S = 3.0
REBALANCE_EVERY_S = 30.0


def memory_cap_layers(bytes_per_layer: int, fixed_bytes: int, cache_bytes: int, share: float = 0.6) -> int:
    """How many layers fit in ``share`` of the memory available now (psutil), beside cache and ends."""
    try:
        import psutil  # lazy: optional, not a declared dependency

        avail = psutil.virtual_memory().available
    except Exception:
        return 1 << 30
    room = avail * share - fixed_bytes - cache_bytes
    return max(1, int(room // max(1, bytes_per_layer)))


def config_hash(model_dir: Any) -> str:
    data = json.loads((model_dir / "config.json").read_text())
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times = sorted(times[1:])  # the first run warms up
    return times[len(times) // 2] * 1000.0


def measure_speed(shard: Any, repeats: int = 5, prefill: int = 32) -> SpeedModel:
    """The start-up estimate of ``node/server/speed.py``'s cost model: the median time of a one-token
    decode through the shard, and of a ``prefill``-token step (its extra tokens give the per-token cost)."""
    layers = max(1, shard.end - shard.start)
    sess = shard.new_session(max(repeats + 2, prefill))
    hidden = shard.config.hidden_size

    def x(n: int) -> torch.Tensor:
        return torch.zeros((1, n), dtype=torch.long) if shard.has_embedding else \
            torch.zeros((1, n, hidden), dtype=shard.dtype)

    try:
        one = x(1)
        step_ms = _median_ms(lambda: shard.forward(one, sess, 0, last_only=True), repeats)
        many = x(prefill)
        prefill_ms = _median_ms(lambda: shard.forward(many, sess, 0, last_only=True), max(1, repeats // 2))
    finally:
        sess.free()
    return SpeedModel(layers, step_ms, max(0.0, prefill_ms - step_ms) / (prefill - 1))


async def choose_layers(svc: Any, node: Any, n_layers: int, max_layers: int) -> tuple[int, int]:
    if svc.layers_spec != "auto":
        start, end = parse_layers(svc.layers_spec)
        if end > n_layers:
            raise ConfigError(f"layers: {svc.layers_spec} is beyond the model's {n_layers} layers")
        return start, end
    if node.config.bootstrap:  # let the state sync tell us who hosts what
        with trio.move_on_after(PLACEMENT_WAIT_S):
            while not any(p.peer_id != node.peer_id for p in node.state.state.peers(time.time())):
                await trio.sleep(0.1)
            await trio.sleep(0.5)  # the rest of the swarm arrives right behind the first entry
        log.info("[2/4] joined: %d peers known", len(node.state.state.peers(time.time())) - 1)
    servers = servers_for(node.state.state, svc.model_id, time.time(), exclude=node.peer_id)
    start, end = choose_range(n_layers, servers, max_layers)
    log.info("auto placement: layers [%d, %d) of %d (%d other servers known)", start, end, n_layers, len(servers))
    return start, end


async def load_hosted_shard(svc: Any, node: Any) -> tuple[Any, Any, SpeedModel]:
    t0 = time.monotonic()
    if node.config.threads:
        torch.set_num_threads(node.config.threads)
    log.info("[1/4] resolving %s", svc.model_id)
    model_dir = await trio.to_thread.run_sync(resolve, svc.model_id)
    cfg = ModelConfig.from_dir(model_dir)
    ee = read_ee_info(model_dir)
    if ee is not None:  # an equivariant-encryption variant is known to the swarm by its variant id only
        svc.model_id = ee_model_id(str(ee["variant_id"]))
        log.info("serving the encrypted variant %s (ids and activations are keyed)", svc.model_id)
    n = cfg.num_hidden_layers
    per_layer = max(1, shard_bytes(cfg, 0, 1, svc.dtype, embedding=False, head=False)[1])
    ends = shard_bytes(cfg, 0, 1, svc.dtype, embedding=True, head=True)[1] - per_layer
    cap = memory_cap_layers(per_layer, ends, 0)
    max_layers = min(n, svc.max_layers or n, cap)
    svc.max_layers_effective = max_layers
    start, end = await choose_layers(svc, node, n, max_layers)
    log.info("[3/4] loading layers [%d, %d) of %s (%s)", start, end, svc.model_id, svc.dtype)
    shard = await trio.to_thread.run_sync(load_shard, model_dir, start, end, svc.dtype)
    speed = await trio.to_thread.run_sync(measure_speed, shard)
    cache = KVCacheManager(shard.cache_layout(), svc.max_cache_tokens)
    node.state.publish_now(models=[ModelInfo(svc.model_id, config_hash(model_dir), n, svc.dtype)])
    log.info("[4/4] serving layers [%d, %d) of %s: %.2f ms/layer/token (+%.3f ms per extra token in a batch), "
             "%d cache tokens (ready in %.1f s)", start, end, svc.model_id, speed.ms_per_layer, speed.token_ms,
             svc.max_cache_tokens, time.monotonic() - t0)
    return shard, cache, speed


def provider_key(model_id: str) -> str:
    """The DHT provider key under which servers of ``model_id`` announce themselves."""
    return hashlib.sha256(f"swarmlm/model/{model_id}".encode()).hexdigest()


async def announce(svc: Any, node: Any) -> None:
    """DHT: a provider record for the model and a signed record of the hosted range."""
    sh = svc.shard
    try:
        with trio.move_on_after(10):
            await node.host.provide(provider_key(svc.model_id))
        with trio.move_on_after(10):
            await node.host.put_record("hosting", msgpack.packb(
                {"model": svc.model_id, "start": sh.start, "end": sh.end}))
    except Exception as exc:  # a lone node has nobody to store records with
        log.debug("DHT announcement failed: %s", exc)


async def maybe_rebalance(svc: Any, node: Any, waited: int) -> tuple[bool, int]:
    """Move to another layer range when placement says so (hysteresis and stagger included).

    Returns (moved, waited rounds). Sessions already open keep computing on the old weights until
    they close; new sessions get the new range."""
    sh = svc.shard
    n = sh.num_layers_total
    servers = servers_for(node.state.state, svc.model_id, time.time())
    cap = svc.max_layers_effective or (sh.end - sh.start)
    new = should_rebalance(n, servers, node.peer_id, (sh.start, sh.end), cap,
                           my_ms_per_layer=svc.ms_per_layer, waited_rounds=waited)
    if new is None:
        listed = any(m.peer_id == node.peer_id for m in rebalance_candidates(n, servers, max_layers={
            s.peer_id: s.end - s.start for s in servers} | {node.peer_id: cap}))
        return False, waited + 1 if listed else 0
    start, end = new
    log.info("rebalancing: layers [%d, %d) -> [%d, %d) of %s", sh.start, sh.end, start, end, svc.model_id)
    model_dir = sh.model_dir
    shard = await trio.to_thread.run_sync(load_shard, model_dir, start, end, svc.dtype)
    speed = await trio.to_thread.run_sync(measure_speed, shard)
    svc.replace_shard(shard, KVCacheManager(shard.cache_layout(), svc.max_cache_tokens), speed)
    node.on_hosting_changed()
    return True, 0
