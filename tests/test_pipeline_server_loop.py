"""The server token loop (builtin:tiny, in-process nodes): the head feeds each token to the first hop
(and with speculative decoding, a verify pass of its prompt-lookup drafts); over 1, 2 and 3 hops the
tokens are the plain greedy ones (and the plain seeded ones), a middle server killed mid-loop fails
over to identical tokens, cancelling from the client stops the servers' loop, and only the route's
head may feed a first hop's loop."""

from __future__ import annotations

import pytest
import torch
import trio

from swarmlm.models.generate import generate, load_chain
from swarmlm.models.registry import resolve
from swarmlm.models.sampling import SamplingParams
from swarmlm.models.tokenizer import Tokenizer
from swarmlm.net.rpc import RpcError
from swarmlm.node.client.session import HopPlan, PipelineSession
from swarmlm.node.generation import GenerationRequest
from swarmlm.node.server import token_loop
from swarmlm.node.wire import SHARD_PROTOCOL
from swarmlm.node.wire_loop import LoopSpec, LoopWireError, loop_token, parse_loop_token

from helpers import running_nodes, swarm_client

MODEL = "builtin:tiny"
PROMPT = "the servers keep the loop"
REPEAT = "one two three one two three one two four five one two"  # prompt lookup finds drafts here
LAYERS = {1: ("0:6",), 2: ("0:3", "3:6"), 3: ("0:2", "2:4", "4:6")}


def local_tokens(prompt: str, params: SamplingParams) -> list[int]:
    tok = Tokenizer.from_dir(resolve(MODEL))
    return generate(load_chain(MODEL, 1), tok.encode(prompt), params, tok).token_ids


async def run(client, params: SamplingParams, server_loop: bool, prompt: str = PROMPT, speculative: bool = False):
    client.options.server_loop = server_loop
    client.options.speculative = speculative
    client.options.check_fraction = 0.0  # the server loop runs with verification off
    async with client.generate(GenerationRequest(model=MODEL, prompt=prompt, params=params)) as gen:
        async for _ in gen:
            pass
    return gen


def fed(nodes) -> int:
    return sum(n.shard.loops.tokens_fed for n in nodes)


@pytest.mark.parametrize("hops", [1, 2, 3])
async def test_server_loop_equals_plain_greedy(tmp_path, hops):
    params = SamplingParams(max_new_tokens=12)
    want = local_tokens(PROMPT, params)
    async with running_nodes(tmp_path, [["--model", MODEL, "--layers", r] for r in LAYERS[hops]]) as nodes:
        async with swarm_client(nodes[0]) as client:
            gen = await run(client, params, True)
            assert gen.token_ids == want
            # the head fed every token but the last to the first hop: the client sent only the prompt
            n_fed = fed(nodes)
            assert n_fed == len(want) - 1
            assert all(n.shard.loops.active == 0 for n in nodes)
            # the head drafting: verify passes through the loop, rejected drafts rolled back on every hop
            spec_params = SamplingParams(max_new_tokens=20)
            spec = await run(client, spec_params, True, REPEAT, speculative=True)
            assert spec.token_ids == local_tokens(REPEAT, spec_params)
            st = spec.summary.speculative
            assert st["server_loop"] and st["passes"] < len(spec.token_ids)  # drafts were kept
            assert st["accepted"] < st["proposed"]  # and some rejected: the next passes saw the right positions
            if hops == 3:  # seeded sampling: the very tokens of the client loop
                sp = SamplingParams(max_new_tokens=10, temperature=0.9, top_k=20, seed=7)
                plain = await run(client, sp, False)
                looped = await run(client, sp, True)
                assert looped.token_ids == plain.token_ids
                assert (await run(client, sp, True, speculative=True)).token_ids == plain.token_ids
                assert fed(nodes) > n_fed


@pytest.mark.parametrize("speculative", [False, True])
async def test_server_loop_failover_when_a_middle_server_dies_is_exact(tmp_path, speculative):
    params = SamplingParams(max_new_tokens=20)
    prompt = REPEAT if speculative else PROMPT
    want = local_tokens(prompt, params)
    specs = [["--model", MODEL, "--layers", r] for r in ("0:2", "2:4", "2:4", "4:6")]
    async with running_nodes(tmp_path, specs) as nodes:
        async with swarm_client(nodes[0]) as client:
            client.options.server_loop = True
            client.options.speculative = speculative
            client.options.check_fraction = 0.0
            killed = False
            async with client.generate(GenerationRequest(model=MODEL, prompt=prompt, params=params)) as gen:
                async for _ in gen:
                    if not killed and len(gen.token_ids) >= 5:
                        victim = next(n for n in nodes[1:3] if n.shard.sessions)
                        victim.kill()  # abrupt: its host and connections vanish mid-loop
                        killed = True
            assert killed and gen.summary.failovers >= 1
            assert gen.token_ids == want
            assert nodes[3].shard.loops.tokens_fed > 0


