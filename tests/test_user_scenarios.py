"""Issue 17's scenarios, as a new user meets them, on real `swarmlm` processes: every failure exits
non-zero with one line that says what to change; `ask`, `status` and `peers` print no third-party log
line at the default log level; a killed node and a node stopped with Ctrl-C agree between `status`
and the health page within 5 s. One testnet of three `builtin:tiny` nodes (a third of the layers each).

Numbered as the issue's items: 1 node run failures, 2 clean output and no 0.0.0.0 addresses, 3 EE key
without a served variant, 4 liveness, 5 a model whose only host died, 6 docs/CLI (HTTP forms, dead
port, missing bootstrap, `node id`), 7 SDK names and --check-fraction, 8 bad bootstrap, 9 one node per
data dir, 10 the operator's view of the health page.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest

from swarmlm.testnet.local import LocalTestnet

SWARMLM = [sys.executable, "-m", "swarmlm.node.front.cli"]
# what py-libp2p, trio, httpx or Python itself print when they reach the user
THIRD_PARTY = re.compile(r"libp2p|Failed to|Traceback|ExceptionGroup|multiaddr|hypercorn|httpx|WARNING|DEBUG")


def run(*args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*SWARMLM, *args], capture_output=True, text=True, timeout=timeout, env=env,
                          stdin=subprocess.DEVNULL)


def one_clear_line(r: subprocess.CompletedProcess, *words: str) -> str:
    """A failure: non-zero exit, its last stderr line says what went wrong and names ``words``."""
    assert r.returncode != 0, r.stdout + r.stderr
    assert not THIRD_PARTY.search(r.stderr), r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("swarmlm: error: "), r.stderr
    for w in words:
        assert w in line, line
    return line


def clean(r: subprocess.CompletedProcess) -> None:
    """A success: exit 0 and nothing but our own output."""
    assert r.returncode == 0, r.stderr
    assert not THIRD_PARTY.search(r.stdout + r.stderr), r.stdout + r.stderr


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    base = tmp_path_factory.mktemp("scenarios")
    tn = LocalTestnet(3, base / "tn", extra_args=["--model", "builtin:tiny", "--max-layers", "2"], http=True,
                      sequential=True)
    with tn.up(timeout=180):
        yield tn


def api_status(node) -> dict[str, str]:
    peers = httpx.get(f"http://{node.ready['http']}/api/swarm", timeout=10).json()["peers"]
    return {p["peer_id"]: p["status"] for p in peers}


def test_1_node_run_failures_exit_non_zero_with_one_line(net, tmp_path):
    one_clear_line(run("node", "run", "--data-dir", str(tmp_path / "a"), "--model", "nosuch"), "nosuch")
    one_clear_line(run("node", "run", "--data-dir", str(tmp_path / "b"), "--model", "builtin:tiny",
                       "--layers", "0:99"), "0:99")
    one_clear_line(run("node", "run", "--data-dir", str(tmp_path / "c"), "--model", "builtin:tiny",
                       "--http", net.nodes[0].ready["http"]), "HTTP", "in use")


def test_2_6_7_successes_are_clean(net):
    r = run("ask", "--bootstrap", net.nodes[0].addr, "--max-tokens", "4", "--check-fraction", "1.0", "hi")
    clean(r)
    assert "4 tokens" in r.stderr and "route:" in r.stderr
    assert "verification:" in r.stderr and "no second replica" in r.stderr  # 7: says what it checked
    r = run("ask", "--http", net.nodes[1].ready["http"], "--max-tokens", "3", "hi")  # 6: HOST:PORT
    clean(r)
    assert "3 tokens" in r.stderr  # 6: not "0 tokens"
    for cmd in (["status", "--http", net.nodes[0].ready["http"]], ["peers", "--bootstrap", net.nodes[2].addr]):
        clean(run(*cmd))
    r = run("status", "--bootstrap", net.nodes[1].addr, "--json")
    clean(r)
    rows = json.loads(r.stdout)["peers"]
    assert {n.ready["peer_id"] for n in net.nodes} <= {row["peer_id"] for row in rows}
    for row in rows:  # 2: no unreachable address advertised (the one-shot clients' included)
        assert not any("/0.0.0.0/" in a for a in row.get("addrs") or []), row
    r = run("node", "id", "--data-dir", str(net.nodes[0].data_dir))  # 6: the command OPERATIONS.md names
    assert r.returncode == 0 and r.stdout.strip() == net.nodes[0].ready["peer_id"]


def test_6_8_client_failures_are_one_line(net, monkeypatch):
    monkeypatch.delenv("SWARMLM_BOOTSTRAP", raising=False)
    one_clear_line(run("ask", "--http", "127.0.0.1:1", "hi"), "cannot reach", "HOST:PORT")
    one_clear_line(run("ask", "hi"), "--bootstrap", "--http", "SWARMLM_BOOTSTRAP")
    one_clear_line(run("ask", "--bootstrap", "/ip4/127.0.0.1/tcp/1", "hi"), "/p2p/")
    peer = net.nodes[0].ready["peer_id"]
    line = one_clear_line(run("ask", "--bootstrap", f"/ip4/127.0.0.1/tcp/1/p2p/{peer}", "hi"), "cannot reach")
    assert "saw no model" not in line  # 8: one cause, not two contradictory ones


def test_3_ee_key_without_a_served_variant_is_refused(net, tmp_path):
    assert run("key", "gen", "--out", str(tmp_path / "my.key")).returncode == 0
    one_clear_line(run("ask", "--bootstrap", net.nodes[0].addr, "--ee-key", str(tmp_path / "my.key"), "hi"))


def test_7_sdk_takes_openai_names_and_refuses_unknown_ones(net):
    code = f"""
