"""Shared fixtures: in-process hosts on loopback and tiny helpers."""

from __future__ import annotations

import os
from contextlib import asynccontextmanager


import trio

os.environ.setdefault("SWARMLM_LOG_QUIET", "1")


@asynccontextmanager
async def running_hosts(n: int, bootstrap_first: bool = True, **cfg):
    """n SwarmHosts on 127.0.0.1; hosts 1..n-1 bootstrap from host 0."""
    from swarmlm.crypto.identity import Identity
    from swarmlm.net.host import HostConfig, SwarmHost

    hosts: list[SwarmHost] = []
    async with trio.open_nursery() as nursery:
        async def run(h: SwarmHost, task_status=trio.TASK_STATUS_IGNORED):
            async with h.running():
                task_status.started()
                await trio.sleep_forever()

        for i in range(n):
            bs = hosts[0].addrs[:1] if (i and bootstrap_first) else []
            h = SwarmHost(Identity.generate(), HostConfig(listen=["/ip4/127.0.0.1/tcp/0"], bootstrap=bs, **cfg))
            await nursery.start(run, h)
            hosts.append(h)
        try:
            yield hosts
        finally:
            nursery.cancel_scope.cancel()




@asynccontextmanager
async def running_nodes(base_dir, per_node_args: list[list[str]], http: bool = False, configure=None):
    """Full nodes (state sync, shard service) in this process; node 0 is the bootstrap.

    ``configure(i, node)`` may adjust a built node before it runs. Each node's ``kill()`` stops it
    abruptly (its host and connections vanish, like kill -9)."""
    from swarmlm.node import config as cfgmod
    from swarmlm.node.assemble import build_node

    nodes = []
    async with trio.open_nursery() as nursery:
        for i, args in enumerate(per_node_args):
            overrides = {"data_dir": str(base_dir / f"node{i}"), "listen": ["/ip4/127.0.0.1/tcp/0"],
                         "bootstrap": nodes[0].host.addrs[:1] if i else [], "heartbeat_s": 1.0}
            it = iter(args)
            for flag in it:
                overrides[flag.lstrip("-").replace("-", "_")] = next(it)
            if http:
                overrides["http"] = "127.0.0.1:0"
            node = build_node(cfgmod.load(None, env={}, overrides=overrides))
            if configure is not None:
                configure(i, node)
            scope = trio.CancelScope()

            async def run(node=node, scope=scope, task_status=trio.TASK_STATUS_IGNORED):
                with scope:
                    await node.run(task_status=task_status)

            node.kill = scope.cancel
            await nursery.start(run)
            nodes.append(node)
        await wait_for_state(nodes)
        try:
            yield nodes
        finally:
            nursery.cancel_scope.cancel()


async def wait_for_state(nodes, timeout: float = 20.0) -> None:
    """Until every node's swarm state lists every node."""
    import time

    ids = {n.peer_id for n in nodes}
    with trio.fail_after(timeout):
        while not all(ids <= {p.peer_id for p in n.state.state.peers(time.time())} for n in nodes):
            await trio.sleep(0.1)


@asynccontextmanager
async def swarm_client(node):
    """A light client (own host, read-only state) joined through ``node``."""
    import time

    from swarmlm.crypto.identity import Identity
    from swarmlm.net.host import HostConfig, SwarmHost
    from swarmlm.net.state_service import StateService
    from swarmlm.node.client.pipeline import PipelineGenerator

    host = SwarmHost(Identity.generate(), HostConfig(listen=["/ip4/127.0.0.1/tcp/0"], bootstrap=node.host.addrs[:1],
                                                     discovery_interval_s=1.0))
    state = StateService(host, None, publish=False)
    async with host.running():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(state.run)
            with trio.fail_after(20):
                while not state.state.models(time.time()):
                    await trio.sleep(0.1)
            try:
                yield PipelineGenerator(host, state)
            finally:
                nursery.cancel_scope.cancel()


def require_netns() -> None:
    """Skip a test that needs root, `ip netns` and iptables when they are missing -- except in CI,
    which runs as root: there the missing piece is a failure, not a skip."""
    import os

    import pytest

    from swarmlm.testnet.netns import unavailable_reason

    reason = unavailable_reason()
    if reason:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(f"netns tests: {reason}")


def random_ids(n: int, seed: int):
    """[1, n] token ids of builtin:tiny's vocabulary, the same for the same seed."""
    import torch  # lazy: most tests that use these helpers never touch tensors

    return torch.randint(0, 200, (1, n), generator=torch.Generator().manual_seed(seed))


def assert_close(a, b, tol: float = 1e-5) -> None:
    """Batched vs unbatched outputs: same shape, within ``tol``, and the same argmax."""
    import torch  # lazy: most tests that use these helpers never touch tensors

    assert a.shape == b.shape
    assert (a - b).abs().max().item() < tol
    assert torch.equal(a.argmax(-1), b.argmax(-1))
