"""A route whose server died: opening the session fails with ``HopFailed`` naming that server (so the
client fails over, or says no live server is left), never with trio's "ExceptionGroup: Exceptions from
Trio nursery" that `swarmlm ask` used to print with a traceback."""

from __future__ import annotations

from contextlib import asynccontextmanager

import pytest

from swarmlm.net.rpc import UNAVAILABLE, RpcError
from swarmlm.node.client.session import HopFailed, HopPlan, PipelineSession


class DeadPeers:
    """An RPC client whose ``dead`` peers refuse every stream (like a killed node's address)."""

    def __init__(self, dead: set[str]) -> None:
        self.dead = dead

    def stream(self, peer, protocol, method, args=None, timeout=600.0):
        @asynccontextmanager
        async def cm():
            if peer in self.dead:
                raise RpcError(UNAVAILABLE, f"cannot open {protocol}: peer {peer} recently failed all addresses")
            raise AssertionError("only dead peers in this test")
            yield

        return cm()


@pytest.mark.parametrize("dead", [{"A"}, {"A", "B"}])
async def test_a_dead_hop_is_a_hop_failure_not_an_exception_group(dead):
    hops = [HopPlan("A", 0, 3), HopPlan("B", 3, 6)] if len(dead) > 1 else [HopPlan("A", 0, 6)]
    with pytest.raises(HopFailed) as info:
        async with PipelineSession(DeadPeers(dead), "builtin:tiny", hops, 16, None):
            pass
    assert info.value.peer in dead and "cannot open session" in str(info.value)
