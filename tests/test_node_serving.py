"""Many users at once on in-process nodes (builtin:tiny): concurrent generations are batched and give
the tokens lone ones give (greedy and seeded, whole model and a pipeline's middle hop), a cancelled one
leaves the rest correct, admission answers busy with a retry hint and recovers (also beyond a peer's
share of the sessions), idle sessions expire,
the advertised speed follows a server made slower, and routing spreads concurrent sessions."""

from __future__ import annotations

import time
from collections import Counter
from contextlib import AsyncExitStack

import torch
import trio

from swarmlm.models.sampling import SamplingParams
from swarmlm.node.client.session import HopFailed, HopPlan, PipelineSession
from swarmlm.node.generation import GenerationRequest
from swarmlm.node.server.speed import SpeedModel

from helpers import running_nodes, swarm_client

MODEL = "builtin:tiny"
PROMPTS = ["hi", "a somewhat longer prompt about swarms", "third one", "and the fourth prompt here is long-ish too"]


def params(i: int, seeded: bool) -> SamplingParams:
    if seeded:
        return SamplingParams(max_new_tokens=10, temperature=0.9, top_k=20, seed=5 + i)
    return SamplingParams(max_new_tokens=10)


async def generate(client, prompt: str, sp: SamplingParams, stop_after: int | None = None) -> list[int]:
    async with client.generate(GenerationRequest(model=MODEL, prompt=prompt, params=sp)) as gen:
        async for _ in gen:
            if stop_after is not None and len(gen.token_ids) >= stop_after:
                break  # the user goes away: the generation and its sessions end here
    return list(gen.token_ids)


async def concurrently(client, jobs: list[tuple[str, SamplingParams, int | None]]) -> list[list[int]]:
    out: list[list[int]] = [[] for _ in jobs]

    async def one(i: int) -> None:
        out[i] = await generate(client, *jobs[i])

    async with trio.open_nursery() as nursery:
        for i in range(len(jobs)):
            nursery.start_soon(one, i)
    return out


async def check_batched_equals_lone(client, nodes) -> None:
    for seeded in (False, True):
        jobs = [(p, params(i, seeded), None) for i, p in enumerate(PROMPTS)]
        lone = [await generate(client, *job) for job in jobs]
        for n in nodes:
            n.shard.batcher.stats["max_pieces"] = 0
        assert await concurrently(client, jobs) == lone
        assert all(n.shard.batcher.stats["max_pieces"] >= 2 for n in nodes)  # they really were batched


