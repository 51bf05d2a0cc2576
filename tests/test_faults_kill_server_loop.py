"""kill -9 of the middle server (a real node process, builtin:tiny, layers 0:2 2:4 4:6 2:4) during a
server-loop generation, plain and with the head drafting: the client fails over and replays, and the
tokens are the plain greedy ones."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import trio

from swarmlm.models.generate import generate, load_chain
from swarmlm.models.registry import resolve
from swarmlm.models.sampling import SamplingParams
from swarmlm.models.tokenizer import Tokenizer
from swarmlm.node.generation import GenerationRequest
from swarmlm.testnet.local import LocalTestnet

from test_faults_kill import open_testnet_client

MODEL = "builtin:tiny"
LAYERS = ("0:2", "2:4", "4:6", "2:4")
PROMPT = "one two three one two three one two four five one two"


async def scenario(base: str) -> None:
    """Run in a child process (see test_faults_kill.py why); prints the results as one JSON line."""
    params = SamplingParams(max_new_tokens=24)
    tok = Tokenizer.from_dir(resolve(MODEL))
    want = generate(load_chain(MODEL, 1), tok.encode(PROMPT), params, tok).token_ids
    net = LocalTestnet(4, base, per_node_args={i: ["--model", MODEL, "--layers", r] for i, r in enumerate(LAYERS)},
                       env={"OMP_NUM_THREADS": "1", "SWARMLM_LOG_QUIET": "1"})
    await trio.to_thread.run_sync(net.up)
    out: dict = {"runs": []}
    try:
        pids = {n.ready["peer_id"]: n.index for n in net.nodes}
        async with open_testnet_client(net.nodes[0].addr, 4) as client:
            client.options.server_loop, client.options.check_fraction = True, 0.0
            for speculative in (False, True):
                client.options.speculative = speculative
                client.bans.until.clear()
                victim = None
                async with client.generate(GenerationRequest(model=MODEL, prompt=PROMPT, params=params)) as gen:
                    async for _ in gen:
                        if victim is None and len(gen.token_ids) >= 3:
                            victim = pids[gen.route.hops[1].peer_id]
                            net.kill(victim)  # SIGKILL to the process group, mid-loop
                out["runs"].append({"speculative": speculative, "killed": victim is not None,
                                    "failovers": gen.summary.failovers, "identical": gen.token_ids == want,
                                    "passes": (gen.summary.speculative or {}).get("passes")})
                await trio.to_thread.run_sync(net.start_node, victim)  # back for the next run
                with trio.fail_after(30):
                    while sum(s.start == 2 for s in client.servers(MODEL)) < 2:
                        await trio.sleep(0.1)
            net.down()
            print(json.dumps(out), flush=True)
            os._exit(0)
    finally:
        await trio.to_thread.run_sync(net.down)


def test_kill_9_middle_server_during_a_server_loop_is_exact(tmp_path):
    from swarmlm.testnet.local import down

    try:
        proc = subprocess.run([sys.executable, __file__, str(tmp_path / "net")], capture_output=True, text=True,
                              timeout=300, env=dict(os.environ, SWARMLM_LOG_QUIET="1"))
    finally:
        down(tmp_path / "net")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"scenario failed (status {proc.returncode}):\n{proc.stderr[-3000:]}"
    runs = json.loads(lines[-1])["runs"]
    assert [r["speculative"] for r in runs] == [False, True]
    for r in runs:
        assert r["killed"] and r["failovers"] >= 1 and r["identical"], r
    assert runs[1]["passes"]  # the head drafted: verify passes went round the loop


if __name__ == "__main__":
    logging.disable(logging.WARNING)
    trio.run(scenario, sys.argv[1])
