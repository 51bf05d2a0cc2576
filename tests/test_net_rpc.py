"""RPC over in-memory streams: unary, streaming, errors, deadlines, cancellation, limits, bad frames."""

from __future__ import annotations

import struct
import sys

import pytest
import torch
import trio
import trio.testing

from swarmlm.net.frames import FrameDecoder, FrameError, Limits, encode_frame_bytes
from swarmlm.net.rawstream import TrioByteStream
from swarmlm.net.rpc import RpcClient, RpcError
from swarmlm.net import rpc_server
from swarmlm.net.rpc_server import RpcServer, ServerLimits

P = "/swarmlm/test/1"


class Harness:
    """Each opened stream is an in-memory pair whose server end is served by ``server``."""

    def __init__(self, nursery: trio.Nursery, server: RpcServer, peer: str = "client-peer") -> None:
        self.nursery, self.server, self.peer = nursery, server, peer
        self.opened = 0

    async def opener(self, peer: str, protocol: str) -> TrioByteStream:
        a, b = trio.testing.memory_stream_pair()
        self.opened += 1
        self.nursery.start_soon(self.server.serve_stream, TrioByteStream(b), protocol, self.peer)
        return TrioByteStream(a)


def make_server(**limits) -> RpcServer:
    srv = RpcServer(ServerLimits(**limits))

    async def echo(ctx, args):
        return args

    async def fail(ctx, args):
        raise RpcError("custom", "nope")

    async def boom(ctx, args):
        raise ValueError("internal bug")

    async def slow(ctx, args):
        await trio.sleep(args)
        return "done"

    async def count(call, args):
        total = 0
        async for item in call:
            total += item
            await call.send(total)
        return {"total": total}

    for name, fn in [("echo", echo), ("fail", fail), ("boom", boom), ("slow", slow)]:
        srv.add_unary(P, name, fn)
    srv.add_stream(P, "count", count)
    return srv


def test_frames_roundtrip_tensors_and_limits():
    x = {"h": torch.randn(2, 3), "b": torch.randn(3).to(torch.bfloat16), "ids": torch.arange(4), "n": None}
    dec = FrameDecoder()
    dec.feed(encode_frame_bytes(x))
    ok, y = dec.next_frame()
    assert ok and torch.equal(y["h"], x["h"]) and torch.equal(y["b"], x["b"]) and torch.equal(y["ids"], x["ids"])
    small = Limits(max_frame_bytes=100)
    with pytest.raises(FrameError):
        encode_frame_bytes({"h": torch.zeros(100)}, small)
    dec = FrameDecoder(small)
    dec.feed(struct.pack(">II", 10**9, 4))
    with pytest.raises(FrameError, match="exceeds"):
        dec.next_frame()


@pytest.mark.parametrize("junk", [b"\xff" * 20, b"\x00\x00\x00\x08\x00\x00\x00\x08\xc1\xc1\xc1\xc1\xc1\xc1\xc1\xc1",
                                  struct.pack(">II", 12, 4) + b"\x81\xa3__t\x93" + b"\x00" * 7])
def test_decoder_rejects_garbage(junk):
    dec = FrameDecoder()
    dec.feed(junk)
    with pytest.raises(FrameError):
        ok, _ = dec.next_frame()
        assert ok  # incomplete garbage must not be accepted as a frame either
        raise FrameError("unreachable")


async def test_unary_streaming_and_errors():
    srv = make_server()
    async with trio.open_nursery() as n:
        h = Harness(n, srv)
        cli = RpcClient(h.opener)
        t = torch.randn(3, 4)
        out = await cli.call("srv", P, "echo", {"t": t, "s": "hi"})
        assert torch.equal(out["t"], t) and out["s"] == "hi"
        assert await cli.call("srv", P, "echo", 5) == 5
        assert h.opened == 1, "the stream is reused between calls"
        with pytest.raises(RpcError) as ei:
            await cli.call("srv", P, "fail")
        assert ei.value.code == "custom"
        with pytest.raises(RpcError) as ei:
            await cli.call("srv", P, "boom")
        assert ei.value.code == "internal" and "internal bug" in ei.value.message
        with pytest.raises(RpcError) as ei:
            await cli.call("srv", P, "nosuch")
        assert ei.value.code == "not_found"
        async with cli.stream("srv", P, "count") as call:
            got = []
            for i in range(1, 4):
                await call.send(i)
                got.append(await call.recv())
            await call.end()
            with pytest.raises(StopAsyncIteration):
                await call.recv()
        assert got == [1, 3, 6] and call.result == {"total": 6}
        assert await cli.call("srv", P, "echo", 7) == 7
        n.cancel_scope.cancel()