async def test_whole_model_server_batches_cancels_admits_and_measures(tmp_path):
    async with running_nodes(tmp_path, [["--model", MODEL, "--max-cache-tokens", "400"]]) as nodes:
        svc = nodes[0].shard
        async with swarm_client(nodes[0]) as client:
            await check_batched_equals_lone(client, nodes)

            # one user leaves after 3 tokens while the others keep decoding in the same batches
            jobs = [(p, params(i, False), 3 if i == 1 else None) for i, p in enumerate(PROMPTS[:3])]
            lone = [await generate(client, p, sp) for p, sp, _ in jobs]
            got = await concurrently(client, jobs)
            assert got[0] == lone[0] and got[2] == lone[2] and got[1] == lone[1][:3]

            # admission against free cache tokens: busy with a retry hint, then room again
            peer = nodes[0].peer_id
            await client.ensure_connected(peer)
            first = PipelineSession(client.host.rpc, MODEL, [HopPlan(peer, 0, 6)], 300, {"seed": 1})
            async with first:
                with trio.fail_after(10):  # the open reaches the server a moment later (headers are paced)
                    while not svc.sessions:
                        await trio.sleep(0.01)
                assert svc.cache.free_tokens == 100
                try:
                    async with PipelineSession(client.host.rpc, MODEL, [HopPlan(peer, 0, 6)], 300, {"seed": 1}) as more:
                        await more.step(torch.tensor([[1, 2, 3]]), 0)  # the server's answer to the open comes first
                        raise AssertionError("a session beyond the cache budget was admitted")
                except HopFailed as exc:
                    assert exc.busy and exc.retry_after is not None and 0 < exc.retry_after <= 60
                await first.step(torch.tensor([[1, 2, 3]]), 0)
            with trio.fail_after(10):
                while svc.sessions:
                    await trio.sleep(0.01)
            assert svc.cache.free_tokens == 400
            # one peer may not take a server's last sessions: they are kept for other peers
            svc.max_sessions, cap = 8, 7
            assert svc.peer_session_cap() == cap
            async with AsyncExitStack() as stack:
                for _ in range(cap):
                    await stack.enter_async_context(PipelineSession(client.host.rpc, MODEL, [HopPlan(peer, 0, 6)], 40, {"seed": 1}))
                try:
                    async with PipelineSession(client.host.rpc, MODEL, [HopPlan(peer, 0, 6)], 40, {"seed": 1}) as more:
                        await more.step(torch.tensor([[1, 2]]), 0)  # the server's answer to the open comes first
                        raise AssertionError("a peer was admitted beyond its share of the sessions")
                except HopFailed as exc:
                    assert exc.busy and "per peer" in str(exc)
                async with swarm_client(nodes[0]) as other:
                    await other.ensure_connected(peer)
                    async with PipelineSession(other.host.rpc, MODEL, [HopPlan(peer, 0, 6)], 40, {"seed": 1}) as theirs:
                        assert (await theirs.step(torch.tensor([[1, 2]]), 0)).token is not None
            svc.max_sessions = 64
            with trio.fail_after(10):
                while svc.sessions:
                    await trio.sleep(0.01)
            async with PipelineSession(client.host.rpc, MODEL, [HopPlan(peer, 0, 6)], 300, {"seed": 1}) as again:
                assert (await again.step(torch.tensor([[1, 2, 3]]), 0)).token is not None

                # idle sessions expire and give their cache back
                assert svc.expire_idle(now=time.monotonic() + 3600) == list(svc.sessions)
                with trio.fail_after(10):
                    while svc.sessions:
                        await trio.sleep(0.01)
                assert svc.cache.free_tokens == 400

            # the advertised speed follows a server that is made slower
            before = svc.hosted_fields()["throughput"]
            compute = svc.batcher.compute

            def slower(pieces):
                time.sleep(0.05)
                return compute(pieces)

            svc.batcher.compute = slower
            await generate(client, "slow now", SamplingParams(max_new_tokens=24))
            fields = svc.hosted_fields()
            assert fields["throughput"] < before / 2 and fields["served"] > 0
            nodes[0].state.publish_now()
            entry = next(e for e in client.state.peers(time.time()) if e.peer_id == peer)
            with trio.fail_after(10):
                while entry.throughput >= before / 2:
                    await trio.sleep(0.05)
                    entry = next(e for e in client.state.peers(time.time()) if e.peer_id == peer)


async def test_a_middle_hop_batches_relayed_hidden_states(tmp_path):
    async with running_nodes(tmp_path, [["--model", MODEL, "--layers", r] for r in ("0:2", "2:4", "4:6")]) as nodes:
        async with swarm_client(nodes[0]) as client:
            await check_batched_equals_lone(client, nodes)


async def test_routing_spreads_concurrent_sessions_over_replicas(tmp_path):
    async with running_nodes(tmp_path, [["--model", MODEL, "--layers", "0:6"]] * 3) as nodes:
        for n in nodes:  # identical replicas: the same (slow) speed, so only load tells them apart
            n.shard.speed = SpeedModel(6, step_ms=1000.0, token_ms=1.0)
            n.state.publish_now()
        async with swarm_client(nodes[0]) as client:
            with trio.fail_after(20):
                while {round(s.ms_per_layer) for s in client.servers(MODEL)} != {167} or len(client.servers(MODEL)) < 3:
                    await trio.sleep(0.05)
            await client.tokenizer(MODEL)
            routes: list[str] = []
            orig = client.plan

            def plan(*a, **kw):
                route = orig(*a, **kw)
                routes.append(route.hops[0].peer_id)
                return route

            client.plan = plan
            await concurrently(client, [(f"user {i}", SamplingParams(max_new_tokens=6), None) for i in range(8)])
    per_replica = Counter(routes)
    assert len(routes) == 8 and len(per_replica) == 3 and max(per_replica.values()) <= 3