from swarmlm import Client
with Client(bootstrap=[{net.nodes[0].addr!r}]) as c:
    text = "".join(c.generate("hi", max_tokens=3, temperature=0))
    assert c.last_summary.completion_tokens == 3, c.last_summary
    try:
        list(c.generate("hi", max_token=3))
    except Exception as e:
        print("refused:", e)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    clean(r)
    assert "refused: unknown argument max_token; accepted: max_tokens" in r.stdout


def test_9_one_node_per_data_dir(net):
    one_clear_line(run("node", "run", "--data-dir", str(net.nodes[1].data_dir)), "in use", f"pid {net.nodes[1].pid}")


def test_10_health_page_operator_view(net):
    d = httpx.get(f"http://{net.nodes[0].ready['http']}/api/swarm", timeout=10).json()
    assert d["node"]["addrs"] and all("/p2p/" in a and "/0.0.0.0/" not in a for a in d["node"]["addrs"])
    for key in ("cpu_percent", "rss_mb", "sessions_open", "http_requests", "http_errors"):
        assert key in d["node"], key
    assert d["peers"][0]["self"] and all("last_seen" in p for p in d["peers"])


def _agree_within(net, observer, peer: str, want: str, seconds: float = 5.0) -> None:
    """The health page says ``want`` for ``peer`` within ``seconds``, and `status` agrees."""
    deadline = time.monotonic() + seconds
    while api_status(observer).get(peer) != want and time.monotonic() < deadline:
        time.sleep(0.2)
    assert api_status(observer).get(peer) == want, api_status(observer)
    r = run("status", "--bootstrap", net.nodes[0].addr, "--json")
    clean(r)
    assert {row["peer_id"]: row["status"] for row in json.loads(r.stdout)["peers"]}[peer] == want


def test_4_5_a_killed_node_then_a_stopped_one(net):
    victim = net.nodes[2].ready["peer_id"]
    net.kill(2)  # SIGKILL: no goodbye
    _agree_within(net, net.nodes[0], victim, "disconnected")
    r = run("ask", "--bootstrap", net.nodes[0].addr, "--max-tokens", "4", "hi")  # 5: its layers' only host died
    one_clear_line(r, "no live server")
    r = run("peers", "--bootstrap", net.nodes[1].addr, "--json")
    clean(r)
    assert victim not in {p["peer_id"] for p in json.loads(r.stdout)["peers"]}
    net.start_node(2)  # back on a new port: the old address is dead in every table, and ask stays clean
    r = run("ask", "--bootstrap", net.nodes[0].addr, "--max-tokens", "4", "hi")
    clean(r)
    assert "4 tokens" in r.stderr
    stopped = net.nodes[1].ready["peer_id"]
    net.kill(1, signal.SIGINT)  # Ctrl-C: a clean shutdown publishes the leaving mark
    _agree_within(net, net.nodes[0], stopped, "left")


def test_2_the_demo_prints_no_third_party_line(tmp_path):
    """`make demo`'s script with builtin:tiny (the real model is the same code, 30 layers slower)."""
    r = subprocess.run([sys.executable, "-c", "import sys; from swarmlm.node.front.demo import main; "
                        "sys.exit(main('builtin:tiny', max_layers=2))"], capture_output=True, text=True, timeout=300,
                       stdin=subprocess.DEVNULL)
    clean(r)
    assert "route and timings" in r.stdout and "demo done" in r.stdout
