"""`swarmlm bench crdt`: swarm-state convergence time and bytes sent for 10, 50 and 100 replicas.

In one process over the in-memory transport (``swarmlm.testnet.memnet``): build N engines on a
random graph (ring + chords, ``--degree`` links each), sync them, then make ``--updates`` random
writes (entry changes 70 %, signed records 20 %, model entries 10 %) on random nodes and deliver
until every replica holds identical state (anti-entropy rounds if messages were dropped).
``converge_ms`` is the wall time of the whole simulated swarm in this one process (all nodes'
signature checks and CRDT work run one after another), so real swarms converge faster than this
per node. ``bytes_sent`` counts every sync message of that phase. ``libp2p_10`` runs 10 nodes
over real libp2p on loopback (see ``bench_libp2p``; ``--no-libp2p`` skips it).
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

import trio

from swarmlm.bench.common import emit, log, parser
from swarmlm.crypto.identity import Identity
from swarmlm.net.host import HostConfig, SwarmHost
from swarmlm.net.state.rights import doc_owner
from swarmlm.net.state.schema import HostedRange, ModelInfo
from swarmlm.net.state.sync import StateSync
from swarmlm.net.state.wire import Limits
from swarmlm.net.state_service import StateService
from swarmlm.testnet.memnet import make_swarm, random_local_write, random_write


def bench_memory(n: int, updates: int, seed: int, degree: int, drop: float, lazy: bool = True) -> dict[str, Any]:
    t0 = time.perf_counter()
    net = make_swarm(n, seed=seed, degree=degree, limits=Limits(lazy_forward=lazy))
    for pid in sorted(net.nodes):  # everyone announces itself once, as at start-up
        net.send(pid, net.nodes[pid].publish_local(net.now, reach="public"))
    net.settle()
    join_ms = (time.perf_counter() - t0) * 1000.0
    net.bytes_sent = net.messages_sent = 0
    net.drop_rate = drop
    rng = random.Random(seed + 1)
    t0, c0 = time.perf_counter(), time.process_time()
    for k in range(updates):
        net.now += 0.001
        random_write(net, rng, k)
    net.run()
    net.drop_rate = 0.0
    rounds = net.settle(max_rounds=200)
    ms, cpu_ms = (time.perf_counter() - t0) * 1000.0, (time.process_time() - c0) * 1000.0
    if not net.converged():
        raise RuntimeError(f"{n} replicas did not converge")
    eng = next(iter(net.nodes.values()))
    sv = len(eng._sv_msg(reply=True))
    rejected = sum(sum(e.rejected.values()) for e in net.nodes.values())
    return {"converge_ms": round(ms, 1), "bytes_sent": net.bytes_sent, "cpu_ms": round(cpu_ms, 1),
            "messages": net.messages_sent,
            "anti_entropy_rounds": rounds, "join_ms": round(join_ms, 1), "links": len(net.links),
            "bytes_per_update": round(net.bytes_sent / max(updates, 1), 1), "state_vector_bytes": sv,
            "rejected": rejected, "records": len(eng.state.records())}


def entry_size() -> dict[str, int]:
    """Bytes of one typical peer entry: its Yjs full state, and as a signed snapshot envelope."""
    eng = StateSync(Identity.from_seed(b"\x07" * 32), now=1_764_000_000.0, rng=random.Random(0))
    eng.publish_local(1_764_000_000.0, addrs=["/ip4/203.0.113.7/tcp/4001", "/ip4/203.0.113.7/udp/4001/quic-v1"],
                      agent="swarmlm/0.1.0", hosted=[HostedRange("builtin:smollm2-135m", 0, 15)],
                      throughput=123.4, free_kv=65536, load=2.0, reach="public",
                      models=[ModelInfo("builtin:smollm2-135m", "ab" * 32, 30, "bf16", ("ee-1",))])
    for _ in range(10):  # ten heartbeats: updates overwrite values; the snapshot stays small
        eng.publish_local(1_764_000_010.0, load=1.0)
    update = eng.own.doc.full_update()
    snap = eng._seal(eng.peer_id, eng.own.seq, True, update)
    return {"yjs": len(update), "envelope": len(snap.raw)}


def bench_libp2p(n: int, updates: int, seed: int, degree: int = 4, lazy: bool = True) -> dict[str, Any]:
    """### LIBP2P PART: ``n`` nodes over real libp2p on loopback, protocol /swarmlm/state/1.

    ``SwarmHost`` + ``StateService`` per node in this process (trio), linked as a ring plus random
    chords; the same random writes as the in-memory part, each followed by a yield so the link
    writers run; converged when every engine's vector digest is equal. ``bytes_sent`` counts the
    state messages handed to the streams (as in memory; Noise/Yamux/framing overhead excluded).
    """

    def converged(svcs: list[Any]) -> bool:
        d = svcs[0].sync.digest()
        owners = {doc_owner(k) for k in svcs[0].sync.replicas}
        return all(s.sync.digest() == d for s in svcs) and len(owners) == len(svcs)

    async def wait(svcs: list[Any], timeout: float) -> None:
        with trio.fail_after(timeout):
            while not converged(svcs):
                await trio.sleep(0.005)

    async def run() -> dict[str, Any]:
        rng = random.Random(seed)
        hosts = [SwarmHost(Identity.from_seed(rng.randbytes(32)),
                           HostConfig(listen=["/ip4/127.0.0.1/tcp/0"], discovery_interval_s=3600.0))
                 for _ in range(n)]
        svcs = [StateService(h, None, heartbeat_s=3600.0, rng=random.Random(i)) for i, h in enumerate(hosts)]
        for s in svcs:
            s.sync.limits.lazy_forward = lazy
        async with trio.open_nursery() as nursery:
            async def run_host(h: Any, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
                async with h.running():
                    task_status.started()
                    await trio.sleep_forever()

            for h in hosts:
                await nursery.start(run_host, h)
            for s in svcs:
                nursery.start_soon(s.run)
            links = set()
            for i in range(n):
                links.add((i, (i + 1) % n))
                while sum(1 for link in links if i in link) < min(degree, n - 1):
                    j = rng.randrange(n)
                    if j != i:
                        links.add((min(i, j), max(i, j)))
            t0 = time.perf_counter()
            for i, j in sorted(links):
                await hosts[i].connect(hosts[j].addrs[0])
            await wait(svcs, 60.0)
            join_ms = (time.perf_counter() - t0) * 1000.0
            base = sum(s.bytes_out for s in svcs)
            t0, c0 = time.perf_counter(), time.process_time()
            for k in range(updates):
                s = svcs[rng.randrange(n)]
                s._dispatch(random_local_write(s.sync, rng, time.time(), k))
                await trio.sleep(0)
                while any(link.send.statistics().current_buffer_used > 64 for x in svcs for link in x.links.values()):
                    await trio.sleep(0.001)  # pace the burst to the links' speed instead of dropping
            await wait(svcs, 300.0)
            ms = (time.perf_counter() - t0) * 1000.0
            out = {"converge_ms": round(ms, 1), "bytes_sent": sum(s.bytes_out for s in svcs) - base,
                   "cpu_ms": round((time.process_time() - c0) * 1000.0, 1),
                   "join_ms": round(join_ms, 1), "links": len(links),
                   "dropped_on_full_queues": sum(link.dropped for s in svcs for link in s.links.values()),
                   "rejected": sum(sum(s.sync.rejected.values()) for s in svcs)}
            nursery.cancel_scope.cancel()
        return out

    logging.getLogger("swarmlm").setLevel(logging.WARNING)
    return trio.run(run)


def main(argv: list[str] | None = None) -> int:
    p = parser("crdt", "swarm-state convergence time and bytes for 10..100 replicas")
    p.add_argument("--sizes", default="10,50,100", help="replica counts, comma separated")
    p.add_argument("--updates", type=int, default=1000, help="random writes per run")
    p.add_argument("--degree", type=int, default=6, help="links per node in the in-memory graph")
    p.add_argument("--drop", type=float, default=0.0, help="fraction of messages lost (anti-entropy repairs)")
    p.add_argument("--forward", choices=["lazy", "eager"], default="lazy",
                   help="relays forward incrementals as have/want announcements (lazy, default) or in full")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--no-libp2p", action="store_true", help="skip the 10 nodes over libp2p")
    ns = p.parse_args(argv)
    result: dict[str, Any] = {"replicas": {}}
    for n in (int(x) for x in ns.sizes.split(",") if x):
        log(f"{n} replicas, {ns.updates} updates, degree {ns.degree}, drop {ns.drop}")
        result["replicas"][str(n)] = r = bench_memory(n, ns.updates, ns.seed, ns.degree, ns.drop,
                                                      lazy=ns.forward == "lazy")
        log(f"  converged in {r['converge_ms']:.0f} ms, {r['bytes_sent']} bytes, {r['messages']} messages")
    lp = None if ns.no_libp2p else bench_libp2p(10, ns.updates, ns.seed, lazy=ns.forward == "lazy")
    if lp is not None:
        log(f"  libp2p 10 nodes: {lp['converge_ms']:.0f} ms, {lp['bytes_sent']} bytes")
    result["libp2p_10"] = lp
    if lp is None:
        result["libp2p_note"] = "skipped"
    sizes = entry_size()
    result["bytes_per_peer_entry"] = sizes["yjs"]
    result["bytes_per_peer_entry_envelope"] = sizes["envelope"]
    result["params"] = {"updates": ns.updates, "degree": ns.degree, "drop": ns.drop, "seed": ns.seed,
                        "forward": ns.forward}

    def summary(r: dict[str, Any]) -> str:
        lines = [f"{'replicas':>8} {'converge_ms':>12} {'bytes_sent':>12} {'bytes/update':>13} {'sv bytes':>9}"]
        for k, v in r["replicas"].items():
            lines.append(f"{k:>8} {v['converge_ms']:>12.0f} {v['bytes_sent']:>12} {v['bytes_per_update']:>13.0f}"
                         f" {v['state_vector_bytes']:>9}")
        lp = r["libp2p_10"]
        lines.append(f"libp2p_10: {lp if lp else r.get('libp2p_note')}")
        lines.append(f"bytes per peer entry: {r['bytes_per_peer_entry']} (signed snapshot "
                     f"{r['bytes_per_peer_entry_envelope']})")
        return "\n".join(lines)

    emit(result, ns.json, summary)
    return 0
