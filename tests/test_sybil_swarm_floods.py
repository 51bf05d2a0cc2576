"""Sybil floods against a running in-process swarm (builtin:tiny, real libp2p): attack classes 3
and 4 of issue 16 over a real state link. 1024 throwaway identities handing over empty documents
neither fill the owner table nor keep a new honest node out, and are forgotten within minutes;
out-of-order updates from 40 identities stay bounded in bytes, get their sender cut off, and
the node keeps serving correct answers (docs/RELIABILITY.md, "Trust model")."""

from __future__ import annotations

import time

import trio

from swarmlm.crypto.identity import Identity
from swarmlm.net.state.rights import doc_owner
from swarmlm.node import config as cfgmod
from swarmlm.node.assemble import build_node
from swarmlm.testnet.sybil import light_host, opener_identity, state_attack, state_payload

from helpers import running_nodes, swarm_client
from test_sybil_swarm import MODEL, SPECS, generate


async def test_owner_flood_admits_a_bounded_few_and_a_new_honest_node_still_joins(tmp_path):
    async with running_nodes(tmp_path, SPECS) as (gateway, server):
        sync = gateway.state.sync
        honest = {gateway.peer_id, server.peer_id}
        sybils = [Identity.generate() for _ in range(1024)]
        raws = state_payload("owners", sybils, [], MODEL, time.time())  # two empty documents each
        t0 = time.monotonic()
        async with light_host(opener_identity([gateway.peer_id])).running() as attacker:
            await attacker.connect(gateway.host.addrs[0])
            await state_attack(attacker, [gateway.peer_id], raws, hold_s=0.5)
        elapsed = time.monotonic() - t0
        lim = sync.limits
        # one connection's IP prefix introduces a burst of new owners plus its rate, not 1024
        admitted = {doc_owner(o) for o in sync.replicas} & {s.peer_id for s in sybils}
        assert len(admitted) <= lim.new_owner_burst + lim.new_owner_rate * elapsed
        assert sync.rejected["admission"] >= 2 * (len(sybils) - len(admitted)) - 2
        # a new honest node arriving after the flood is listed by every honest node
        async with trio.open_nursery() as nursery:
            newcomer = build_node(cfgmod.load(None, env={}, overrides={
                "data_dir": str(tmp_path / "newcomer"), "listen": ["/ip4/127.0.0.1/tcp/0"], "heartbeat_s": 1.0,
                "bootstrap": gateway.host.addrs[:1], "model": MODEL, "layers": "0:6"}))
            await nursery.start(newcomer.run)
            honest.add(newcomer.peer_id)
            with trio.fail_after(20):
                while not all(honest <= {p.peer_id for p in n.state.state.peers(time.time())}
                              for n in (gateway, server, newcomer)):
                    await trio.sleep(0.1)
            # the empty owners are forgotten within minutes (empty_after), the honest ones kept
            sync.tick(time.time() + lim.empty_after + 1)
            assert {doc_owner(o) for o in sync.replicas} <= honest
            assert {p.peer_id for p in gateway.state.state.peers(time.time())} >= honest
            nursery.cancel_scope.cancel()


async def test_out_of_order_flood_is_bounded_its_sender_cut_off_and_answers_stay_right(tmp_path):
    async with running_nodes(tmp_path, [["--model", MODEL, "--layers", "0:6"]]) as (node,):
        sync = node.state.sync
        async with swarm_client(node) as client:
            want = await generate(client)
            sybils = [Identity.generate() for _ in range(40)]
            raws = state_payload("pending", sybils, [], MODEL, time.time())  # 320 x 250 KiB, never applicable
            async with light_host(opener_identity([node.peer_id])).running() as attacker:
                await attacker.connect(node.host.addrs[0])
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(state_attack, attacker, [node.peer_id], raws, 60.0)  # holds its link open
                    got = await generate(client)  # during the flood
                    with trio.fail_after(60):  # the node works through what arrived, whatever the machine's load
                        while not (sync.rejected["pending_flood"] and sync.banned(attacker.peer_id)):
                            await trio.sleep(0.05)
                    nursery.cancel_scope.cancel()
            assert got == want
            assert sync.rejected["pending_flood"] > 0
            assert sync.pending_bytes <= sync.limits.max_pending_bytes_per_sender
            assert sync.banned(attacker.peer_id)  # penalized: the state link was closed
            assert attacker.peer_id not in node.state.links
            assert await generate(client) == want
