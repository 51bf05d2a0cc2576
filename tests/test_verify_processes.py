"""Verification and failover against real ``swarmlm node run`` processes (builtin:tiny, layers 0:3
and 3:6, 2-4 replicas each), each broken case asserting the honest outcome:

- a dead reference (``kill -9``, still listed) and a busy one (``--max-cache-tokens 8``): every
  verified ask answers exactly the local tokens; with only those two as references the hop is
  reported unverifiable, with a healthy third every token is verified;
- a dead server on the route (``kill -9``, still listed): asks with and without verification fail
  over and answer exactly the local tokens; no exception group reaches the caller;
- a head liar (``--fault wrong-head``) checked at a low fraction: no wrong token is ever counted as
  verified; once caught it gets a signed verdict and a fresh client never routes through it;
- the same liar re-joined under a fresh identity: a default client routes to it at once, checks its
  every step (it has no standing) and still answers exactly the local tokens.
"""

from __future__ import annotations

import random
import time
from contextlib import asynccontextmanager

import trio

from swarmlm.crypto.identity import KEY_FILE_NAME, Identity
from swarmlm.models.generate import generate, load_chain
from swarmlm.models.registry import resolve
from swarmlm.models.sampling import SamplingParams
from swarmlm.models.tokenizer import Tokenizer
from swarmlm.net.host import HostConfig, SwarmHost
from swarmlm.net.state_service import StateService
from swarmlm.node.client.options import ClientOptions
from swarmlm.node.client.pipeline import PipelineGenerator
from swarmlm.node.dial import DOWN
from swarmlm.node.generation import GenerationRequest
from swarmlm.node.trust import TrustView
from swarmlm.testnet.local import LocalTestnet

MODEL = "builtin:tiny"
PROMPT = "verify the swarm"
PARAMS = SamplingParams(max_new_tokens=8)
LAYERS = {0: ["--layers", "0:3"], 1: ["--layers", "0:3"], 2: ["--layers", "3:6"], 3: ["--layers", "3:6"],
          4: ["--layers", "3:6", "--max-cache-tokens", "8"], 5: ["--layers", "3:6"]}
ENV = {"OMP_NUM_THREADS": "1", "SWARMLM_LOG_QUIET": "1"}


def local_tokens() -> list[int]:
    tok = Tokenizer.from_dir(resolve(MODEL))
    return generate(load_chain(MODEL, 1), tok.encode(PROMPT), PARAMS, tok).token_ids


@asynccontextmanager
async def open_client(addr: str, trust: tuple[str, ...] = (), **options):
    """A light client bootstrapped through ``addr``; ``trust`` names its anchors of standing besides
    its bootstrap peer (what ``--trust`` does for a node)."""
    host = SwarmHost(Identity.generate(), HostConfig(listen=["/ip4/127.0.0.1/tcp/0"], bootstrap=[addr],
                                                     discovery_interval_s=1.0))
    state = StateService(host, None, publish=False)
    TrustView.of(host, state, trust)
    async with host.running(), trio.open_nursery() as nursery:
        nursery.start_soon(state.run)
        try:
            yield PipelineGenerator(host, state, ClientOptions(step_timeout_s=10.0, **options))
        finally:
            nursery.cancel_scope.cancel()


async def listed(client, peers: list[str]) -> None:
    with trio.fail_after(60):
        while not set(peers) <= {s.peer_id for s in client.servers(MODEL)}:
            await trio.sleep(0.1)


async def ask(client, check_fraction: float | None = None):
    req = GenerationRequest(model=MODEL, prompt=PROMPT, params=PARAMS, check_fraction=check_fraction)
    async with client.generate(req) as gen:
        text = "".join([c.text async for c in gen])
    assert text == gen.summary.text
    return gen


