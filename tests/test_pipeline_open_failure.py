"""Opening a route session: any failure of one hop (refused, vanished, timed out) comes out of
``PipelineSession`` as one ``HopFailed`` naming it, never as an exception group; a cancellation
from outside still propagates. And the process-wide record of unreachable peers (``node/dial.py``)."""

from __future__ import annotations

import pytest
import trio

from swarmlm.net.rpc import RpcError
from swarmlm.node.client.session import HopFailed, HopPlan, PipelineSession
from swarmlm.node.dial import DownPeers


class FakeCall:
    done = False

    async def send(self, item):
        pass

    async def end(self):
        pass

    def __aiter__(self):
        return self

    async def __anext__(self):
        await trio.sleep_forever()


class FakeRpc:
    """``stream`` to ``dead`` fails the way a vanished peer does; ``slow`` never opens."""

    def __init__(self, dead=(), slow=()):
        self.dead, self.slow, self.opened = set(dead), set(slow), []

    def stream(self, peer, protocol, method, args, timeout):
        rpc = self

        class Cm:
            async def __aenter__(self):
                if peer in rpc.slow:
                    await trio.sleep_forever()
                await trio.sleep(0.01 if peer in rpc.dead else 0)
                if peer in rpc.dead:
                    raise RpcError("unavailable", f"cannot open /swarmlm/shard/1: {peer} is gone")
                rpc.opened.append(peer)
                return FakeCall()

            async def __aexit__(self, *exc):
                return None

        return Cm()


HOPS = [HopPlan("a", 0, 2), HopPlan("b", 2, 4), HopPlan("c", 4, 6)]


@pytest.mark.parametrize("dead", [["b"], ["a", "c"]])
async def test_a_hop_that_cannot_be_opened_is_one_hop_failed(dead):
    with pytest.raises(HopFailed) as err:
        async with PipelineSession(FakeRpc(dead=dead), "m", HOPS, 16, None):
            pytest.fail("the session must not open")
    assert err.value.peer in dead and not err.value.busy


async def test_a_hop_that_never_opens_times_out_as_one_hop_failed():
    with pytest.raises(HopFailed) as err:
        async with PipelineSession(FakeRpc(slow=["c"]), "m", HOPS, 16, None, open_timeout_s=0.2):
            pytest.fail("the session must not open")
    assert err.value.peer == "c" and "took over" in err.value.reason


async def test_a_cancellation_while_opening_is_not_turned_into_a_failover():
    with trio.move_on_after(0.1) as scope:
        async with PipelineSession(FakeRpc(slow=["b"]), "m", HOPS, 16, None, open_timeout_s=10):
            pytest.fail("the session must not open")
    assert scope.cancelled_caught


def test_down_peers_until_reached_again_a_newer_heartbeat_or_expiry():
    down = DownPeers(down_s=30.0)
    down.mark("p", heartbeat=100.0, now=0.0)
    assert down.is_down("p", heartbeat=100.0, now=10.0)
    assert not down.is_down("p", heartbeat=101.0, now=10.0)  # it heartbeat since: worth a try again
    down.mark("p", heartbeat=100.0, now=0.0)
    assert not down.is_down("p", heartbeat=100.0, now=31.0)  # expired
    down.mark("q", now=0.0)
    down.clear("q")
    assert not down.is_down("q", now=1.0)
    small = DownPeers(max_marks=8)
    for i in range(20):
        small.mark(f"x{i}", now=float(i))
    assert len(small.marks) <= 8 and "x19" in small.marks
