"""Verification on a swarm where no layer range has a second replica: no check could ever run, so
the client asks the hops for no taps (no signatures, no extra messages per step) and reports every
token as unverifiable, and the answer is the plain one."""

from __future__ import annotations

import torch

from swarmlm.models.generate import generate, load_chain
from swarmlm.models.registry import resolve
from swarmlm.models.sampling import SamplingParams
from swarmlm.models.tokenizer import Tokenizer
from swarmlm.node.generation import GenerationRequest

from helpers import running_nodes, swarm_client

MODEL = "builtin:tiny"
torch.set_num_threads(1)


async def test_a_route_without_replicas_is_reported_unverifiable_without_taps(tmp_path):
    params = SamplingParams(max_new_tokens=6)
    tok = Tokenizer.from_dir(resolve(MODEL))
    want = generate(load_chain(MODEL, 1), tok.encode("no replicas"), params, tok).token_ids
    specs = [["--model", MODEL, "--layers", "0:3"], ["--model", MODEL, "--layers", "3:6"]]
    async with running_nodes(tmp_path, specs) as nodes:
        async with swarm_client(nodes[0]) as client:
            client.options.check_fraction = 1.0
            async with client.generate(GenerationRequest(model=MODEL, prompt="no replicas", params=params)) as gen:
                async for _ in gen:
                    pass
            assert gen.token_ids == want
            assert gen.verifier is None and gen.unverifiable  # nothing to check on: no taps asked for
            s = gen.summary
            assert s.verified_tokens == 0 and s.unverifiable_steps == s.completion_tokens == len(want)
            assert len(s.route) == 2
