"""The WAN part of `swarmlm bench pipeline --rtt-ms R`: the 3-node pipeline behind latency forwarders.

For each round trip R a fresh ``LocalTestnet(rtt_ms=R)`` (every link through a user-space forwarder,
``testnet/latency.py``) serves ``builtin:smollm2-135m`` as layers 0:10, 10:20, 20:30. On each of the
two prompt sets shipped here, every prompt is generated greedily with today's client loop and with
speculative decoding (prompt-lookup drafts, verify passes of k+1 positions); tokens must be identical.
Figures per set: median tok/s of each mode, the acceptance rate, tokens per verify pass, and the
latency bound of the client loop: one token costs hops + 1 one-way trips, ``1000 / ((hops+1) * R/2)``.
The server token loop is not built: ``server_loop_tok_s`` is null. ``--draft-model SPEC``: the
speculative mode drafts with that local model (same tokenizer) instead of prompt lookup; ``--repeats N``:
each prompt N times per mode, the modes alternating (ABBA), after one warm-up generation.
"""

from __future__ import annotations

import statistics
import tempfile
from typing import Any

from swarmlm.bench.common import log
from swarmlm.node.client.sdk import Client
from swarmlm.testnet.local import LocalTestnet

MODEL = "builtin:smollm2-135m"
LAYERS = ["0:10", "10:20", "20:30"]

_TEXT = ("The lighthouse on Gull Rock was built in 1871 from granite quarried on the mainland. Its lamp "
         "was first lit with whale oil, then kerosene, and since 1932 with electricity. The last keeper, "
         "Martha Hale, left in 1964 when the light was automated. Today the tower is a museum open from "
         "May to September, and the light still flashes white every ten seconds.")
_CODE = ("def total(items):\n    result = 0\n    for item in items:\n        result = result + item.price * item.count\n"
         "    return result\n")

PROMPT_SETS: dict[str, list[list[dict[str, str]]]] = {
    "reuse": [  # the answer reuses the prompt: summarize, extract, edit a given text
        [{"role": "user", "content": f"Repeat this text exactly, word for word:\n\n{_TEXT}"}],
        [{"role": "user", "content": f"Rename the function total to order_total and the variable result to s. "
                                     f"Give the whole code.\n\n{_CODE}"}],
        [{"role": "user", "content": f"List every year mentioned in this text with the sentence it is in:\n\n{_TEXT}"}],
    ],
    "free": [  # free questions
        [{"role": "user", "content": "What is the capital of France?"}],
        [{"role": "user", "content": "Give three tips for sleeping better."}],
        [{"role": "user", "content": "Why is the sky blue?"}],
    ],
}


def latency_bound(rtt_ms: float, hops: int) -> float | None:
    """tok/s the client loop cannot beat at ``rtt_ms``: one token is hops + 1 one-way trips."""
    return round(1000.0 / ((hops + 1) * rtt_ms / 2), 2) if rtt_ms > 0 else None


def _one(client: Client, messages: list[dict[str, str]], tokens: int, speculative: bool,
         draft: str | None = None) -> Any:
    client.options.speculative = speculative
    client.options.draft_model = draft if speculative else None
    # both modes unverified: the figures measure the round trips, not the background checks
    for _text in client.chat(messages, model=MODEL, stream=True, max_new_tokens=tokens, stop=[], check_fraction=0.0):
        pass
    return client.last_summary


def _pair(client: Client, messages: list[dict[str, str]], tokens: int, repeats: int,
          draft: str | None) -> tuple[Any, Any]:
    """Plain and speculative summaries of one prompt; with ``repeats`` > 1 the modes alternate (ABBA...)
    and each mode's rate is the mean over its runs, so a drift in machine load hits both alike."""
    runs: dict[bool, list[Any]] = {False: [], True: []}
    for r in range(repeats):
        for spec in ((False, True) if r % 2 == 0 else (True, False)):
            runs[spec].append(_one(client, messages, tokens, spec, draft))
    a, b = runs[False][0], runs[True][0]
    a.tokens_per_s = statistics.fmean(x.tokens_per_s for x in runs[False])
    b.tokens_per_s = statistics.fmean(x.tokens_per_s for x in runs[True])
    return a, b


def _set(client: Client, prompts: list[list[dict[str, str]]], tokens: int, repeats: int = 1,
         draft: str | None = None) -> dict[str, Any]:
    plain_rates, spec_rates, passes, proposed, accepted, same = [], [], 0, 0, 0, True
    for messages in prompts:
        a, b = _pair(client, messages, tokens, repeats, draft)
        same = same and a.text == b.text
        plain_rates.append(a.tokens_per_s)
        spec_rates.append(b.tokens_per_s)
        sp = b.speculative or {}
        passes += sp.get("passes", 0)
        proposed += sp.get("proposed", 0)
        accepted += sp.get("accepted", 0)
        log(f"  client loop {a.tokens_per_s:.2f} tok/s, speculative {b.tokens_per_s:.2f} tok/s, {sp}")
    return {"client_loop_tok_s": round(statistics.median(plain_rates), 2),
            "server_loop_tok_s": None,
            "speculative_tok_s": round(statistics.median(spec_rates), 2),
            "speculative_ratio": round(statistics.median(spec_rates) / statistics.median(plain_rates), 3),
            "acceptance": round(accepted / proposed, 3) if proposed else 0.0,
            "tokens_per_pass": round((accepted + passes) / passes, 3) if passes else 0.0,
            "identical_text": same}


def run_wan(rtts: list[float], tokens: int, repeats: int = 1, draft: str | None = None) -> dict[str, Any]:
    """{"<set>": {"<R>": {...figures}}} for every prompt set and round trip; ``draft``: the speculative
    mode drafts with this local model instead of prompt lookup."""
    out: dict[str, Any] = {name: {} for name in PROMPT_SETS}
    for rtt in rtts:
        with tempfile.TemporaryDirectory(prefix="swarmlm-bench-wan-") as base:
            net = LocalTestnet(len(LAYERS), base, extra_args=["--model", MODEL], rtt_ms=rtt,
                               per_node_args={i: ["--layers", r] for i, r in enumerate(LAYERS)})
            with net.up(timeout=300):
                with Client([net.nodes[0].addr], join_timeout_s=60) as client:
                    _one(client, PROMPT_SETS["free"][0], 4, bool(draft), draft)  # warm-up: connections, page-ins
                    for name, prompts in PROMPT_SETS.items():
                        log(f"rtt {rtt:g} ms, prompt set {name!r}")
                        fig = _set(client, prompts, tokens, repeats, draft)
                        if draft:
                            fig["draft_model"] = draft
                        fig["latency_bound_tok_s"] = latency_bound(rtt, len(LAYERS))
                        out[name][f"{rtt:g}"] = fig
    return out
