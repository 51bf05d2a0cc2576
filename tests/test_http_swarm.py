"""The OpenAI-compatible API of a real node, backed by the swarm (builtin:tiny over 3 nodes),
called with the official `openai` client, streaming and not."""

from __future__ import annotations

import openai
import pytest
import trio

from swarmlm.models.generate import generate, load_chain
from swarmlm.models.registry import resolve
from swarmlm.models.sampling import SamplingParams
from swarmlm.models.tokenizer import Tokenizer

from helpers import running_nodes

MODEL = "builtin:tiny"


async def test_openai_client_against_a_swarm_node(tmp_path):
    tok = Tokenizer.from_dir(resolve(MODEL))
    msgs = [{"role": "user", "content": "hi"}]
    want = tok.decode(generate(load_chain(MODEL, 1), tok.encode_chat(msgs), SamplingParams(max_new_tokens=10),
                               tok).token_ids)
    specs = [["--model", MODEL, "--layers", r] for r in ("0:2", "2:4", "4:6")]
    async with running_nodes(tmp_path, specs, http=True) as nodes:
        base = f"http://{nodes[1].http_addr}/v1"

        def call():
            client = openai.OpenAI(base_url=base, api_key="x", max_retries=0)
            models = [m.id for m in client.models.list().data]
            full = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=10, temperature=0)
            streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
                model=MODEL, messages=msgs, max_tokens=10, temperature=0, stream=True) if c.choices)
            with pytest.raises(openai.NotFoundError):
                client.chat.completions.create(model="builtin:nope", messages=msgs)
            with pytest.raises(openai.BadRequestError):
                client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=10**9)
            return models, full, streamed

        models, full, streamed = await trio.to_thread.run_sync(call)
        assert MODEL in models
        assert full.choices[0].message.content == want == streamed
        assert full.usage.completion_tokens == 10
        assert [h["start"] for h in full.model_extra["swarm"]["route"]] == [0, 2, 4]
