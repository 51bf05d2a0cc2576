"""Speculative decoding with a local draft model through the pipeline (builtin:tiny over 3 in-process
hops): builtin:tiny as its own draft keeps every draft and gives the plain greedy and the plain
seeded tokens; another random model with the same vocabulary still gives the plain greedy tokens; a
draft model with another tokenizer ends the generation with one clear line."""

from __future__ import annotations

import pytest

from swarmlm.models.sampling import SamplingParams
from swarmlm.node.generation import GenerationError, GenerationRequest

from helpers import running_nodes, swarm_client
from test_models_speculative_draft import write_draft
from test_pipeline_speculative import LAYERS, MODEL, PROMPT, local_tokens

LONG = "abc " * 3 + "the quick brown fox"


async def run(client, params: SamplingParams, draft: str | None, prompt: str = LONG):
    client.options.speculative = draft is not None
    client.options.draft_model = draft
    client.options.check_fraction = 0.0  # checked passes: tests/test_pipeline_speculative_verify.py
    async with client.generate(GenerationRequest(model=MODEL, prompt=prompt, params=params)) as gen:
        async for _ in gen:
            pass
    return gen


async def test_draft_model_through_the_pipeline(tmp_path):
    greedy = SamplingParams(max_new_tokens=16)
    want = local_tokens(LONG, greedy)
    other = str(write_draft(tmp_path / "draft"))
    async with running_nodes(tmp_path, [["--model", MODEL, "--layers", r] for r in LAYERS[3]]) as nodes:
        async with swarm_client(nodes[0]) as client:
            gen = await run(client, greedy, MODEL)  # the target itself as draft: every draft kept
            spec = gen.summary.speculative
            assert gen.token_ids == want
            assert spec["proposed"] > 0 and spec["accepted"] == spec["proposed"] and spec["passes"] < len(want) // 2
            gen = await run(client, greedy, other)  # another model, same vocabulary: the same tokens
            assert gen.token_ids == want
            assert gen.summary.speculative["accepted"] < gen.summary.speculative["proposed"]
            seeded = SamplingParams(max_new_tokens=16, temperature=0.9, top_k=40, seed=5)
            plain = await run(client, seeded, None)
            gen = await run(client, seeded, MODEL)  # coupled drafts: the head's own seeded draws
            assert gen.token_ids == plain.token_ids
            assert gen.summary.speculative["accepted"] == gen.summary.speculative["proposed"] > 0


async def test_draft_model_with_another_tokenizer_is_one_clear_error(tmp_path):
    bad = str(write_draft(tmp_path / "bad", extra_token="<|x|>"))
    async with running_nodes(tmp_path, [["--model", MODEL, "--layers", "0:6"]]) as nodes:
        async with swarm_client(nodes[0]) as client:
            with pytest.raises(GenerationError, match="another tokenizer") as e:
                await run(client, SamplingParams(max_new_tokens=4), bad, PROMPT)
            assert "\n" not in str(e.value)
