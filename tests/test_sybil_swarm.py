"""Sybil attacks against a running in-process swarm (builtin:tiny, real libp2p): standing is earned
by generations a gateway witnessed; many free identities pushing verdicts and model shapes over a
real state link change nothing for the honest nodes and clients, who keep generating correctly."""

from __future__ import annotations

import time

import trio

from swarmlm.crypto.identity import Identity
from swarmlm.models.sampling import SamplingParams
from swarmlm.node.generation import GenerationRequest
from swarmlm.testnet.sybil import light_host, opener_identity, rpc_attack, state_attack, state_payload

from helpers import running_nodes, swarm_client

MODEL = "builtin:tiny"
SPECS = [["--model", MODEL, "--layers", "0:3"], ["--model", MODEL, "--layers", "3:6"]]
PARAMS = SamplingParams(max_new_tokens=4)


async def generate(client, prompt: str = "hello sybil") -> list[int]:
    async with client.generate(GenerationRequest(model=MODEL, prompt=prompt, params=PARAMS)) as gen:
        return [t async for c in gen for t in c.token_ids]


async def test_a_gateway_s_generations_make_its_servers_established(tmp_path):
    async with running_nodes(tmp_path, SPECS) as (gateway, server):
        pipe = gateway.client.pipeline
        pipe.witness.interval_s = 0.0  # publish after every generation (the node default: every 2 min)
        long_prompt = " ".join(["word"] * 150)
        for _ in range(2):
            await generate(pipe, long_prompt)
        assert pipe.witness.published >= 1
        async with swarm_client(gateway) as client:  # a light client: its anchor is its bootstrap, the gateway
            with trio.fail_after(20):
                while not client.trust.is_established(server.peer_id):
                    client.trust.refresh(force=True)
                    await trio.sleep(0.1)
            assert not client.trust.is_established(Identity.generate().peer_id)
        assert server.trust.is_established(gateway.peer_id)  # every node's bootstrap is its anchor


async def test_sybil_verdicts_and_model_shapes_change_nothing_for_honest_nodes(tmp_path):
    async with running_nodes(tmp_path, SPECS) as nodes:
        gateway, server = nodes
        pipe = gateway.client.pipeline
        pipe.witness.interval_s = 0.0
        await generate(pipe, " ".join(["word"] * 300))  # the gateway witnessed both servers' work
        async with swarm_client(gateway) as client:
            want = await generate(client)
            async with light_host(opener_identity([gateway.peer_id])).running() as attacker:
                await attacker.connect(gateway.host.addrs[0])
                sybils = [Identity.generate() for _ in range(16)]
                subjects = [gateway.peer_id, server.peer_id]
                for attack in ("verdicts", "shape"):
                    raws = state_payload(attack, sybils, subjects, MODEL, time.time())
                    await state_attack(attacker, [gateway.peer_id], raws, hold_s=0.5)
            # the plausible half of it spread to every honest node ...
            with trio.fail_after(20):
                while len({r.author for r in server.state.state.records(kind="verdict")}) < 8:
                    await trio.sleep(0.1)
            assert gateway.state.sync.rejected["bad_record"] >= 8  # verdicts dated 1e11
            assert gateway.state.sync.rejected["bad_entry"] >= 8  # 100,000 layers
            # ... and changes nothing: nobody is convicted, the model keeps its 6 layers, answers are right
            for view in (gateway.client.pipeline, server.client.pipeline, client):
                view.trust.refresh(force=True)
                assert not view.convicted()
                assert view.n_layers(MODEL) == 6
                assert {s.peer_id for s in view.servers(MODEL)} == set(subjects)  # liars claim 1000 layers
            assert await generate(client) == want
            assert await generate(server.client.pipeline) == want


async def test_rpc_floods_from_many_identities_leave_the_node_serving(tmp_path):
    async with running_nodes(tmp_path, [["--model", MODEL, "--layers", "0:6"]]) as (node,):
        async with swarm_client(node) as client:
            want = await generate(client)
            hosts = [light_host() for _ in range(4)]
            async with hosts[0].running(), hosts[1].running(), hosts[2].running(), hosts[3].running():
                for h in hosts:
                    await h.connect(node.host.addrs[0])
                got = []
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(rpc_attack, hosts, [node.peer_id], 4.0)
                    await trio.sleep(1.0)
                    for _ in range(3):  # during the attack
                        got.append(await generate(client))
            assert got == [want] * 3
            stats = node.host.rpc_server.stats
            # every bomb was paced, refused at the header limit, or decoded and refused by echo's value
            # cap (which happens depends on the buckets' state when it lands): none was echoed back
            assert stats.throttled + stats.rejected_frames + stats.by_code["bad_request"] > 0
            assert stats.bytes_out < 64 * 1024
            assert node.host.rpc_server.buffered.used == 0 and not node.shard._relay_waits
            # a decode bomb is no honest encoder's frame: each attacker was refused after its first one
            penalties = node.host.rpc_server.penalties
            assert penalties.reasons.get("hostile_frame", 0) >= 4
            assert all(penalties.refused(h.peer_id, trio.current_time()) for h in hosts)
        assert await generate(node.client.pipeline) == want
