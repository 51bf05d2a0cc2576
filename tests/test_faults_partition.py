"""Network partition and heal (root: two network namespaces joined by a veth pair, iptables DROP).

Side A (namespace A, 10.9.0.1): nodes 0 (layers 0:3) and 1 (3:6) and the client; side B (10.9.0.2):
nodes 2 (0:3) and 3 (3:6). A generation routed through side B is cut off mid-way: it fails over to
side A and still gives identical greedy tokens. While cut off, each side keeps serving; after the
heal the swarm state converges (both sides see every node's heartbeats from after the heal). The
namespaces (and with them every rule and process) are removed at the end; skipped when not root.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time

import pytest
import trio

MODEL = "builtin:tiny"
A_IP, B_IP = "10.9.0.1", "10.9.0.2"


def _sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


def _reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, iptables)"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    return None


async def scenario(base: str, ns_b: str) -> None:
    """Runs inside namespace A; prints one JSON line of results."""
    from swarmlm.models.generate import generate, load_chain
    from swarmlm.models.registry import resolve
    from swarmlm.models.sampling import SamplingParams
    from swarmlm.models.tokenizer import Tokenizer
    from swarmlm.node.generation import GenerationRequest
    from swarmlm.testnet.local import NodeProc, _wait_ready, node_command

    sys.path.insert(0, os.path.dirname(__file__))
    from test_faults_kill import open_testnet_client

    out: dict = {"errors": []}
    procs: list[NodeProc] = []

    def start(i: int, ip: str, layers: str, bootstrap: list[str], ns: str | None) -> NodeProc:
        d = os.path.join(base, f"node{i}")
        os.makedirs(d, exist_ok=True)
        node = NodeProc(i, __import__("pathlib").Path(d))
        cmd = node_command(d, str(node.ready_file), listen=f"/ip4/{ip}/tcp/0", bootstrap=bootstrap,
                           extra=["--model", MODEL, "--layers", layers])
        if ns:
            cmd = ["ip", "netns", "exec", ns] + cmd
        with open(node.log_file, "ab") as log:
            node.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                         env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1"))
        procs.append(node)
        return node

    try:
        n0 = start(0, A_IP, "0:3", [], None)
        n0.ready = _wait_ready(n0, 120)
        boot = [n0.ready["addrs"][0]]
        others = [start(1, A_IP, "3:6", boot, None), start(2, B_IP, "0:3", boot, ns_b), start(3, B_IP, "3:6", boot, ns_b)]
        for n in others:
            n.ready = _wait_ready(n, 120)
        ids = [n.ready["peer_id"] for n in procs]
        side_b = set(ids[2:])
        params = SamplingParams(max_new_tokens=24)
        tok = Tokenizer.from_dir(resolve(MODEL))
        want = generate(load_chain(MODEL, 1), tok.encode("partition"), params, tok).token_ids
        async with open_testnet_client(boot[0], 4) as client:
            client.options.step_timeout_s = 3.0
            client.options.prefer = tuple(ids[2:])  # route through side B
            req = GenerationRequest(model=MODEL, prompt="partition", params=params)
            cut_at = None
            async with client.generate(req) as gen:
                async for _ in gen:
                    if cut_at is None and len(gen.token_ids) >= 3:
                        out["route_before"] = [h.peer_id in side_b for h in gen.route.hops]
                        for chain in ("INPUT", "OUTPUT"):
                            flag = "-s" if chain == "INPUT" else "-d"
                            _sh("iptables", "-I", chain, flag, B_IP, "-j", "DROP")
                        cut_at = time.time()
            out["identical"] = gen.token_ids == want
            out["failovers"] = gen.summary.failovers
            out["route_after_b"] = [h.peer_id in side_b for h in gen.summary.route]
            out["failover_s"] = round(time.time() - cut_at, 2)
            # while cut off, side A still serves (its own route)
            client.options.prefer = ()
            async with client.generate(GenerationRequest(model=MODEL, prompt="partition", params=params)) as g2:
                [c async for c in g2]
            out["served_during_partition"] = g2.token_ids == want
            # heal; the state converges: side B's heartbeats after the heal reach side A, and B sees A
            _sh("iptables", "-F", "INPUT")
            _sh("iptables", "-F", "OUTPUT")
            healed = time.time()
            client.bans.until.clear()
            out["converged_s"] = None
            with trio.move_on_after(60):
                while True:
                    fresh = {p: client.state.peer(p) for p in ids}
                    if all(e is not None and e.heartbeat > healed for e in fresh.values()):
                        out["converged_s"] = round(time.time() - healed, 2)
                        break
                    await trio.sleep(0.2)
            print(json.dumps(out), flush=True)
            for n in procs:
                os.killpg(n.proc.pid, signal.SIGKILL)
            os._exit(0)  # skip the client host teardown (see test_faults_kill)
    finally:
        for n in procs:
            try:
                os.killpg(n.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def test_partition_fails_over_and_state_converges_after_heal(tmp_path):
    reason = _reason()
    if reason:
        pytest.skip(reason)
    tag = f"slm9-{os.getpid()}-{secrets.token_hex(2)}"
    ns_a, ns_b = f"{tag}-a", f"{tag}-b"
    try:
        _sh("ip", "netns", "add", ns_a)
        _sh("ip", "netns", "add", ns_b)
        _sh("ip", "link", "add", f"{tag[-8:]}a", "type", "veth", "peer", "name", f"{tag[-8:]}b")
        for ns, ifc, ip in ((ns_a, f"{tag[-8:]}a", A_IP), (ns_b, f"{tag[-8:]}b", B_IP)):
            _sh("ip", "link", "set", ifc, "netns", ns)
            _sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", ifc)
            _sh("ip", "-n", ns, "link", "set", ifc, "up")
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
        proc = subprocess.run(["ip", "netns", "exec", ns_a, sys.executable, __file__, str(tmp_path), ns_b],
                              capture_output=True, text=True, timeout=400, env=dict(os.environ, SWARMLM_LOG_QUIET="1"))
    finally:
        for ns in (ns_a, ns_b):
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"scenario failed (status {proc.returncode}):\n{proc.stderr[-3000:]}"
    r = json.loads(lines[-1])
    print(f"\npartition: {r}")
    assert r["route_before"] == [True, True]  # the generation ran through side B when the link was cut
    assert r["identical"] and r["failovers"] >= 1 and not any(r["route_after_b"])
    assert r["served_during_partition"]
    assert r["converged_s"] is not None


if __name__ == "__main__":
    logging.disable(logging.WARNING)
    trio.run(scenario, sys.argv[1], sys.argv[2])
