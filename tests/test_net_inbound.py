"""Inbound connection admission (``net/inbound.py``, ``net/transport/inbound_gate.py``): per IP
prefix and in total, refused before the handshake, established peers with standing never refused."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack

import pytest
import trio

from swarmlm.crypto.identity import Identity
from swarmlm.net.host import ECHO_PROTOCOL, HostConfig, HostError, SwarmHost
from swarmlm.net.inbound import InboundAdmission, InboundLimits, Ticket, connection_prefix
from swarmlm.testnet.sybil import light_host


def test_prefixes_group_a_host_and_its_neighbours():
    assert connection_prefix("203.0.113.7") == connection_prefix("203.0.113.200") == "203.0.113.0/24"
    assert connection_prefix("203.0.114.7") != connection_prefix("203.0.113.7")
    assert connection_prefix("2001:db8:0:1234::1") == connection_prefix("2001:db8:0:12ff::9") == "2001:db8:0:1200::/56"
    assert connection_prefix("::ffff:203.0.113.9") == "203.0.113.0/24"
    assert connection_prefix("127.0.0.1") == connection_prefix("127.5.0.1") == connection_prefix("::1") == "loopback"
    assert connection_prefix(None) == "no-address"
    assert connection_prefix("not-an-ip") == "not-an-ip"


def test_the_rate_and_the_burst_are_per_prefix():
    adm = InboundAdmission(InboundLimits(rate_per_prefix=1.0, burst=3, handshakes_per_prefix=100))
    got = [adm.arrive("10.0.0.1", 0.0) for _ in range(4)]
    assert [isinstance(t, Ticket) for t in got] == [True, True, True, False] and got[3] == "rate"
    assert isinstance(adm.arrive("10.0.1.1", 0.0), Ticket)  # another /24 has its own bucket
    assert adm.arrive("10.0.0.9", 0.5) == "rate" and isinstance(adm.arrive("10.0.0.9", 1.1), Ticket)


def test_handshakes_in_flight_wait_for_a_slot_and_the_queue_and_total_are_bounded():
    lim = InboundLimits(burst=100, handshakes_per_prefix=2, handshakes_total=3, waiting_per_prefix=2,
                        unestablished_total=6)
    adm = InboundAdmission(lim)
    a = [adm.arrive("10.0.0.1", 0.0) for _ in range(5)]
    assert [t.state if isinstance(t, Ticket) else t for t in a] == ["handshake", "handshake", "waiting", "waiting",
                                                                    "queue_full"]
    b, c = adm.arrive("10.9.0.1", 0.0), adm.arrive("10.8.0.1", 0.0)
    assert b.state == "handshake" and c.state == "waiting"  # the total's third slot; then the total is full
    assert adm.arrive("10.7.0.1", 0.0) == "unestablished"  # 3 in flight + 3 waiting
    assert not adm.try_start(a[2])
    assert adm.handshake_done(a[0], "p0", trusted=False, now=0.1) is None
    assert adm.try_start(a[2]) and not adm.try_start(a[3])
    adm.close(a[3], 5.0, "wait_timeout")  # gave up waiting
    adm.close(a[1])  # the handshake failed
    assert adm.try_start(c)
    for t in (a[2], c, b):
        adm.close(t)
    adm.close(a[0])
    assert (adm.in_flight_total, adm.waiting_total, adm.untrusted_total) == (0, 0, 0)
    assert adm.in_flight == adm.waiting == adm.untrusted == {}
    assert adm.refused_total == {"queue_full": 1, "unestablished": 1, "wait_timeout": 1}


def test_peers_without_standing_are_bounded_and_peers_with_standing_are_never_refused():
    adm = InboundAdmission(InboundLimits(burst=100, untrusted_per_prefix=2, untrusted_total=3))
    t = [adm.arrive("10.0.0.1", 0.0) for _ in range(3)] + [adm.arrive("10.0.1.1", 0.0) for _ in range(2)]
    assert [adm.handshake_done(x, f"p{i}", False, 0.0) for i, x in enumerate(t[:3])] == [None, None, "untrusted"]
    assert adm.handshake_done(t[3], "q", False, 0.0) is None  # the total's third
    assert adm.handshake_done(t[4], "q2", False, 0.0) == "untrusted"  # total full
    trusted = [adm.arrive("10.0.0.1", 0.0) for _ in range(5)]
    assert all(adm.handshake_done(x, f"t{i}", True, 0.0) is None for i, x in enumerate(trusted))
    adm.close(t[0])
    adm.close(t[0])  # idempotent
    assert adm.untrusted == {"10.0.0.0/24": 1, "10.0.1.0/24": 1} and adm.untrusted_total == 2


def test_refusals_are_noted_once_per_prefix_per_interval():
    adm = InboundAdmission(InboundLimits(rate_per_prefix=0.001, burst=1, log_interval_s=60))
    adm.arrive("10.0.0.1", 0.0)
    assert adm.refusal_note("10.0.0.0/24", 0.0) is None  # nothing refused yet
    assert adm.arrive("10.0.0.1", 1.0) == "rate"
    first = adm.refusal_note("10.0.0.0/24", 1.0)
    assert first and "10.0.0.0/24" in first and "1 over the connection rate" in first
    for s in range(2, 30):
        adm.arrive("10.0.0.1", float(s))
        assert adm.refusal_note("10.0.0.0/24", float(s)) is None
    later = adm.refusal_note("10.0.0.0/24", 61.5)
    assert "28 over the connection rate" in later and "in the last 60 s" in later


def test_bad_limits_are_refused():
    with pytest.raises(ValueError, match="handshakes_per_prefix"):
        InboundAdmission(InboundLimits(handshakes_per_prefix=0))


def _target(limits: InboundLimits) -> SwarmHost:
    return SwarmHost(Identity.generate(), HostConfig(
        listen=["/ip4/127.0.0.1/tcp/0"], relay=False, hole_punch=False, discovery_interval_s=3600.0,
        ping_interval_s=3600.0, inbound=limits))


async def test_excess_connections_are_refused_and_the_node_keeps_serving(caplog):
    caplog.set_level(logging.WARNING, logger="swarmlm.inbound")
    # loopback is one prefix: a burst of 6 connections, then (practically) none; 3 without standing
    limits = InboundLimits(rate_per_prefix=0.001, burst=6, untrusted_per_prefix=3, untrusted_total=3)
    target = _target(limits)
    honest, early = light_host(), light_host()
    attackers = [light_host() for _ in range(8)]
    async with AsyncExitStack() as stack:
        for h in [target, honest, early] + attackers:
            await stack.enter_async_context(h.running())
        target.rpc_server.trusted = lambda peer: peer == honest.peer_id  # standing, as the node's trust view says
        adm = target.libp2p.get_network().swarmlm_inbound.admission
        addr = target.addrs[0]
        await early.connect(addr)  # without standing: 1 of the 3
        results: list[bool] = []

        async def attack(a: SwarmHost) -> None:
            try:
                await a.connect(addr)
                with trio.fail_after(5):
                    await a.rpc.call(target.peer_id, ECHO_PROTOCOL, "echo", "hi", timeout=5)
                results.append(True)
            except (HostError, Exception):  # refused: its defence working
                results.append(False)

        async with trio.open_nursery() as nursery:
            for a in attackers:
                nursery.start_soon(attack, a)
        # 6 tokens: early + 5 attackers get a handshake; 2 of those fill the room without standing,
        # the other 3 are closed after it; 3 attackers are refused before it (each dial retried)
        assert results.count(True) == 2
        assert adm.refused_total["untrusted"] == 3 and adm.refused_total["rate"] >= 3
        assert set(adm.refused_total) == {"rate", "untrusted"}
        assert adm.untrusted_total == 3 and adm.in_flight_total == adm.waiting_total == 0
        # a peer with standing still gets in (no rate token needed for its old connection; a new one
        # would need one: the honest peer connected before the burst was spent in real swarms)
        adm._rates.bucket("loopback").tokens = 1.0
        await honest.connect(addr)
        assert await honest.rpc.call(target.peer_id, ECHO_PROTOCOL, "echo", "still here", timeout=5) == "still here"
        assert await early.rpc.call(target.peer_id, ECHO_PROTOCOL, "echo", "me too", timeout=5) == "me too"
        notes = [r.getMessage() for r in caplog.records if "inbound connections from loopback refused" in r.getMessage()]
        assert len(notes) == 1, notes  # once per prefix per interval, however many refusals


def test_the_node_config_sets_the_limits_and_names_a_bad_key():
    from swarmlm.errors import ConfigError
    from swarmlm.node import config

    assert config.load(env={}).inbound_limits() == InboundLimits()  # the documented defaults are the class's
    cfg = config.load(env={"SWARMLM_INBOUND_RATE": "0.5", "SWARMLM_INBOUND_HANDSHAKES": "64"})
    lim = cfg.inbound_limits()
    assert (lim.rate_per_prefix, lim.handshakes_per_prefix, lim.handshakes_total) == (0.5, 64, 64)
    InboundAdmission(lim)  # consistent
    with pytest.raises(ConfigError, match="inbound_handshakes"):
        config.load(env={"SWARMLM_INBOUND_HANDSHAKES": "0"})
    with pytest.raises(ConfigError, match="inbound_rate"):
        config.load(env={"SWARMLM_INBOUND_RATE": "-1"})
