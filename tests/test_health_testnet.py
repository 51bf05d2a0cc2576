"""/api/swarm on a testnet of real node processes: when a node process is killed its connections close,
and the viewing node marks it ``disconnected`` and shows its layers as a gap right away (no TTL wait)."""

from __future__ import annotations

import time

import httpx

from swarmlm.testnet.local import LocalTestnet

MODEL = "builtin:tiny"


def poll(http: httpx.Client, url: str, cond, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        snap = http.get(url + "/api/swarm").json()
        if cond(snap) or time.monotonic() > deadline:
            return snap
        time.sleep(0.2)


def test_a_killed_node_process_shows_as_disconnected_with_a_gap(tmp_path):
    layers = {0: ["--layers", "0:2"], 1: ["--layers", "2:4"], 2: ["--layers", "4:6"]}
    with LocalTestnet(3, tmp_path, extra_args=["--model", MODEL], per_node_args=layers, http=True) as net, \
            httpx.Client(trust_env=False, timeout=30) as http:
        url = f"http://{net.nodes[0].ready['http']}"
        snap = poll(http, url, lambda s: s["summary"]["online"] == 3 and all(p["connection"] != "none" for p in s["peers"]))
        assert snap["summary"] == {"peers": 3, "online": 3, "models": 1, "complete": True}
        gone = net.nodes[2].ready["peer_id"]
        net.kill(2)
        snap = poll(http, url, lambda s: s["summary"]["online"] == 2)
        peer = next(p for p in snap["peers"] if p["peer_id"] == gone)
        assert peer["status"] == "disconnected" and peer["heartbeat_age_s"] < snap["node"]["state_ttl_s"]
        assert snap["models"][0]["gaps"] == [[4, 6]] and not snap["summary"]["complete"]