async def test_deadline_and_cancellation_reach_the_server():
    srv = make_server()
    async with trio.open_nursery() as n:
        h = Harness(n, srv)
        cli = RpcClient(h.opener)
        with pytest.raises(trio.TooSlowError):
            await cli.call("srv", P, "slow", 100, timeout=0.2)
        # the client reset its stream: the server must have cancelled the handler
        with trio.fail_after(5):
            while srv._calls_total:
                await trio.sleep(0.01)
        # a server-side deadline shorter than the work gives a deadline error
        srv.limits.max_deadline_s = 0.1
        with pytest.raises(RpcError) as ei:
            await cli.call("srv", P, "slow", 100, timeout=5)
        assert ei.value.code == "deadline"
        n.cancel_scope.cancel()


async def test_busy_when_over_concurrency_limit():
    srv = make_server(max_calls_per_peer=2)
    async with trio.open_nursery() as n:
        h = Harness(n, srv)
        cli = RpcClient(h.opener)
        results = []

        async def one():
            try:
                results.append(await cli.call("srv", P, "slow", 0.3, timeout=5))
            except RpcError as e:
                results.append(e.code)

        async with trio.open_nursery() as inner:
            for _ in range(4):
                inner.start_soon(one)
        assert sorted(results) == ["busy", "busy", "done", "done"]
        n.cancel_scope.cancel()


async def test_garbage_frames_leave_server_serving():
    srv = make_server()
    async with trio.open_nursery() as n:
        h = Harness(n, srv, peer="junk-peer")
        for junk in [b"\xff\xff\xff\xff\x00\x00\x00\x00", encode_frame_bytes([1, 2, 3]), b"\x00\x00",
                     struct.pack(">II", 3, 3) + b"\xc1\xc1\xc1"]:
            raw = await h.opener("srv", P)
            await raw.write(junk)
            await raw.close()
        await trio.testing.wait_all_tasks_blocked()
        assert srv.stats.rejected_frames >= 2
        # an undecodable header is no honest encoder's: that peer is refused at once, everyone else served
        assert srv.penalties.reasons.get("hostile_frame") == 1 and srv.refusing("junk-peer")
        cli = RpcClient(Harness(n, srv, peer="other-peer").opener)
        assert await cli.call("srv", P, "echo", "still here") == "still here"
        n.cancel_scope.cancel()


async def test_a_refused_request_s_arguments_are_not_held_while_the_answer_goes_out(monkeypatch):
    # a peer sends a header of many values that a handler refuses, then reads the answer slowly (or
    # never): the server must not pin the decoded arguments while the error reply waits to be sent
    # (256 identities doing this once a second held 1.5-3M decoded lists, ~150 MB, in each node)
    kept: list = []
    refs_at_reply: list[int] = []

    async def refuse(ctx, args):
        kept.append(args)
        raise RpcError("bad_request", "too many values")

    real_send = rpc_server.FrameStream.send

    async def send(self, obj):
        if isinstance(obj, dict) and "e" in obj and kept:
            await trio.sleep(0.01)  # the reply waits for a slow reader: other tasks run meanwhile
            refs_at_reply.append(sys.getrefcount(kept[-1]))  # ours in `kept` + getrefcount's argument
        return await real_send(self, obj)

    monkeypatch.setattr(rpc_server.FrameStream, "send", send)
    srv = make_server()
    srv.add_unary(P, "refuse", refuse)
    async with trio.open_nursery() as n:
        cli = RpcClient(Harness(n, srv).opener)
        with pytest.raises(RpcError):
            await cli.call("srv", P, "refuse", [[] for _ in range(1000)])
        n.cancel_scope.cancel()
    assert refs_at_reply == [2]


async def test_a_result_that_cannot_be_encoded_is_answered_as_an_internal_error():
    srv = make_server()

    async def odd(ctx, args):
        return {"x": object()}

    srv.add_unary(P, "odd", odd)
    async with trio.open_nursery() as n:
        cli = RpcClient(Harness(n, srv).opener)
        with pytest.raises(RpcError) as ei:
            await cli.call("srv", P, "odd")
        assert ei.value.code == "internal"
        assert await cli.call("srv", P, "echo", 7) == 7  # the stream and the server keep serving
        n.cancel_scope.cancel()


def test_refusals_are_reported_once_a_minute_with_a_count(caplog):
    srv = RpcServer()

    async def main() -> None:
        for i in range(5):  # five identities refused at once for hostile frames: one line, not five
            srv._strike(f"peer{i}", "hostile_frame", srv.limits.hostile_frame_strikes)
        assert all(srv.refusing(f"peer{i}") for i in range(5))
        await trio.sleep(61)
        srv._strike("peer9", "hostile_frame", srv.limits.hostile_frame_strikes)

    with caplog.at_level("WARNING", logger="swarmlm.rpc"):
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    lines = [r.getMessage() for r in caplog.records if "refusing peer" in r.getMessage()]
    assert len(lines) == 2 and "no honest peer writes" in lines[0]
    assert "4 more peers refused since the last report" in lines[1]