async def test_cancelling_from_the_client_stops_the_servers_loop(tmp_path):
    params = SamplingParams(max_new_tokens=1500)
    async with running_nodes(tmp_path, [["--model", MODEL, "--layers", r] for r in ("0:3", "3:6")]) as nodes:
        first, head = nodes
        async with swarm_client(first) as client:
            client.options.server_loop = True
            client.options.check_fraction = 0.0
            async with client.generate(GenerationRequest(model=MODEL, prompt=PROMPT, params=params)) as gen:
                async for _ in gen:
                    if len(gen.token_ids) >= 4:
                        assert head.shard.loops.active == 1
                        # only the route's head may feed the first hop's loop: not the client, not anyone
                        sid = next(iter(first.shard.loops.firsts))
                        with pytest.raises(RpcError, match="only the head"):
                            async with client.host.rpc.stream(first.peer_id, SHARD_PROTOCOL, "loop",
                                                              {"session_id": sid}) as call:
                                await call.send(loop_token(99, 999, [1]))
                                async for _ in call:
                                    pass
                        break  # leaving the generation cancels it
            taken = len(gen.token_ids)
            with trio.fail_after(10):  # a bound, not a timing: the loop must end, not run on
                while head.shard.loops.active or head.shard.sessions or first.shard.sessions:
                    await trio.sleep(0.05)
            served = [n.shard.steps_served for n in nodes]
            await trio.sleep(0.3)
            assert [n.shard.steps_served for n in nodes] == served  # no more steps served
            assert served[1] < taken + 50 < params.max_new_tokens  # stopped within a few windows


def test_loop_messages_are_checked():
    assert LoopSpec.parse(None) is None
    spec = LoopSpec.parse(LoopSpec(first="peer", first_session="s1", eos=[2], draft_k=4, context=[5, 6]).to_args())
    assert (spec.first, spec.first_session, spec.eos, spec.window, spec.draft_k, spec.context) == (
        "peer", "s1", [2], 8, 4, [5, 6])
    h = {"head": "p", "head_session": "s"}
    assert LoopSpec.parse(h).head_session == "s"
    for bad in ({}, {"first": "p"}, {"head": 3}, {"head": "p"}, {**h, "eos": list(range(99))}, {**h, "window": 0},
                {**h, "window": 10**6}, "x", {**h, "head": "p" * 500}, {**h, "draft_k": 99},
                {**h, "context": list(range(5000))}, {**h, "context": [-1]}):
        with pytest.raises(LoopWireError):
            LoopSpec.parse(bad)
    assert parse_loop_token(loop_token(3, 7, [1, 2], verify=True)) == (3, 7, [1, 2], True)
    for bad in ({"step": 1, "pos": 2, "tokens": [1, 2], "verify": False}, {"step": 1, "pos": -1, "tokens": [1],
                "verify": False}, {"step": 1, "pos": 2, "tokens": [], "verify": True},
                {"step": 1, "pos": 2, "tokens": list(range(17)), "verify": True}, [1, 2]):
        with pytest.raises(LoopWireError):
            parse_loop_token(bad)


async def test_a_silent_client_stops_the_loop_after_its_window(tmp_path, monkeypatch):
    """A client that takes no answers (gone quiet, not gone): the head runs ``window`` answers ahead,
    then waits for acks a bounded time, ends its loop while the session stays open, and says so."""
    monkeypatch.setattr(token_loop, "ACK_TIMEOUT_S", 0.5)
    async with running_nodes(tmp_path, [["--model", MODEL, "--layers", r] for r in ("0:3", "3:6")]) as nodes:
        head = nodes[1]
        async with swarm_client(nodes[0]) as client:
            ids = (await client.tokenizer(MODEL)).encode(PROMPT)
            hops = [HopPlan(n.peer_id, *r) for n, r in zip(nodes, ((0, 3), (3, 6)))]
            for h in hops:
                assert await client.ensure_connected(h.peer_id)
            async with PipelineSession(client.host.rpc, MODEL, hops, len(ids) + 200, {"temperature": 0.0, "seed": 1},
                                       loop=LoopSpec(window=4)) as sess:
                await sess.step(torch.tensor([ids]), 0)
                with trio.fail_after(10):  # a bound, not a timing: the loop ends without acks
                    while not head.shard.loops.tokens_fed or head.shard.loops.active:
                        await trio.sleep(0.05)
                # answers 0..3 unacknowledged = the window: steps 1..3 were fed, step 4 never was
                assert head.shard.loops.tokens_fed == 3
                assert head.shard.sessions  # the session itself is still open
                # the client then gets answers 1..3 and word that the loop ended (it would fail over)
                got = [(await sess.receive())[1] for _ in range(4)]
                assert [m.get("step") for m in got] == [1, 2, 3, -1] and "no ack" in got[-1]["error"]
