"""Speculative decoding with verification on (builtin:tiny, in-process nodes, two replicas of every
range): every verify pass is checked on its kept rows, so the tokens are the plain greedy ones and
all count as verified; a head or a middle hop that lies during verify passes is caught on its first
checked pass, convicted by a third replica from its signed passes, banned, and the generation fails
over to the honest tokens."""

from __future__ import annotations

import pytest

from swarmlm.models.sampling import SamplingParams
from swarmlm.node.generation import GenerationRequest

from helpers import running_nodes, swarm_client
from test_pipeline_speculative import MODEL, PROMPT, local_tokens


async def run(client, params: SamplingParams):
    async with client.generate(GenerationRequest(model=MODEL, prompt=PROMPT, params=params)) as gen:
        async for _ in gen:
            pass
    return gen


def spec_client(client, fraction: float) -> None:
    client.options.speculative = True
    client.options.check_fraction = fraction
    client.options.standing_steps = 0
    client.options.verdict_ban_s = 0.0


async def test_verified_speculative_passes_are_the_plain_tokens_and_all_verified(tmp_path):
    params = SamplingParams(max_new_tokens=20)
    want = local_tokens(PROMPT, params)
    specs = [["--model", MODEL, "--layers", r] for r in ("0:3", "3:6", "0:3", "3:6")]
    async with running_nodes(tmp_path, specs) as nodes:
        async with swarm_client(nodes[0]) as client:
            spec_client(client, 1.0)  # every pass checked
            gen = await run(client, params)
            assert gen.token_ids == want
            sp = gen.summary.speculative
            assert sp["passes"] < len(want) and sp["accepted"] < sp["proposed"]  # kept and rejected drafts
            assert gen.summary.verified_tokens == len(want) and gen.summary.checks >= sp["passes"] // 2
            assert not client.verify_stats.get("mismatches")


@pytest.mark.parametrize("lying, other, fault", [("3:6", "0:3", "wrong-head"), ("0:3", "3:6", "wrong-activations")])
async def test_a_hop_lying_in_verify_passes_is_caught_and_failed_over(tmp_path, lying, other, fault):
    params = SamplingParams(max_new_tokens=16)
    want = local_tokens(PROMPT, params)
    specs = [["--model", MODEL, "--layers", other], ["--model", MODEL, "--layers", lying, "--fault", fault],
             ["--model", MODEL, "--layers", lying], ["--model", MODEL, "--layers", lying],
             ["--model", MODEL, "--layers", other]]
    async with running_nodes(tmp_path, specs) as nodes:
        liar = nodes[1].peer_id
        async with swarm_client(nodes[0]) as client:
            spec_client(client, 1e-9)  # one round only, at the end (verify_final): its evidence holds verify passes
            client.options.verify_final = True
            client.options.prefer = (liar,)
            gen = await run(client, params)
            assert gen.token_ids == want  # rolled back to the settled tokens, regenerated on an honest head
            assert gen.summary.failovers >= 1
            # the third replica re-checked its signed passes (their kept rows) and convicted it
            assert liar in client.verify_stats.get("detected", [])
            assert client.verify_stats["detected_steps"][0] > 0  # caught past the prompt: on verify passes
            assert client.verify_stats.get("verdicts", 0) >= 1 and not client.verify_stats.get("disputed")
            assert gen.summary.verified_tokens == len(want)
            assert gen.summary.verified_tokens == len(want)
