"""The attacker process the sybil bench spawns: it makes its identities and starts their hosts,
says "ready", and touches no target until the bench's "go" (so the baseline window is measured
with the attacker idle and the attack window starts at its first connection)."""

from __future__ import annotations

import subprocess
import sys

import trio

from swarmlm.testnet.sybil import light_host


async def test_the_attacker_connects_only_after_go_and_then_leaves():
    target = light_host()
    async with target.running():
        cmd = [sys.executable, "-m", "swarmlm.testnet.sybil", "--wait-go", "--attack", "rpc", "--identities", "3",
               "--duration", "1", "--parts", "unread", "--target", target.addrs[0]]
        async with trio.open_nursery() as nursery:
            proc = await nursery.start(lambda task_status: trio.run_process(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=False,
                task_status=task_status))
            with trio.fail_after(60):
                said = await proc.stdout.receive_some(64)
            assert said.strip() == b"ready"
            await trio.sleep(1.0)
            assert target.connected_peers() == []  # ready, hosts up, and nobody connected yet
            await proc.stdin.send_all(b"go\n")
            await proc.stdin.aclose()
            with trio.fail_after(60):
                while len(target.connected_peers()) < 3:  # each identity its own connection
                    await trio.sleep(0.05)
                await proc.wait()
        assert proc.returncode == 0


async def test_the_idle_part_only_connects_and_the_others_open_streams():
    from swarmlm.testnet.sybil import rpc_attack

    target = light_host()
    attackers = [light_host() for _ in range(2)]
    async with target.running(), attackers[0].running(), attackers[1].running():
        for a in attackers:
            await a.connect(target.addrs[0])
        await rpc_attack(attackers, [target.peer_id], 1.5, parts=("idle",))
        assert target.rpc_server._streams_total == 0 and target.rpc_server.stats.bytes_in == 0
        assert len(target.connected_peers()) == 2  # connected, and nothing more
        await rpc_attack(attackers, [target.peer_id], 1.5, parts=("bomb",))
        assert target.rpc_server.stats.rejected_frames >= 2  # a real part sends its frames (and is refused)
