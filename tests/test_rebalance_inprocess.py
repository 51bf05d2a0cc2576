"""Auto placement on live nodes: a lone node takes the whole model, nodes joining one after another
split it, and when a range becomes unserved exactly one node moves to cover it (no flapping)."""

from __future__ import annotations

import time

import trio

from swarmlm.node.directory import coverage_gaps
from swarmlm.node.directory import servers_for

from helpers import running_nodes

MODEL = "builtin:tiny"  # 6 layers
FAST = ["--heartbeat-s", "0.5", "--state-ttl-s", "3", "--rebalance-s", "0.5"]


def ranges(nodes):
    return [(n.shard.shard.start, n.shard.shard.end) for n in nodes]


async def test_lone_node_serves_the_whole_model(tmp_path):
    async with running_nodes(tmp_path, [["--model", MODEL]]) as nodes:
        assert ranges(nodes) == [(0, 6)]


async def test_a_gap_is_filled_by_exactly_one_move(tmp_path):
    args = [["--model", MODEL, "--max-layers", "2", *FAST] for _ in range(4)]
    async with running_nodes(tmp_path, args) as nodes:
        placed = ranges(nodes)
        assert sorted(set(placed[:3])) == [(0, 2), (2, 4), (4, 6)], placed
        # the node whose range nobody else serves: its departure leaves a gap
        victim = next(n for n in nodes if placed.count(ranges([n])[0]) == 1)
        survivors = [n for n in nodes if n is not victim]
        moves_before = sum(n.shard.moves for n in survivors)
        victim.kill()
        viewer = survivors[0]

        def gaps():
            return coverage_gaps(servers_for(viewer.state.state, MODEL, time.time()), 6)

        with trio.fail_after(30):
            while True:
                await trio.sleep(0.2)
                if not gaps() and victim.peer_id not in {p.peer_id for p in viewer.state.state.peers(time.time())}:
                    break
        moved = sum(n.shard.moves for n in survivors) - moves_before
        assert moved == 1
        await trio.sleep(4)  # several more rebalance rounds: nobody moves again
        assert sum(n.shard.moves for n in survivors) - moves_before == 1
        assert not gaps()
