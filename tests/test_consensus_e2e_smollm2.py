"""A consensus round with the real SmolLM2-135M on 3 in-process nodes with different sampling
settings, asked through a node's HTTP API with the official ``openai`` client."""

from __future__ import annotations

import openai
import pytest
import trio

from test_consensus_e2e import consensus_nodes, wait_round_everywhere

MODEL = "builtin:smollm2-135m"


@pytest.mark.slow
async def test_smollm2_consensus_round_through_the_http_api(tmp_path):
    async with consensus_nodes(tmp_path, 3, http=True, model=MODEL, layers="0:30") as nodes:
        base = f"http://{nodes[0].http_addr}/v1"

        def ask():
            client = openai.OpenAI(base_url=base, api_key="x", max_retries=0, timeout=600)
            return client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
                max_tokens=24, extra_body={"swarm": {"mode": "consensus", "k": 3}})

        resp = await trio.to_thread.run_sync(ask)
        ext = resp.model_extra["swarm"]
        assert ext["mode"] == "consensus" and ext["round_id"]
        rows = ext["scores"]
        assert len(rows) == 3 and len({r["node"] for r in rows}) == 3
        assert len({r["sampling"] for r in rows}) == 3  # three different sampling settings
        winner = [r for r in rows if r["winner"]]
        assert len(winner) == 1 and resp.choices[0].message.content == winner[0]["answer"]
        assert winner[0]["strength"] == max(r["strength"] for r in rows)
        assert resp.choices[0].message.content.strip()
        await wait_round_everywhere(nodes, ext["round_id"])
