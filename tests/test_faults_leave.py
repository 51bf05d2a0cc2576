"""Graceful leave (real node processes): a node stopped with SIGTERM withdraws its announcements
before it exits, so other nodes stop listing it as a server within seconds (not after the 60 s
state TTL) and a client that prefers it answers through the remaining replica without a failover.

The signed leaving mark in the swarm state (``PeerEntry.has_left``) is published first on a clean
shutdown."""

from __future__ import annotations

import signal

import trio

from swarmlm.testnet.local import LocalTestnet

from test_verify_processes import ENV, MODEL, ask, listed, local_tokens, open_client

LEAVE_WITHIN_S = 15.0  # well under the state TTL (60 s) a departed node otherwise stays listed for

async def test_sigterm_withdraws_the_node_within_seconds(tmp_path):
    want = local_tokens()
    layers = {0: ["--layers", "0:3"], 1: ["--layers", "3:6"], 2: ["--layers", "3:6"]}
    net = LocalTestnet(3, tmp_path / "net", extra_args=["--model", MODEL], per_node_args=layers, env=ENV)
    await trio.to_thread.run_sync(net.up)
    try:
        ids = [n.ready["peer_id"] for n in net.nodes]
        async with open_client(net.nodes[0].addr, check_fraction=0.0) as client:
            await listed(client, ids)
            net.kill(2, signal.SIGTERM)  # a clean stop: the node announces it leaves, then exits
            with trio.fail_after(LEAVE_WITHIN_S):  # a bound, not a speed target: the TTL is 60 s
                while ids[2] in {s.peer_id for s in client.servers(MODEL)}:
                    await trio.sleep(0.1)
            client.options.prefer = (ids[2],)  # it is no longer planned even when preferred
            gen = await ask(client)
            assert gen.token_ids == want and gen.summary.failovers == 0
            assert ids[2] not in {h.peer_id for h in gen.summary.route}
    finally:
        await trio.to_thread.run_sync(net.down)
