"""Process-level faults (real node processes, builtin:tiny, layers 0:2 2:4 4:6 2:4): kill -9 of the
middle server mid-generation gives identical greedy tokens 20 times out of 20 (the replay cost is
printed), and a restarted node rejoins with a new address, resyncs the swarm state and re-announces
its shards."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import statistics
import time
import urllib.request
from contextlib import asynccontextmanager

import trio

from swarmlm.models.generate import generate, load_chain
from swarmlm.models.registry import resolve
from swarmlm.models.sampling import SamplingParams
from swarmlm.models.tokenizer import Tokenizer
from swarmlm.node.generation import GenerationRequest
from swarmlm.testnet.local import LocalTestnet

MODEL = "builtin:tiny"
LAYERS = ("0:2", "2:4", "4:6", "2:4")
RUNS = int(os.environ.get("SWARMLM_KILL_RUNS", "20"))


@asynccontextmanager
async def open_testnet_client(addr: str, n_peers: int):
    from swarmlm.crypto.identity import Identity
    from swarmlm.net.host import HostConfig, SwarmHost
    from swarmlm.net.state_service import StateService
    from swarmlm.node.client.options import ClientOptions
    from swarmlm.node.client.pipeline import PipelineGenerator

    host = SwarmHost(Identity.generate(), HostConfig(listen=["/ip4/127.0.0.1/tcp/0"], bootstrap=[addr],
                                                     discovery_interval_s=1.0))
    state = StateService(host, None, publish=False)
    async with host.running(), trio.open_nursery() as nursery:
        nursery.start_soon(state.run)
        with trio.fail_after(30):
            while len(state.state.peers(time.time())) < n_peers:
                await trio.sleep(0.1)
        try:
            yield PipelineGenerator(host, state, ClientOptions(step_timeout_s=10.0, max_failovers=3))
        finally:
            nursery.cancel_scope.cancel()


async def _wait_entry(client, peer_id: str, addr: str) -> None:
    """Until the client's state shows ``peer_id`` heartbeating from ``addr``, hosting its layers."""
    with trio.fail_after(30):
        while True:
            e = client.state.peer(peer_id)
            if e is not None and any(addr.split("/p2p/")[0] in a for a in e.addrs) and \
                    any(s.peer_id == peer_id for s in client.servers(MODEL)):
                return
            await trio.sleep(0.1)


async def scenario(base: str, runs: int) -> None:
    """The whole scenario (run in a child process, see the test): prints the results as one JSON line."""
    params = SamplingParams(max_new_tokens=24)
    tok = Tokenizer.from_dir(resolve(MODEL))
    prompt = "kill the middle server"
    want = generate(load_chain(MODEL, 1), tok.encode(prompt), params, tok).token_ids
    per_node = {i: ["--model", MODEL, "--layers", r] for i, r in enumerate(LAYERS)}
    net = LocalTestnet(4, base, per_node_args=per_node, http=True,
                       env={"OMP_NUM_THREADS": "1", "SWARMLM_LOG_QUIET": "1"})
    await trio.to_thread.run_sync(net.up)
    out: dict = {"runs": runs, "identical": 0, "failovers": [], "recovery_ms": [], "errors": [], "want_len": len(want)}
    try:
        pids = {n.ready["peer_id"]: n.index for n in net.nodes}
        async with open_testnet_client(net.nodes[0].addr, 4) as client:
            restarted = 1
            for run in range(runs):
                client.bans.until.clear()
                req = GenerationRequest(model=MODEL, prompt=prompt, params=params)
                victim, recovered, last = None, None, time.perf_counter()
                try:
                    async with client.generate(req) as gen:
                        async for chunk in gen:
                            now = time.perf_counter()
                            if victim is not None and chunk.token_ids and recovered is None:
                                recovered = (now - last) * 1000.0
                            last = now
                            if victim is None and len(gen.token_ids) >= 3:
                                victim = pids[gen.route.hops[1].peer_id]
                                net.kill(victim)  # SIGKILL to the process group, mid-generation
                                last = time.perf_counter()
                except Exception as exc:  # reported, the test fails on it
                    out["errors"].append(f"run {run}: {type(exc).__name__}: {exc}")
                    continue
                out["failovers"].append(gen.summary.failovers)
                out["identical"] += gen.token_ids == want
                if recovered is not None:
                    out["recovery_ms"].append(recovered)
                if victim is None:
                    out["errors"].append(f"run {run}: ended before the kill")
                    continue
                # restart the victim: same identity, a new port; it rejoins and re-announces
                node = await trio.to_thread.run_sync(net.start_node, victim)
                restarted = victim
                await _wait_entry(client, node.ready["peer_id"], node.addr)
            # the last restarted node resynced the swarm state: its own view lists every node
            url = f"http://{net.nodes[restarted].ready['http']}/api/swarm"
            out["resynced"] = False
            with trio.move_on_after(30):
                while not out["resynced"]:
                    body = await trio.to_thread.run_sync(lambda: urllib.request.urlopen(url, timeout=5).read())
                    out["resynced"] = all(p in body.decode() for p in pids) and bool(json.loads(body))
                    await trio.sleep(0.5)
            net.down()
            print(json.dumps(out), flush=True)
            os._exit(0)  # print and leave without tearing the client host down (see the test's docstring)
    finally:
        await trio.to_thread.run_sync(net.down)


def test_kill_9_middle_server_20_of_20_and_restart_rejoins(tmp_path):
    """In a child process: after peers die by SIGKILL, the client host's libp2p teardown can trip over
    a corrupted cancel-scope stack (a net-layer issue, reported), which must not mask these results."""
    from swarmlm.testnet.local import down

    try:
        proc = subprocess.run([sys.executable, __file__, str(tmp_path / "net"), str(RUNS)], capture_output=True,
                              text=True, timeout=600, env=dict(os.environ, SWARMLM_LOG_QUIET="1"))
    finally:
        down(tmp_path / "net")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"scenario failed (status {proc.returncode}):\n{proc.stderr[-3000:]}"
    r = json.loads(lines[-1])
    rec = r["recovery_ms"]
    print(f"\nkill -9 of the middle hop: {r['identical']}/{RUNS} identical greedy runs of {r['want_len']} tokens; "
          f"kill-to-next-token (detect + re-plan + replay) median {statistics.median(rec):.0f} ms, "
          f"max {max(rec):.0f} ms; failovers per run {statistics.mean(r['failovers']):.2f}")
    assert not r["errors"], r["errors"]
    assert r["identical"] == RUNS and all(f >= 1 for f in r["failovers"])
    assert r["resynced"]


if __name__ == "__main__":
    logging.disable(logging.WARNING)
    trio.run(scenario, sys.argv[1], int(sys.argv[2]))
