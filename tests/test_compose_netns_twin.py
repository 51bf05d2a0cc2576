"""The docker compose swarm's twin: `testnet up --netns --demo` starts the services of
testnet/description.py (the description the compose file is generated from) inside the netns
internet, and they form one swarm (run here with builtin:tiny instead of SmolLM2)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from swarmlm.testnet import description as desc

from helpers import require_netns

pytestmark = pytest.mark.netns


def test_compose_twin_runs_in_the_netns_internet(tmp_path):
    require_netns()
    from swarmlm.testnet.netns_testnet import netns_demo_up, netns_down

    out = netns_demo_up(tmp_path, model="builtin:tiny", timeout=120)
    try:
        names = [n["name"] for n in out["nodes"]]
        assert sorted(names) == sorted(n.name for n in desc.DEMO.nodes)
        sites = {n["name"]: n["site"] for n in out["nodes"]}
        assert sites["home"] == desc.DEMO.network("home").netns_site and sites["bootstrap"] == "pub"
        boot = next(n for n in out["nodes"] if n["name"] == "bootstrap")
        assert boot["peer_id"] == desc.dev_identity("bootstrap").peer_id  # the address compose nodes use
        state = json.loads((tmp_path / "testnet.json").read_text())
        pub_ns = next(ns for ns in state["netns"]["namespaces"] if ns.endswith("-pub"))
        r = subprocess.run(["ip", "netns", "exec", pub_ns, sys.executable, "-m", "swarmlm.node.front.cli", "status",
                            "--bootstrap", boot["addrs"][0], "--json"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        rows = {row["peer_id"]: row for row in json.loads(r.stdout)["peers"]}
        assert {n["peer_id"] for n in out["nodes"]} <= set(rows)
        hosted = [h for row in rows.values() for h in row["hosted"]]
        assert "builtin:tiny[0:6]" in hosted  # the "whole" node
    finally:
        netns_down(tmp_path)
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert out["run_id"] not in listed
