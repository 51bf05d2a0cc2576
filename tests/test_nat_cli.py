"""`swarmlm testnet up --netns` (root): nodes start inside the simulated internet — the bootstrap on the
public host, one node behind each home router — and are stopped and cleaned up exactly."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from swarmlm.testnet.netns import list_namespaces

from helpers import require_netns

pytestmark = pytest.mark.netns


def test_testnet_up_netns_and_down(tmp_path) -> None:
    require_netns()
    from swarmlm.testnet.netns_testnet import netns_down

    base = tmp_path / "net"
    r = subprocess.run([sys.executable, "-m", "swarmlm.node.front.cli", "testnet", "up", "--netns", "--base-dir", str(base),
                        "--json"], capture_output=True, text=True, timeout=180)
    try:
        assert r.returncode == 0, r.stderr[-3000:]
        out = json.loads(r.stdout)
        sites = {n["site"]: n for n in out["nodes"]}
        assert {s: n["nat"] for s, n in sites.items()} == {"pub": "none", "a": "cone", "b": "cone", "c": "symmetric"}
        assert out["bootstrap"].startswith("/ip4/100.64.0.10/tcp/4001/p2p/" + sites["pub"]["peer_id"])
        assert sites["a"]["addrs"][0].startswith("/ip4/10.1.0.2/tcp/4001/")
        assert set(n["ns"] for n in sites.values()) <= set(list_namespaces())
    finally:
        stopped = netns_down(base)
    assert stopped == 4
    assert not set(n["ns"] for n in sites.values()) & set(list_namespaces())
