"""A light client of a benchmark's local swarm: a libp2p host that joins through one address, the
replicated swarm state (it publishes nothing) and a ``PipelineGenerator`` over them."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import trio

from swarmlm.crypto.identity import Identity
from swarmlm.net.host import HostConfig, SwarmHost
from swarmlm.net.state_service import StateService
from swarmlm.node.client.options import ClientOptions
from swarmlm.node.client.pipeline import PipelineGenerator


@asynccontextmanager
async def light_client(addr: str, *, discovery_interval_s: float | None = None,
                       **options: Any) -> AsyncIterator[PipelineGenerator]:
    """A client joined through ``addr``; ``options`` are ``ClientOptions`` fields (a step times out
    after 60 s unless ``step_timeout_s`` says otherwise)."""
    config = HostConfig(listen=["/ip4/127.0.0.1/tcp/0"], bootstrap=[addr])
    if discovery_interval_s is not None:
        config.discovery_interval_s = discovery_interval_s
    host = SwarmHost(Identity.generate(), config)
    state = StateService(host, None, publish=False)
    async with host.running(), trio.open_nursery() as nursery:
        nursery.start_soon(state.run)
        try:
            yield PipelineGenerator(host, state, ClientOptions(**{"step_timeout_s": 60.0, **options}))
        finally:
            nursery.cancel_scope.cancel()
