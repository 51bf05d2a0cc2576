"""The state link rule (net/state_service.py): one ``sync`` stream per neighbour. When both ends open
one at once, both keep the stream the smaller peer id opened, so the two agree and sync; a peer that
does not speak the state protocol is tried again after a back-off, never every loop turn. In-memory
hosts: each ``rpc.stream`` runs the other service's handler on a pair of memory channels."""

from __future__ import annotations

from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any

import trio

from swarmlm.crypto.identity import Identity
from swarmlm.net.rpc import RpcError
from swarmlm.net.state_service import RETRY_S, StateService


class _End:
    """One end of an in-memory call: ``send`` to the other end, iterate what it sent."""

    def __init__(self, out: Any, inbox: Any, peer: str) -> None:
        self._out, self._in = out, inbox
        self.ctx = SimpleNamespace(peer=peer)

    async def send(self, data: Any) -> None:
        try:
            await self._out.send(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise RpcError(0, "the other end went away") from None

    def __aiter__(self) -> Any:
        return self._in.__aiter__()


class _Host:
    def __init__(self, world: dict[str, "_Host"], nursery: trio.Nursery) -> None:
        self.identity = Identity.generate()
        self.peer_id = self.identity.peer_id
        self.world, self.nursery = world, nursery
        self.handler: Any = None
        self.opened: list[float] = []  # when each stream was opened (trio time)
        self.rpc_server = SimpleNamespace(add_stream=lambda proto, method, fn: setattr(self, "handler", fn))
        self.rpc = SimpleNamespace(stream=self._stream)
        world[self.peer_id] = self

    def remote_ip(self, peer: str) -> str:
        return "127.0.0.1"

    def connected_peers(self) -> list[str]:
        return [p for p in self.world if p != self.peer_id]

    @asynccontextmanager
    async def _stream(self, peer: str, protocol: str, method: str, args: Any, timeout: float):
        self.opened.append(trio.current_time())
        remote = self.world[peer]
        if remote.handler is None:
            raise RpcError(404, f"no method {method!r} on {protocol}")
        up_send, up_recv = trio.open_memory_channel[Any](1000)
        down_send, down_recv = trio.open_memory_channel[Any](1000)

        async def serve() -> None:
            async with down_send:  # the handler returning ends the call at our end
                await remote.handler(_End(down_send, up_recv, self.peer_id), None)

        self.nursery.start_soon(serve)
        async with up_send:
            yield _End(up_send, down_recv, peer)


async def test_both_ends_opening_at_once_keep_the_smaller_ids_stream_and_sync():
    async with trio.open_nursery() as nursery:
        world: dict[str, _Host] = {}
        a, b = sorted((_Host(world, nursery) for _ in range(2)), key=lambda h: h.peer_id)
        sa, sb = StateService(a, None), StateService(b, None)
        for svc, other in ((sa, b), (sb, a)):
            svc._nursery = nursery
            nursery.start_soon(svc._open, other.peer_id)  # both at once: each registers its own first
        with trio.fail_after(5):
            while not (sa.links.get(b.peer_id) and sb.links.get(a.peer_id)
                       and sa.links[b.peer_id].opener == sb.links[a.peer_id].opener):
                await trio.sleep(0.01)
        assert sa.links[b.peer_id].opener == sb.links[a.peer_id].opener == a.peer_id
        sa.publish_now()
        sb.publish_now()
        with trio.fail_after(5):
            while sb.state.peer(a.peer_id) is None or sa.state.peer(b.peer_id) is None:
                await trio.sleep(0.01)
        assert sa.sync.neighbours == {b.peer_id} and sb.sync.neighbours == {a.peer_id}
        nursery.cancel_scope.cancel()


async def test_a_second_stream_from_the_same_opener_is_refused_and_the_first_kept():
    async with trio.open_nursery() as nursery:
        world: dict[str, _Host] = {}
        a, b = sorted((_Host(world, nursery) for _ in range(2)), key=lambda h: h.peer_id)
        sa, sb = StateService(a, None), StateService(b, None)
        sa._nursery = sb._nursery = nursery
        nursery.start_soon(sa._open, b.peer_id)
        with trio.fail_after(5):
            while b.peer_id not in sa.links or a.peer_id not in sb.links:
                await trio.sleep(0.01)
        first = sb.links[a.peer_id]
        await sa._open(b.peer_id)  # a's second stream: b keeps the first, the second call just ends
        assert sb.links[a.peer_id] is first and sa.links[b.peer_id].opener == a.peer_id
        nursery.cancel_scope.cancel()


async def test_a_peer_without_the_state_protocol_is_retried_ever_more_rarely(autojump_clock):
    async with trio.open_nursery() as nursery:
        world: dict[str, _Host] = {}
        me, mute = sorted((_Host(world, nursery) for _ in range(2)), key=lambda h: h.peer_id)
        svc = StateService(me, None)  # ``mute`` serves no state protocol; it sorts above us, so we open
        svc._nursery = nursery
        start = trio.current_time()
        nursery.start_soon(svc._connect_loop)
        await trio.sleep(16 * RETRY_S)
        # not every loop turn (0.5 s): after 5 s, then the wait doubles after each unanswered open
        waits = [round(b - a) for a, b in zip(me.opened, me.opened[1:])]
        assert me.opened[0] - start < 1 and waits == [RETRY_S, 2 * RETRY_S, 4 * RETRY_S, 8 * RETRY_S]
        assert not svc.links and not svc._opening
        mute.handler = StateService(mute, None)._serve  # it starts speaking the protocol: linked at the next try
        await trio.sleep(16 * RETRY_S)
        assert mute.peer_id in svc.links and me.peer_id in mute_links(mute)
        nursery.cancel_scope.cancel()


def mute_links(host: _Host) -> Any:
    return host.handler.__self__.links
