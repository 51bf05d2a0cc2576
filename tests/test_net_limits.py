"""Resource limits of the RPC layer against hostile peers: frame decoding bounded by the frame,
read and write deadlines, streams/relays/buffered bytes bounded per peer and in total, penalties
for rule breakers, and the two fuzzer crashes (a dtype given as a map; a bad session step)."""

from __future__ import annotations

import struct

import msgpack
import pytest
import trio

from swarmlm.net.frames import FrameError, Limits, decode_body, encode_frame_bytes
from swarmlm.net.limits import ByteBudget, Penalties, RateTable, ip_prefix
from swarmlm.net.rpc import BAD_REQUEST, BUSY, FrameStream, FrameTimeout, RpcError, StreamClosedError
from swarmlm.net.host import ECHO_PROTOCOL
from swarmlm.testnet.sybil_payloads import decode_bomb

from helpers import running_hosts, running_nodes

MODEL = "builtin:tiny"


def test_a_dtype_given_as_a_map_is_a_frame_error_not_a_type_error():
    header = msgpack.packb({"x": {"__t": [{"a": 1}, [1], 0]}})
    with pytest.raises(FrameError):
        decode_body(header + b"\x00" * 4, len(header))
    header = msgpack.packb({"x": {"__t": [["f32"], [1], 0]}})
    with pytest.raises(FrameError):
        decode_body(header + b"\x00" * 4, len(header))


def test_decoding_is_bounded_by_the_frame():
    bomb = decode_bomb(200_000)  # trusted peers may send headers up to 256 KiB
    total, hlen = struct.unpack(">II", bomb[:8])
    assert isinstance(decode_body(bomb[8:], hlen)["a"], list)  # no tensors: no Python walk at all
    walked = msgpack.packb({"__t": 1, "a": [[[]] * 40_000, [[]] * 40_000]})
    with pytest.raises(FrameError, match="too many values"):
        decode_body(walked, len(walked))
    lying = b"\xdd\x00\x01\x00\x00"  # an array header claiming 65536 items in a 5-byte frame
    with pytest.raises(FrameError):
        decode_body(lying, len(lying))


