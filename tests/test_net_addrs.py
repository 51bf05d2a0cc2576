"""What a host advertises and how a light client joins: never 0.0.0.0, never a client in anyone's DHT
routing table, a bootstrap that does not answer reported at once, and a failure inside a running host
raised rather than swallowed (it made `node run` exit 0 with no error)."""

from __future__ import annotations

import socket

import pytest
import trio

from swarmlm.crypto.identity import Identity
from swarmlm.net.addrs import advertised, best_for_sharing, is_dialable
from swarmlm.net.host import HostConfig, HostError, SwarmHost

from helpers import running_hosts

IPS = {"ip4": ["192.0.2.7", "127.0.0.1"], "ip6": ["::1"]}


def test_unspecified_addresses_become_interface_addresses():
    assert advertised(["/ip4/0.0.0.0/tcp/4001"], IPS) == ["/ip4/192.0.2.7/tcp/4001", "/ip4/127.0.0.1/tcp/4001"]
    assert advertised(["/ip6/::/tcp/5"], IPS) == ["/ip6/::1/tcp/5"]
    assert advertised(["/ip4/127.0.0.1/tcp/1", "/ip4/127.0.0.1/tcp/1", "/ip4/169.254.1.2/tcp/3"], IPS) == \
        ["/ip4/127.0.0.1/tcp/1"]
    assert advertised(["/ip4/0.0.0.0/tcp/1"], {"ip4": []}) == []
    assert advertised(["/dns4/example.org/tcp/1", "/ip4/1.2.3.4/tcp/1/p2p/x/p2p-circuit"], IPS) == \
        ["/dns4/example.org/tcp/1", "/ip4/1.2.3.4/tcp/1/p2p/x/p2p-circuit"]
    assert not is_dialable("/ip4/0.0.0.0/tcp/1") and is_dialable("/ip4/10.0.0.1/tcp/1")


def test_the_address_to_hand_out_is_direct_and_not_loopback_when_possible():
    a = ["/ip4/1.2.3.4/tcp/1/p2p/R/p2p-circuit/p2p/X", "/ip4/127.0.0.1/tcp/5/p2p/X", "/ip4/192.0.2.7/tcp/5/p2p/X"]
    assert best_for_sharing(a) == "/ip4/192.0.2.7/tcp/5/p2p/X"
    assert best_for_sharing(a[:2]) == "/ip4/127.0.0.1/tcp/5/p2p/X"
    assert best_for_sharing([]) is None


async def test_a_host_listening_everywhere_advertises_dialable_addresses_only():
    host = SwarmHost(Identity.generate(), HostConfig(listen=["/ip4/0.0.0.0/tcp/0"], relay=False, hole_punch=False))
    async with host.running():
        assert host.addrs and not any("/0.0.0.0/" in a for a in host.addrs)
        assert any("/ip4/127.0.0.1/" in a for a in host.addrs)
        assert all(str(a).find("0.0.0.0") < 0 for a in host.libp2p.get_addrs())  # what identify sends


async def test_a_light_client_joins_without_entering_routing_tables():
    async with running_hosts(2, discovery_interval_s=0.5) as (boot, other):
        client = SwarmHost(Identity.generate(), HostConfig(listen=["/ip4/127.0.0.1/tcp/0"], bootstrap=boot.addrs[:1],
                                                           client_only=True))
        async with client.running():
            assert boot.peer_id in client.connected_peers()  # joined before running() yielded
            await trio.sleep(1.5)  # a few discovery rounds of the others
            for h in (boot, other):
                table = {p.to_base58() for p in h._dht.routing_table.get_peer_ids()}
                assert client.peer_id not in table


async def test_a_bootstrap_nobody_answers_at_is_one_error_at_once():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    addr = f"/ip4/127.0.0.1/tcp/{port}/p2p/{Identity.generate().peer_id}"
    client = SwarmHost(Identity.generate(), HostConfig(listen=["/ip4/127.0.0.1/tcp/0"], bootstrap=[addr],
                                                       client_only=True))
    with trio.fail_after(15), pytest.raises(BaseException) as info:
        async with client.running():
            pass
    from swarmlm.errors import root_cause

    err = root_cause(info.value)
    assert isinstance(err, HostError) and "cannot reach the bootstrap peer" in str(err) and "\n" not in str(err)


async def test_an_error_inside_a_running_host_is_raised_not_swallowed():
    host = SwarmHost(Identity.generate(), HostConfig(listen=["/ip4/127.0.0.1/tcp/0"]))  # relay and DCUtR on
    with pytest.raises(BaseException) as info:
        async with host.running():
            raise ValueError("the node's service failed")
    from swarmlm.errors import leaves

    assert [type(e) for e in leaves(info.value)] == [ValueError]
