"""py-libp2p 0.8.1's own relay v2 + DCUtR through the netns NATs (root; evidence for the libp2p layer).

Cone <-> cone: DCUtR ends with a direct TCP connection whose remote address is the other NAT's public
address, and new streams use it; symmetric: no direct connection, the echo still flows over the relay.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from swarmlm.testnet.netns import Topology
from swarmlm.testnet.p2plab import run_pair, start_relay

from helpers import require_netns

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def lab() -> Iterator[tuple[Topology, str]]:
    require_netns()
    with Topology() as topo:
        _, relay_addr = start_relay(topo)
        yield topo, relay_addr


@pytest.mark.parametrize(("x", "y", "port"), [("a", "b", 4100), ("b", "a", 4101)])
def test_dcutr_cone_to_cone_goes_direct(lab: tuple[Topology, str], x: str, y: str, port: int) -> None:
    topo, relay_addr = lab
    res = run_pair(topo, relay_addr, x, y, port, punch_timeout=10)
    assert res.get("relayed") and res["echo_ok"], res
    expected = f"/ip4/{topo.sites[y].public_ip}/tcp/{port}"
    assert res["direct"] == [expected], res  # the peer's NAT, not the relay
    assert res["echo_via"] == [expected], res  # new streams prefer the direct connection


def test_dcutr_symmetric_falls_back_to_relay(lab: tuple[Topology, str]) -> None:
    topo, relay_addr = lab
    res = run_pair(topo, relay_addr, "c", "a", 4102, punch_timeout=3)
    assert res.get("relayed") and res["echo_ok"], res
    assert res["direct"] == [] and not res["punched"], res
    assert all("/p2p-circuit/" in a for a in res["echo_via"]), res
