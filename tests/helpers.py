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


