"""The consensus mode through every front end, on in-process nodes hosting ``builtin:tiny`` whole:
the HTTP API (official ``openai`` client, ``"swarm": {"mode": "consensus"}``), the SDK
(``mode="consensus"``) and `swarmlm ask --mode consensus --bootstrap` (RPC to a coordinator)."""

from __future__ import annotations

import json

import openai
import trio

from test_consensus_e2e import MODEL, consensus_nodes, wait_round_everywhere


async def test_the_http_api_runs_consensus_rounds(tmp_path):
    async with consensus_nodes(tmp_path, 3, http=True) as nodes:
        base = f"http://{nodes[2].http_addr}/v1"

        def via_openai():
            client = openai.OpenAI(base_url=base, api_key="x", max_retries=0)
            full = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                                  max_tokens=6, extra_body={"swarm": {"mode": "consensus", "k": 3}})
            streamed = list(client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=6, stream=True,
                extra_body={"swarm": {"mode": "consensus", "k": 2}}))
            return full, streamed

        full, streamed = await trio.to_thread.run_sync(via_openai)
        ext = full.model_extra["swarm"]
        assert ext["mode"] == "consensus" and ext["round_id"] and len(ext["scores"]) == 3
        win = [r for r in ext["scores"] if r["winner"]][0]
        assert full.choices[0].message.content == win["answer"]
        tail = [c.model_extra.get("swarm") for c in streamed if c.model_extra.get("swarm")]
        assert tail and len(tail[-1]["scores"]) == 2 and tail[-1]["round_id"] != ext["round_id"]
        await wait_round_everywhere(nodes, ext["round_id"])


async def test_sdk_and_cli_run_consensus_rounds_through_a_coordinator(tmp_path, capsys):
    async with consensus_nodes(tmp_path, 3) as nodes:
        addr = nodes[0].host.addrs[0]

        def via_sdk():
            from swarmlm.node.client.sdk import Client

            with Client([addr]) as c:
                text = c.chat([{"role": "user", "content": "hi"}], model=MODEL, mode="consensus", k=3,
                              max_new_tokens=6)
                return text, c.last_summary

        text, s = await trio.to_thread.run_sync(via_sdk)
        assert s.round_id and len(s.scores) == 3 and text == [r for r in s.scores if r["winner"]][0]["answer"]

        def via_cli():
            from swarmlm.node.front.cli import main

            return main(["ask", "hi", "--bootstrap", addr, "--model", MODEL, "--mode", "consensus", "--k", "2",
                         "--max-tokens", "6", "--json"])

        capsys.readouterr()
        assert await trio.to_thread.run_sync(via_cli) == 0
        out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert out["round_id"] and len(out["scores"]) == 2
        assert out["text"] == [r for r in out["scores"] if r["winner"]][0]["answer"]
        await wait_round_everywhere(nodes, out["round_id"])
