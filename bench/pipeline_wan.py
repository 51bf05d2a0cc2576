"""The WAN part of `swarmlm bench pipeline --rtt-ms R`: the 3-node pipeline behind latency forwarders.

For each round trip R a fresh ``LocalTestnet(rtt_ms=R)`` (every link through a user-space forwarder,
``testnet/latency.py``) serves ``builtin:smollm2-135m`` as layers 0:10, 10:20, 20:30. On each of the
two prompt sets shipped here, every prompt is generated greedily with (a) today's client loop, (b) the
server token loop (the head feeds each token to the first hop: ``node/server/token_loop.py``),
speculative decoding (prompt-lookup drafts, verify passes of k+1 positions) through the client loop,
and (c) both: the head drafts and feeds its verify passes to the first hop; text must be identical.
Figures per set: median tok/s of each mode, the server loop's ratio to the client loop, the acceptance
rate, tokens per verify pass, and the latency bounds: the client loop's token costs hops + 1 one-way
trips, ``1000 / ((hops+1) * R/2)``; the server loop's costs hops, ``1000 / (hops * R/2)``.
``--draft-model SPEC``: the speculative modes of the client loop draft with that local model (same
tokenizer) instead of prompt lookup; ``--repeats N``: each prompt N times per mode, the modes in a
rotating order, after one warm-up generation.
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


def server_loop_bound(rtt_ms: float, hops: int) -> float | None:
    """tok/s the server token loop cannot beat at ``rtt_ms``: one token is ``hops`` one-way trips."""
    return round(1000.0 / (hops * rtt_ms / 2), 2) if rtt_ms > 0 else None


MODES = (("client", False, False), ("loop", False, True), ("spec", True, False), ("both", True, True))


def _one(client: Client, messages: list[dict[str, str]], tokens: int, speculative: bool,
         server_loop: bool = False, draft: str | None = None) -> Any:
    client.options.speculative = speculative
    client.options.server_loop = server_loop
    client.options.draft_model = draft if speculative and not server_loop else None
    # every mode unverified: the figures measure the round trips, not the background checks
    for _text in client.chat(messages, model=MODEL, stream=True, max_new_tokens=tokens, stop=[], check_fraction=0.0):
        pass
    return client.last_summary


def _modes(client: Client, messages: list[dict[str, str]], tokens: int, repeats: int,
           draft: str | None) -> dict[str, Any]:
    """One summary per mode of one prompt; with ``repeats`` > 1 the modes run in a rotating order and
    each mode's rate is the mean over its runs, so a drift in machine load hits all alike."""
    runs: dict[str, list[Any]] = {name: [] for name, _, _ in MODES}
    for r in range(repeats):
        for name, spec, loop in MODES[r % len(MODES):] + MODES[:r % len(MODES)]:
            runs[name].append(_one(client, messages, tokens, spec, loop, draft))
    out = {}
    for name, got in runs.items():
        out[name] = got[0]
        out[name].tokens_per_s = statistics.fmean(x.tokens_per_s for x in got)
    return out


def _set(client: Client, prompts: list[list[dict[str, str]]], tokens: int, repeats: int = 1,
         draft: str | None = None) -> dict[str, Any]:
    plain_rates, loop_rates, spec_rates, both_rates, passes, proposed, accepted, same = [], [], [], [], 0, 0, 0, True
    c_passes, c_proposed, c_accepted = 0, 0, 0  # (c): the drafting head's verify passes
    for messages in prompts:
        m = _modes(client, messages, tokens, repeats, draft)
        a, s, b, c = m["client"], m["loop"], m["spec"], m["both"]
        same = same and a.text == b.text == s.text == c.text
        plain_rates.append(a.tokens_per_s)
        loop_rates.append(s.tokens_per_s)
        spec_rates.append(b.tokens_per_s)
        both_rates.append(c.tokens_per_s)
        sp = b.speculative or {}
        passes += sp.get("passes", 0)
        proposed += sp.get("proposed", 0)
        accepted += sp.get("accepted", 0)
        cp = c.speculative or {}
        c_passes, c_proposed, c_accepted = (c_passes + cp.get("passes", 0), c_proposed + cp.get("proposed", 0),
                                            c_accepted + cp.get("accepted", 0))
        log(f"  client loop {a.tokens_per_s:.2f} tok/s, server loop {s.tokens_per_s:.2f} tok/s, "
            f"speculative {b.tokens_per_s:.2f} tok/s, {sp}, server loop + speculative {c.tokens_per_s:.2f} tok/s")
    return {"client_loop_tok_s": round(statistics.median(plain_rates), 2),
            "server_loop_tok_s": round(statistics.median(loop_rates), 2),
            "server_loop_ratio": round(statistics.median(loop_rates) / statistics.median(plain_rates), 3),
            "speculative_tok_s": round(statistics.median(spec_rates), 2),
            "speculative_ratio": round(statistics.median(spec_rates) / statistics.median(plain_rates), 3),
            "server_loop_speculative_tok_s": round(statistics.median(both_rates), 2),
            "server_loop_speculative_ratio": round(statistics.median(both_rates) / statistics.median(plain_rates), 3),
            "server_loop_speculative_acceptance": round(c_accepted / c_proposed, 3) if c_proposed else 0.0,
            "server_loop_speculative_tokens_per_pass": round((c_accepted + c_passes) / c_passes, 3) if c_passes else 0.0,
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
                    _one(client, PROMPT_SETS["free"][0], 4, bool(draft), draft=draft)  # warm-up: connections, page-ins
                    for name, prompts in PROMPT_SETS.items():
                        log(f"rtt {rtt:g} ms, prompt set {name!r}")
                        fig = _set(client, prompts, tokens, repeats, draft)
                        if draft:
                            fig["draft_model"] = draft
                        fig["latency_bound_tok_s"] = latency_bound(rtt, len(LAYERS))
                        fig["server_loop_bound_tok_s"] = server_loop_bound(rtt, len(LAYERS))
                        out[name][f"{rtt:g}"] = fig
    return out