class Trickle:
    """A byte stream that sends a prefix, then one byte per second, and never takes writes."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def read(self, n: int) -> bytes:
        if len(self.data) > 8:
            chunk, self.data = self.data[:8], self.data[8:]
            return chunk
        await trio.sleep(1.0)
        return b"\x00"

    async def write(self, data: bytes) -> None:
        await trio.sleep_forever()

    async def close(self) -> None: ...
    async def reset(self) -> None: ...


async def test_trickled_frames_and_peers_that_stop_reading_hit_deadlines(autojump_clock):
    limits = Limits(read_timeout_s=5.0, write_timeout_s=5.0)
    fs = FrameStream(Trickle(struct.pack(">II", 1000, 10) + b"x" * 16), limits)
    with trio.fail_after(60):
        with pytest.raises(FrameTimeout):
            await fs.recv()
        with pytest.raises(StreamClosedError, match="stopped reading"):
            await fs.send({"big": b"y" * 1000})


def test_budgets_rates_and_penalties():
    b = ByteBudget(per_key=100, total=150, reserved=50)
    assert b.try_acquire("a", 100) and not b.try_acquire("a", 1)  # per key
    assert not b.try_acquire("b", 60) and b.try_acquire("b", 50, trusted=True)  # the reserve is for trusted keys
    b.release("a", 100)
    assert b.try_acquire("c", 90) and b.used == 140
    r = RateTable(rate=1.0, burst=2.0)
    assert r.try_take("g", 1, 0.0) and r.try_take("g", 1, 0.0) and not r.try_take("g", 1, 0.0)
    assert r.try_take("g", 1, 1.0) and r.try_take("other", 1, 0.0)
    p = Penalties(strikes=3, window_s=10, refuse_s=5)
    assert not p.strike("x", 0, "frame") and not p.strike("x", 1, "frame") and p.strike("x", 2, "frame")
    assert p.refused("x", 3) and not p.refused("x", 8) and not p.refused("y", 3)
    assert p.strike("z", 0, "hostile_frame", weight=3) and p.refused("z", 1)  # a weight of `strikes`: at once
    assert not p.strike("w", 0, "frame", weight=2) and p.strike("w", 1, "frame")
    many = Penalties(strikes=1, refuse_s=5, max_peers=3)  # one free identity after another: a bounded table
    for i in range(10):
        many.strike(f"id{i}", float(i), "hostile_frame")
    assert len(many._until) == 3 and many.refused("id9", 9.5) and not many.refused("id0", 9.5)
    assert ip_prefix("10.1.2.3") == "10.1.2.0/24" and ip_prefix("2001:db8::1") == "2001:db8::/48"


async def test_a_peer_breaking_limits_is_refused_and_others_keep_being_served():
    async with running_hosts(3) as (server, bad, good):
        for h in (bad, good):
            await h.connect(server.addrs[0])
        for _ in range(server.rpc_server.penalties.strikes):
            stream = await bad.open_stream(server.peer_id, ECHO_PROTOCOL)
            await stream.write(b"\xff" * 64)  # garbage frames
            await stream.close()
        with trio.fail_after(10):
            while not server.rpc_server.penalties.refused(bad.peer_id, trio.current_time()):
                await trio.sleep(0.05)
        with pytest.raises((RpcError, StreamClosedError)):
            await bad.rpc.call(server.peer_id, ECHO_PROTOCOL, "echo", "x", timeout=5)
        assert await good.rpc.call(server.peer_id, ECHO_PROTOCOL, "echo", "fine", timeout=5) == "fine"


async def test_idle_streams_are_closed_and_decode_bombs_are_paced():
    async with running_hosts(2) as (server, client):
        server.rpc_server.limits.idle_timeout_s = 0.3
        stream = await client.open_stream(server.peer_id, ECHO_PROTOCOL)
        with trio.fail_after(10):  # without the idle deadline this read would wait forever
            try:
                data = await stream.read(10)
            except Exception:  # reset or EOF error: closed by the server
                data = b""
        assert not data
        big = await client.open_stream(server.peer_id, ECHO_PROTOCOL)
        await big.write(decode_bomb(100_000))  # beyond what a peer without standing may send: refused
        header = msgpack.packb({"m": "echo", "a": [0] * 30_000})  # 30k values, one container: under the cap
        bomb = struct.pack(">II", len(header), len(header)) + header
        for _ in range(12):  # 360 KB of headers: beyond one peer's burst, so the reader slows down
            s = await client.open_stream(server.peer_id, ECHO_PROTOCOL)
            await s.write(bomb)
        with trio.fail_after(20):
            while server.rpc_server.stats.throttled == 0 or server.rpc_server.stats.rejected_frames == 0:
                await trio.sleep(0.05)
        assert await client.rpc.call(server.peer_id, ECHO_PROTOCOL, "echo", "ok", timeout=30) == "ok"


async def test_bad_session_step_is_a_bad_request_and_relay_waits_are_bounded(tmp_path):
    from swarmlm.node.server import shard as shard_mod
    from swarmlm.node.wire import SHARD_PROTOCOL

    async with running_nodes(tmp_path, [["--model", MODEL, "--layers", "0:6"]]) as (node,):
        async with running_hosts(1) as (peer,):
            await peer.connect(node.host.addrs[0])
            opened = {"session_id": "s" * 16, "model": MODEL, "start": 0, "end": 6, "max_length": 16}
            with pytest.raises(RpcError) as exc:
                async with peer.rpc.stream(node.peer_id, SHARD_PROTOCOL, "session", opened, timeout=10) as call:
                    await call.send({"step": "not a step"})
                    async for _ in call:
                        pass
            assert exc.value.code == BAD_REQUEST and "Group" not in exc.value.message
            assert node.host.rpc_server.stats.by_code.get("internal", 0) == 0
            errors = []

            async def relay(i: int) -> None:
                try:
                    await peer.rpc.call(node.peer_id, SHARD_PROTOCOL, "relay", {"session_id": f"none{i}"}, timeout=30)
                except RpcError as e:
                    errors.append(e.code)

            async with trio.open_nursery() as nursery:
                for i in range(shard_mod.RELAY_WAITS_PER_PEER + 2):
                    nursery.start_soon(relay, i)
                with trio.fail_after(20):
                    while len(errors) < 2:
                        await trio.sleep(0.05)
                nursery.cancel_scope.cancel()
            assert errors == [BUSY, BUSY]


async def test_item_frames_a_handler_does_not_take_are_bounded_per_peer(tmp_path):
    from swarmlm.node.wire import SHARD_PROTOCOL

    async with running_nodes(tmp_path, [["--model", MODEL, "--layers", "0:6"]]) as (node,):
        rpc = node.host.rpc_server
        rpc.buffered = ByteBudget(per_key=1 << 20, total=8 << 20, reserved=0)
        async with running_hosts(1) as (peer,):
            await peer.connect(node.host.addrs[0])
            with pytest.raises((RpcError, StreamClosedError)):
                async with peer.rpc.stream(node.peer_id, SHARD_PROTOCOL, "relay", {"session_id": "nobody"},
                                           timeout=30) as call:
                    for _ in range(8):  # the relay waits for a session that never opens: items pile up
                        await call.send(b"z" * (300 << 10))
                    await call.recv()
            assert rpc.penalties.reasons.get("buffered_bytes", 0) >= 1 and rpc.buffered.used == 0
            assert len(encode_frame_bytes({"s": 1})) < 64


async def test_a_peer_without_standing_sends_headers_of_few_containers_an_established_one_more():
    async with running_hosts(3) as (server, newcomer, established):
        rpc = server.rpc_server
        cap = rpc.limits.untrusted_header_containers
        many = [[] for _ in range(cap + 10)]  # small in bytes: within the header size a newcomer may send
        assert await newcomer.rpc.call(server.peer_id, ECHO_PROTOCOL, "echo", [[1], [2]], timeout=10) == [[1], [2]]
        with pytest.raises(RpcError) as err:
            await newcomer.rpc.call(server.peer_id, ECHO_PROTOCOL, "echo", many, timeout=10)
        assert err.value.code == BAD_REQUEST and "too many lists and maps" in str(err.value)
        # no honest encoder writes that: a peer without standing is refused at once, not after 8 strikes
        assert rpc.penalties.reasons == {"hostile_frame": 1}
        assert rpc.penalties.refused(newcomer.peer_id, trio.current_time())
        rpc.trusted = lambda peer: peer == established.peer_id
        for _ in range(2):
            with pytest.raises(RpcError) as err:  # decoded now; echo itself answers only small values
                await established.rpc.call(server.peer_id, ECHO_PROTOCOL, "echo", many, timeout=10)
            assert "too many lists" not in str(err.value)
        assert not rpc.penalties.refused(established.peer_id, trio.current_time())


async def test_a_refused_peer_loses_its_open_calls_and_its_new_streams_are_reset_before_negotiation():
    hold_protocol = "/swarmlm/test-hold/1"
    async with running_hosts(3) as (server, bad, good):
        rpc = server.rpc_server
        held = trio.Event()

        async def hold(ctx, arg):
            held.set()
            await trio.sleep_forever()

        rpc.add_unary(hold_protocol, "hold", hold)
        server.refresh_handlers()
        ended: list[BaseException] = []

        async def call_hold() -> None:
            try:
                await bad.rpc.call(server.peer_id, hold_protocol, "hold", None, timeout=60)
            except (RpcError, StreamClosedError) as exc:
                ended.append(exc)

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(call_hold)
                await held.wait()
                bomb = await bad.open_stream(server.peer_id, ECHO_PROTOCOL)
                await bomb.write(decode_bomb(20_000))  # 20k containers in 20 KB: under the size cap, over the count
                # the held call ends with the refusal, long before its 60 s deadline
        assert ended and rpc.penalties.refused(bad.peer_id, trio.current_time())
        served: list[str] = []
        serve = rpc.serve_stream

        async def counting(stream, protocol, peer):
            served.append(peer)
            await serve(stream, protocol, peer)

        rpc.serve_stream = counting  # type: ignore[method-assign]
        before = rpc.stats.rejected_streams
        with pytest.raises((RpcError, StreamClosedError)):
            await bad.rpc.call(server.peer_id, ECHO_PROTOCOL, "echo", "x", timeout=5)
        assert rpc.stats.rejected_streams > before and bad.peer_id not in served  # reset at its SYN
        assert await good.rpc.call(server.peer_id, ECHO_PROTOCOL, "echo", "fine", timeout=5) == "fine"
        assert served == [good.peer_id] and bad.peer_id not in rpc._scopes
