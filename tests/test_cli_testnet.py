"""The CLI end to end on a real local testnet of node processes: testnet up, status, peers, ask
(as a light peer and through a node's HTTP API), id, config errors, testnet down."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from swarmlm.testnet.local import LocalTestnet

SWARMLM = [sys.executable, "-m", "swarmlm.node.front.cli"]


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*SWARMLM, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def testnet(tmp_path_factory):
    base = tmp_path_factory.mktemp("tn")
    net = LocalTestnet(3, base, extra_args=["--model", "builtin:tiny"], http=True, sequential=True)
    with net.up(timeout=180):
        yield net


def test_status_shows_every_node_and_what_it_hosts(testnet):
    r = run("status", "--bootstrap", testnet.nodes[1].addr, "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["peers"]
    ids = {n.ready["peer_id"] for n in testnet.nodes}
    assert ids <= {row["peer_id"] for row in rows}
    for row in rows:
        if row["peer_id"] in ids:
            assert row["online"] and row["status"] == "online" and row["hosted"] == ["builtin:tiny[0:6]"]
            assert row["heartbeat_age_s"] < 60


def test_peers_lists_nodes_found_through_the_dht(testnet):
    r = run("peers", "--bootstrap", testnet.nodes[0].addr, "--json")
    assert r.returncode == 0, r.stderr
    found = {p["peer_id"] for p in json.loads(r.stdout)["peers"]}
    assert {n.ready["peer_id"] for n in testnet.nodes} <= found


def test_ask_p2p_and_http(testnet):
    r = run("ask", "--bootstrap", testnet.nodes[0].addr, "--max-tokens", "8", "--json", "hello")
    assert r.returncode == 0, r.stderr
    p2p = json.loads(r.stdout)
    assert p2p["completion_tokens"] == 8 and p2p["route"]
    assert p2p["verified_tokens"] == 8  # on by default: servers new to this client are checked every step
    r = run("ask", "--http", testnet.nodes[2].ready["http"], "--max-tokens", "8", "--json", "hello")  # HOST:PORT
    assert r.returncode == 0, r.stderr
    http = json.loads(r.stdout)
    assert http["text"] == p2p["text"]  # greedy: the same answer whichever way it is asked
    assert http["completion_tokens"] == 8 and http["route"]  # the same fields too
    assert http["verified_tokens"] == 8 and http["checks"] >= 1
    r = run("ask", "--http", f"http://{testnet.nodes[2].ready['http']}/", "--max-tokens", "2", "hello")
    assert r.returncode == 0 and any(line.startswith("2 tokens (") for line in r.stderr.splitlines()), r.stderr


def test_status_through_a_nodes_http_api(testnet):
    r = run("status", "--http", testnet.nodes[0].ready["http"])
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:2] == ["peer", "status"] and len(lines) == 4
    assert all(" online " in line and "builtin:tiny[0:6]" in line for line in lines[1:])


def test_bad_cli_input_is_a_clear_error(tmp_path):
    r = run("node", "run", "--data-dir", str(tmp_path), "--layers", "5:2")
    assert r.returncode != 0 and "layers" in r.stderr and "Traceback" not in r.stderr
    cfg = tmp_path / "c.toml"
    cfg.write_text('listn = ["/ip4/127.0.0.1/tcp/0"]\n')
    r = run("node", "run", "--config", str(cfg))
    assert r.returncode != 0 and "unknown config key 'listn'" in r.stderr
    r = run("ask", "hello")
    assert r.returncode == 2 and "--bootstrap" in r.stderr


def test_identity_key_is_private_and_stable(tmp_path):
    a = run("id", "--data-dir", str(tmp_path))
    b = run("id", "--data-dir", str(tmp_path))
    assert a.returncode == 0 and a.stdout == b.stdout and a.stdout.startswith("12D3KooW")
    key = tmp_path / "identity.key"
    assert (key.stat().st_mode & 0o777) == 0o600
    os.chmod(key, 0o644)
    r = run("node", "run", "--data-dir", str(tmp_path))
    assert r.returncode == 1 and "chmod 600" in r.stderr


def test_down_stops_exactly_what_up_started(tmp_path):
    net = LocalTestnet(2, tmp_path / "t2").up(timeout=120)
    r = run("testnet", "down", "--base-dir", str(net.base))
    assert r.returncode == 0 and "stopped 2 node processes" in r.stderr
    for node in net.nodes:  # our children: reap them; none may still run
        assert node.proc.wait(timeout=10) is not None
