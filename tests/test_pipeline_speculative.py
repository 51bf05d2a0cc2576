"""Speculative decoding through the pipeline (builtin:tiny, in-process nodes): verify passes of k+1
positions over 1, 2 and 3 hops give the plain greedy tokens (and the plain seeded ones), rejected
drafts are rolled back on every hop, and failover when a middle server dies stays exact."""

from __future__ import annotations

import pytest

from swarmlm.models.generate import generate, load_chain
from swarmlm.models.registry import resolve
from swarmlm.models.sampling import SamplingParams
from swarmlm.models.tokenizer import Tokenizer
from swarmlm.node.generation import GenerationRequest

from helpers import running_nodes, swarm_client

MODEL = "builtin:tiny"
PROMPT = "one two three one two three one two four five one two"
LAYERS = {1: ("0:6",), 2: ("0:3", "3:6"), 3: ("0:2", "2:4", "4:6")}


def local_tokens(prompt: str, params: SamplingParams) -> list[int]:
    tok = Tokenizer.from_dir(resolve(MODEL))
    return generate(load_chain(MODEL, 1), tok.encode(prompt), params, tok).token_ids


async def run(client, params: SamplingParams, speculative: bool, prompt: str = PROMPT):
    client.options.speculative = speculative
    client.options.check_fraction = 0.0  # checked passes: tests/test_pipeline_speculative_verify.py
    async with client.generate(GenerationRequest(model=MODEL, prompt=prompt, params=params)) as gen:
        async for _ in gen:
            pass
    return gen


@pytest.mark.parametrize("hops", [1, 2, 3])
async def test_speculative_equals_plain_greedy(tmp_path, hops):
    params = SamplingParams(max_new_tokens=20)
    want = local_tokens(PROMPT, params)
    async with running_nodes(tmp_path, [["--model", MODEL, "--layers", r] for r in LAYERS[hops]]) as nodes:
        async with swarm_client(nodes[0]) as client:
            gen = await run(client, params, True)
            assert gen.token_ids == want
            spec = gen.summary.speculative
            assert spec["passes"] < len(want)  # some drafts were kept: fewer passes than tokens
            # rejected drafts were rolled back on every hop, and the steps after them saw the right
            # positions: otherwise the tokens above would differ from the local run
            assert spec["accepted"] < spec["proposed"]
            if hops == 3:  # seeded sampling: the very tokens of plain seeded decoding
                sp = SamplingParams(max_new_tokens=12, temperature=0.8, top_k=20, seed=11)
                plain = await run(client, sp, False)
                spec_gen = await run(client, sp, True)
                assert spec_gen.token_ids == plain.token_ids


async def test_speculative_failover_when_a_middle_server_dies_is_exact(tmp_path):
    params = SamplingParams(max_new_tokens=24)
    want = local_tokens(PROMPT, params)
    specs = [["--model", MODEL, "--layers", r] for r in ("0:2", "2:4", "2:4", "4:6")]
    async with running_nodes(tmp_path, specs) as nodes:
        async with swarm_client(nodes[0]) as client:
            client.options.speculative = True
            client.options.check_fraction = 0.0
            req = GenerationRequest(model=MODEL, prompt=PROMPT, params=params)
            killed = False
            async with client.generate(req) as gen:
                async for _ in gen:
                    if not killed and len(gen.token_ids) >= 5:
                        victim = next(n for n in nodes[1:3] if n.shard.sessions)
                        victim.kill()
                        killed = True
            assert killed and gen.summary.failovers >= 1
            assert gen.token_ids == want