async def test_dead_and_busy_references_and_a_dead_server_on_the_route(tmp_path):
    want = local_tokens()
    net = LocalTestnet(6, tmp_path / "net", extra_args=["--model", MODEL], per_node_args=LAYERS, env=ENV)
    await trio.to_thread.run_sync(net.up)
    try:
        ids = [n.ready["peer_id"] for n in net.nodes]
        async with open_client(net.nodes[0].addr, check_fraction=1.0, standing_steps=0,
                                  prefer=(ids[0], ids[2])) as client:
            await listed(client, ids)
            net.kill(3)  # a replica of [3, 6) dies; the swarm state lists it for another minute
            # only the dead and the busy replica are left as references of [3, 6): the hop is
            # unverifiable, the answer goes on
            client.bans.ban(ids[5], duration_s=3600)
            for _ in range(3):
                gen = await ask(client)
                assert gen.token_ids == want
                s = gen.summary
                assert s.verified_tokens == 0 and s.unverifiable_steps == s.completion_tokens == len(want)
                assert ids[2] in [h.peer_id for h in s.route]  # no failover: a check never costs the route
            st = client.verify_stats
            assert st.get("reference_busy", 0) >= 1 and st.get("reference_errors", 0) + len(DOWN.marks) >= 1, st
            assert ids[3] in DOWN.down_in(client.state)  # the dead one is skipped by every client here
            # with a healthy replica back, every token is verified (the dead and busy ones skipped)
            client.bans.until.clear()
            for _ in range(3):
                gen = await ask(client)
                assert gen.token_ids == want and gen.summary.verified_tokens == len(want), gen.summary
            # a dead server on the route, still listed: verified or not, every ask fails over and
            # answers the local tokens
            net.kill(2)
            t0 = time.perf_counter()
            gen = await ask(client, check_fraction=0.0)
            took = time.perf_counter() - t0
            assert gen.token_ids == want and gen.summary.failovers == 1 and gen.summary.verified_tokens == 0
            print(f"\nask through a dead listed server: failed over in one ask of {took:.2f} s")
            for fraction in (None, 0.0, 1.0):
                gen = await ask(client, check_fraction=fraction)
                assert gen.token_ids == want  # and the dead peer is not routed to any more
                assert ids[2] not in [h.peer_id for h in gen.summary.route]
            async with open_client(net.nodes[0].addr, prefer=(ids[2],)) as other:  # another client
                await listed(other, [ids[0], ids[5]])
                assert ids[2] not in other.plan(MODEL, 32).peer_ids()  # ... of this process knows it too
    finally:
        await trio.to_thread.run_sync(net.down)


async def test_head_liar_at_a_low_fraction_and_rejoined_under_a_fresh_identity(tmp_path):
    want = local_tokens()
    # two honest replicas of every range: a token counts as verified only when a reference replica
    # confirmed every hop of its position
    layers = {0: ["--layers", "0:3"], 1: ["--layers", "3:6"], 2: ["--layers", "3:6"],
              3: ["--layers", "3:6", "--fault", "wrong-head"], 4: ["--layers", "0:3"]}
    net = LocalTestnet(5, tmp_path / "net", extra_args=["--model", MODEL], per_node_args=layers, env=ENV)
    await trio.to_thread.run_sync(net.up)
    try:
        ids = [n.ready["peer_id"] for n in net.nodes]
        liar = ids[3]
        # verdicts convict by their authors' standing: these clients trust the honest replicas of
        # [3, 6) (the tie-breakers who sign them) as anchors, like nodes started with --trust
        honest = (ids[1], ids[2])
        async with open_client(net.nodes[0].addr, honest, check_fraction=0.1, standing_steps=0, prefer=(liar,),
                               verdict_ban_s=0.0) as client:
            await listed(client, ids)
            client.rng = random.Random(5)
            caught = verified = 0
            for _ in range(6):
                client.bans.until.clear()
                client.verify_stats.clear()
                gen = await ask(client)
                for a, b in gen.verified:
                    assert gen.token_ids[a:b] == want[a:b]  # nothing wrong is ever counted as verified
                verified += gen.summary.verified_tokens
                if liar in client.verify_stats.get("detected", []):
                    caught += 1
                    assert gen.token_ids == want
                else:
                    assert gen.summary.verified_tokens == 0  # never checked: nothing claimed verified
            assert caught >= 1 and verified >= 1, (caught, verified)
            client.options.verdict_ban_s = 3600.0
            with trio.fail_after(20):
                while liar not in client.convicted():
                    await trio.sleep(0.1)
            authors = {r.author for r in client.state.records(kind="verdict") if r.body["subject"] == liar}
            assert authors == set(honest)  # both replicas that re-checked the evidence signed a verdict
        async with open_client(net.nodes[0].addr, honest) as fresh:  # convicted swarm-wide
            await listed(fresh, ids[:3])
            with trio.fail_after(20):
                while liar not in fresh.convicted():
                    await trio.sleep(0.1)
            assert all(liar not in fresh.plan(MODEL, 32).peer_ids() for _ in range(10))
        # the same lying weights under a fresh identity: a default client routes to it at once
        net.kill(3)
        (net.nodes[3].data_dir / KEY_FILE_NAME).unlink()
        node = await trio.to_thread.run_sync(net.start_node, 3)
        rejoined = node.ready["peer_id"]
        assert rejoined != liar
        async with open_client(net.nodes[0].addr, prefer=(rejoined,)) as default:
            await listed(default, [ids[0], rejoined])
            assert rejoined not in default.convicted()
            gen = await ask(default)
            assert gen.token_ids == want and gen.summary.verified_tokens == len(want)
            assert rejoined in default.verify_stats.get("detected", []) and gen.summary.failovers >= 1
    finally:
        await trio.to_thread.run_sync(net.down)
