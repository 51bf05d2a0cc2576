"""Hole punching at the socket level inside the netns internet (root; see docs/NAT.md).

Two cone-NAT hosts get a direct TCP connection by simultaneous open and a UDP path by punching, each
within a few seconds, 10 trials each; a symmetric-NAT host cannot punch and talks through the relay.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from swarmlm.testnet.holepunch import UDP_KEEPALIVE_S, fmt_addr, parse_addr
from swarmlm.testnet.netns import PUBLIC_IP, Topology
from swarmlm.testnet.punchlab import run_trials, start_rendezvous

from helpers import require_netns

pytestmark = pytest.mark.netns
TRIALS = 10




@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    require_netns()
    with Topology() as t:
        start_rendezvous(t)
        yield t


def _successes(rows: list[tuple[dict, dict]]) -> int:
    return sum(1 for x, y in rows if x["ok"] and y["ok"])


def _report(record_property, name: str, rows: list[tuple[dict, dict]]) -> None:
    rate = f"{_successes(rows)}/{len(rows)}"
    record_property(f"{name}_success", rate)
    print(f"\n{name}: success {rate}")


def test_parse_and_format_addr() -> None:
    assert parse_addr("100.64.0.11:40000") == ("100.64.0.11", 40000)
    assert fmt_addr(("1.2.3.4", 5)) == "1.2.3.4:5"
    with pytest.raises(ValueError):
        parse_addr("nope")
    assert UDP_KEEPALIVE_S < 30  # under conntrack's unreplied-UDP timeout


def test_tcp_simultaneous_open_cone_to_cone(topo: Topology, record_property) -> None:
    rows = run_trials(topo, "tcp", "a", "b", TRIALS, timeout=5, base_port=40000)
    _report(record_property, "tcp_cone_cone", rows)
    assert _successes(rows) >= TRIALS - 1, rows
    pub_a, pub_b = topo.sites["a"].public_ip, topo.sites["b"].public_ip
    for a, b in rows:
        if a["ok"]:  # the direct connection's remote is the other NAT's public address, not the relay
            assert parse_addr(a["remote"])[0] == pub_b and parse_addr(b["remote"])[0] == pub_a
            assert a["remote"] == a["peer_public"] and PUBLIC_IP not in (a["remote"], b["remote"])


def test_tcp_punch_when_one_side_is_late(topo: Topology, record_property) -> None:
    # b starts 0.3 s after a: a's first SYN dies at b's router (no RST, no clash); b's SYN then completes it
    rows = run_trials(topo, "tcp", "a", "b", 3, timeout=5, base_port=40100, delay_y=0.3)
    _report(record_property, "tcp_cone_cone_late", rows)
    assert _successes(rows) >= 2, rows


def test_udp_punch_cone_to_cone(topo: Topology, record_property) -> None:
    rows = run_trials(topo, "udp", "a", "b", TRIALS, timeout=5, base_port=40200)
    _report(record_property, "udp_cone_cone", rows)
    assert _successes(rows) >= TRIALS - 1, rows
    for a, b in rows:
        if a["ok"]:
            assert parse_addr(a["remote"])[0] == topo.sites["b"].public_ip
            assert parse_addr(b["remote"])[0] == topo.sites["a"].public_ip


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_symmetric_nat_cannot_punch(topo: Topology, proto: str, record_property) -> None:
    base = 40300 if proto == "tcp" else 40400
    rows = run_trials(topo, proto, "a", "c", 2, timeout=2, base_port=base)
    _report(record_property, f"{proto}_cone_symmetric", rows)
    assert _successes(rows) == 0, rows
    for i, (a, c) in enumerate(rows):  # c's NAT picks a random port per destination: the observed one is useless
        assert parse_addr(c["you"])[1] != base + i
        assert "failed" in a.get("error", "") and "failed" in c.get("error", "")


@pytest.mark.parametrize("peer", ["a", "b"])
def test_symmetric_nat_talks_through_relay(topo: Topology, peer: str) -> None:
    rows = run_trials(topo, "relay", "c", peer, 2, timeout=5, base_port=40500)
    assert _successes(rows) == 2, rows
    assert all(c["remote"] == f"{PUBLIC_IP}:7000" for c, _ in rows)


def test_router_without_wan_filter_breaks_udp_punching(record_property) -> None:
    """Why the routers drop unsolicited WAN input: without it the first crossing datagram creates a
    conntrack entry on the router that clashes with the host's mapping, so MASQUERADE picks another port."""
    require_netns()
    with Topology(filter_wan=False) as bare:
        start_rendezvous(bare)
        rows = run_trials(bare, "udp", "a", "b", 3, timeout=1.5, base_port=40600)
    _report(record_property, "udp_cone_cone_no_wan_filter", rows)
    assert _successes(rows) <= 1, rows


def test_udp_keepalives_keep_the_path_open(record_property) -> None:
    """Routers forget quiet UDP flows (conntrack: 30 s unreplied, 120 s assured; shortened here to 2/3 s):
    a punched path survives 5 s of idling with 1 s keep-alives and dies without them."""
    require_netns()
    with Topology(udp_timeouts=(2, 3)) as short:
        start_rendezvous(short)
        kept = run_trials(short, "udp", "a", "b", 1, timeout=3, base_port=40700, idle=5, keepalive=1)
        quiet = run_trials(short, "udp", "a", "b", 1, timeout=3, base_port=40800, idle=5, keepalive=0)
    assert kept[0][0]["ok"] and quiet[0][0]["ok"], (kept, quiet)
    assert kept[0][0]["alive"] is True, kept
    assert quiet[0][0]["alive"] is False, quiet
