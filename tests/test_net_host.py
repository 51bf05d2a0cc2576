"""The libp2p host: DHT discovery among 5 nodes, ping and echo, signed records, Noise only, bad frames."""

from __future__ import annotations

import struct

import pytest
import trio

from swarmlm.crypto.identity import Identity
from swarmlm.net.dht_records import RecordError, SignedRecord, SignedRecordValidator, record_key
from swarmlm.net.host import ECHO_PROTOCOL, HostError

from helpers import running_hosts


async def wait_until(pred, timeout=20.0, step=0.1):
    with trio.fail_after(timeout):
        while not pred():
            await trio.sleep(step)


async def test_five_nodes_find_each_other_through_the_dht_and_answer():
    async with running_hosts(5, discovery_interval_s=0.5) as hosts:
        # nodes 1..4 only know node 0; the DHT lookups introduce them to each other
        await wait_until(lambda: all(len(h.connected_peers()) == 4 for h in hosts))
        for a in hosts:
            for b in hosts:
                if a is b:
                    continue
                assert await a.rpc.call(b.peer_id, ECHO_PROTOCOL, "echo", {"from": a.peer_id}) == {"from": a.peer_id}
                rtt = await a.ping(b.peer_id)
                assert 0 < rtt < 5000
                assert a.peers.rtt_ms(b.peer_id) > 0


async def test_signed_records_round_trip_and_bad_ones_are_rejected():
    async with running_hosts(3, discovery_interval_s=0.5) as hosts:
        await wait_until(lambda: all(len(h.connected_peers()) == 2 for h in hosts))
        await hosts[1].put_record("hosting", b"layers 0-10")
        assert await hosts[2].get_record(hosts[1].peer_id, "hosting") == b"layers 0-10"
        await hosts[1].put_record("hosting", b"layers 0-12")  # newer seq wins
        assert await hosts[2].get_record(hosts[1].peer_id, "hosting") == b"layers 0-12"
        # a forged record: hosts[2] signs a value under hosts[1]'s key -> every validator refuses it
        forged = SignedRecord.make(hosts[2].identity, "hosting", b"evil", 10**15)
        key = record_key(hosts[1].peer_id, "hosting")
        with pytest.raises(Exception):
            await hosts[2]._dht.put_value(key, forged)
        assert await hosts[0].get_record(hosts[1].peer_id, "hosting") == b"layers 0-12"


def test_record_validator_unit():
    owner, other = Identity.generate(), Identity.generate()
    v = SignedRecordValidator()
    good = SignedRecord.make(owner, "x", b"v1", 1)
    key = record_key(owner.peer_id, "x")
    v.validate(key, good)
    with pytest.raises(RecordError, match="not by its owner"):
        v.validate(key, SignedRecord.make(other, "x", b"v1", 1))
    tampered = bytearray(good)
    tampered[-70] ^= 1
    with pytest.raises(RecordError):
        v.validate(key, bytes(tampered))
    with pytest.raises(RecordError):
        v.validate(record_key(owner.peer_id, "y"), good)  # signed for another key
    with pytest.raises(RecordError):
        v.validate("/other/ns", good)
    newer = SignedRecord.make(owner, "x", b"v2", 2)
    assert v.select(key, [good, newer, b"junk"]) == 1
    assert v.rejected == 4


async def test_plaintext_only_peer_cannot_connect():
    import multiaddr
    from libp2p import new_host
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.peerinfo import info_from_p2p_addr
    from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport

    async with running_hosts(1) as (ours,):
        kp = create_new_key_pair()
        plain = new_host(key_pair=kp, sec_opt={PLAINTEXT_PROTOCOL_ID: InsecureTransport(kp)})
        async with plain.run(listen_addrs=[multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            with pytest.raises(Exception):
                with trio.fail_after(15):
                    await plain.connect(info_from_p2p_addr(multiaddr.Multiaddr(ours.addrs[0])))
            assert not ours.connected_peers()
            # and we cannot dial it either
            addr = f"{plain.get_addrs()[0]}"
            addr = addr if "/p2p/" in addr else f"{addr}/p2p/{plain.get_id().to_base58()}"
            with pytest.raises(HostError):
                await ours.connect(addr)


async def test_garbage_and_truncated_frames_leave_the_node_serving():
    async with running_hosts(3) as (server, junk_sender, client):
        await wait_until(lambda: server.peer_id in junk_sender.connected_peers())
        junk_frames = [b"\xff" * 64, struct.pack(">II", 100, 4) + b"\x00" * 10, b"\x00\x00\x00",
                       struct.pack(">II", 2**31, 0), struct.pack(">II", 9, 9) + b"\xc1" * 9]
        for junk in junk_frames:
            stream = await junk_sender.open_stream(server.peer_id, ECHO_PROTOCOL)
            await stream.write(junk)
            await stream.close()
        await wait_until(lambda: server.rpc_server.penalties.reasons.get("hostile_frame"))
        assert await client.rpc.call(server.peer_id, ECHO_PROTOCOL, "echo", "alive") == "alive"
        assert server.rpc_server.stats.rejected_frames >= 2
        # the undecodable header (0xc1 is no msgpack) refused its sender at once; nobody else
        assert server.rpc_server.refusing(junk_sender.peer_id) and not server.rpc_server.refusing(client.peer_id)


async def test_bad_addresses_are_clear_errors():
    async with running_hosts(1) as (h,):
        with pytest.raises(HostError, match="/p2p/"):
            await h.connect("/ip4/127.0.0.1/tcp/1")
        with pytest.raises(HostError):
            await h.connect("/ip4/127.0.0.1/tcp/1/p2p/notapeerid")


async def test_quic_behind_a_flag():
    async with running_hosts(2, quic=True) as (a, b):
        quic = [x for x in a.addrs if "/quic-v1/" in x]
        assert quic, a.addrs
        await b.rpc.forget(a.peer_id)
        for conn_addr in [quic[0]]:
            await b.connect(conn_addr)
        assert await b.rpc.call(a.peer_id, ECHO_PROTOCOL, "echo", "over quic") == "over quic"
