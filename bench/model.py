"""`swarmlm bench model`: prefill and decode speed of builtin:smollm2-135m, ours vs transformers.

Whole model in one process, fp32 and bf16, with the caller's torch threads. Per dtype: prefill ms of a
chat prompt (median), batch-1 greedy decode tok/s (median over rounds), and the same decode through
transformers (forward with its KV cache, no ``generate`` overhead), the two alternating step by step
so both see the same machine load; ``ratio_vs_hf`` = ours / transformers. Batch 8: eight sessions decoded together
with ``Shard.forward_batch`` (aggregate tok/s). ``peak_rss_mb`` is the whole process (both
implementations loaded); ``ours_peak_rss_mb`` is the peak before transformers was imported.

JSON: {"fp32": {"prefill_ms", "decode_tok_s", "hf_decode_tok_s", "ratio_vs_hf", "batch8_tok_s"},
"bf16": {...}, "batch8_tok_s" (fp32), "peak_rss_mb", "ours_peak_rss_mb", "threads", "steps", "rounds",
"model"}. ``--model builtin:tiny`` gives a quick smoke run.
"""

from __future__ import annotations

import inspect
import time
import warnings

import torch

from swarmlm.bench.common import emit, log, median, parser, peak_rss_mb
from swarmlm.models.generate import load_chain
from swarmlm.models.registry import resolve
from swarmlm.models.tokenizer import Tokenizer

PROMPT = "What is the capital of France? Answer in one sentence, then name two famous landmarks there."


def _ours_batch(shard, ids, steps: int, n: int) -> float:
    sessions = [shard.new_session(ids.shape[1] + steps + 1) for _ in range(n)]
    toks = []
    for i, s in enumerate(sessions):  # slightly different prompts, as real traffic
        x = ids.clone()
        x[0, -1] = (int(x[0, -1]) + i) % shard.config.vocab_size
        toks.append(int(shard.forward(x, s, 0, last_only=True)[0, -1].argmax()))
    t0 = time.perf_counter()
    for _ in range(steps):
        outs = shard.forward_batch([(s, torch.tensor([[t]]), None) for s, t in zip(sessions, toks)], last_only=True)
        toks = [int(o[0, -1].argmax()) for o in outs]
    return n * steps / (time.perf_counter() - t0)


class _HFDecoder:
    """transformers' forward with its own KV cache, one greedy step at a time."""

    def __init__(self, hf, ids) -> None:
        from transformers import DynamicCache  # lazy: heavy, and ours_peak_rss_mb is measured before it loads

        params = inspect.signature(hf.forward).parameters
        self.key = "cache" if "cache" in params else "past_key_values"
        self.hf, self.cache = hf, DynamicCache()
        with torch.inference_mode():
            out = hf(ids, use_cache=True, **{self.key: self.cache})
        self.tok = int(out.logits[0, -1].argmax())

    def step(self) -> None:
        with torch.inference_mode():
            out = self.hf(torch.tensor([[self.tok]]), use_cache=True, **{self.key: self.cache})
        self.tok = int(out.logits[0, -1].argmax())


class _OursDecoder:
    def __init__(self, shard, ids, steps: int) -> None:
        self.shard = shard
        self.sess = shard.new_session(ids.shape[1] + steps + 1)
        t0 = time.perf_counter()
        logits = shard.forward(ids, self.sess, 0, last_only=True)
        self.prefill_ms = (time.perf_counter() - t0) * 1000
        self.tok = int(logits[0, -1].argmax())

    def step(self) -> None:
        logits = self.shard.forward(torch.tensor([[self.tok]]), self.sess, None, last_only=True)
        self.tok = int(logits[0, -1].argmax())


def _interleaved(shard, hf, ids, steps: int) -> tuple[float, float, float | None]:
    """(prefill ms, our tok/s, transformers tok/s): single steps alternate, so both see the same load."""
    ours = _OursDecoder(shard, ids, steps)
    theirs = _HFDecoder(hf, ids) if hf is not None else None
    t_ours = t_hf = 0.0
    for i in range(steps):
        for who in ((ours, theirs) if i % 2 == 0 else (theirs, ours)):  # alternate who goes first
            if who is None:
                continue
            t0 = time.perf_counter()
            who.step()
            dt = time.perf_counter() - t0
            if who is ours:
                t_ours += dt
            else:
                t_hf += dt
    return ours.prefill_ms, steps / t_ours, (steps / t_hf if theirs is not None else None)


def run(steps: int, rounds: int, dtypes: list[str], skip_hf: bool, spec: str = "builtin:smollm2-135m") -> dict:
    model_dir = resolve(spec)
    tok = Tokenizer.from_dir(model_dir)
    ids = torch.tensor([tok.encode_chat([{"role": "user", "content": PROMPT}])])
    log(f"prompt {ids.shape[1]} tokens, {steps} decode steps x {rounds} rounds, "
        f"{torch.get_num_threads()} torch threads")
    result: dict = {}
    shards = {}
    for dt in dtypes:
        t0 = time.perf_counter()
        (shards[dt],) = load_chain(spec, 1, dt)
        log(f"{dt}: loaded in {time.perf_counter() - t0:.2f}s")
        _interleaved(shards[dt], None, ids, 4)  # warm-up
        b8 = _ours_batch(shards[dt], ids, max(steps // 2, 4), 8)
        log(f"{dt}: batch 8 {b8:.1f} tok/s")
        result[dt] = {"batch8_tok_s": round(b8, 2)}
    result["ours_peak_rss_mb"] = round(peak_rss_mb(), 1)
    hfs = {}
    if not skip_hf:
        from transformers import AutoModelForCausalLM  # lazy: heavy; ours_peak_rss_mb is measured before it loads
        from transformers.utils import logging as hf_logging  # lazy: as above

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        warnings.filterwarnings("ignore")
        for dt in dtypes:
            hfs[dt] = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=shards[dt].dtype).eval()
            _HFDecoder(hfs[dt], ids).step()  # warm-up
    for dt in dtypes:
        pre, ours, theirs = [], [], []
        for r in range(rounds):
            p, d, h = _interleaved(shards[dt], hfs.get(dt), ids, steps)
            pre.append(p)
            ours.append(d)
            if h is not None:
                theirs.append(h)
            log(f"{dt} round {r + 1}: prefill {p:.1f} ms, ours {d:.2f} tok/s"
                + (f", transformers {h:.2f} tok/s" if h is not None else ""))
        row = {"prefill_ms": round(median(pre), 2), "decode_tok_s": round(median(ours), 2)}
        if theirs:
            row["hf_decode_tok_s"] = round(median(theirs), 2)
            row["ratio_vs_hf"] = round(median(ours) / median(theirs), 3)
            row["round_ratios"] = [round(a / b, 3) for a, b in zip(ours, theirs)]
        result[dt] = {**row, **result[dt]}
    result["batch8_tok_s"] = result.get("fp32", result[dtypes[0]])["batch8_tok_s"]
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    result.update(threads=torch.get_num_threads(), steps=steps, rounds=rounds, prompt_tokens=int(ids.shape[1]),
                  model=spec)
    return result


def _summary(r: dict) -> str:
    lines = []
    for dt in ("fp32", "bf16"):
        if dt in r:
            x = r[dt]
            lines.append(f"{dt}: prefill {x['prefill_ms']:.1f} ms, decode {x['decode_tok_s']:.2f} tok/s"
                         + (f" vs transformers {x['hf_decode_tok_s']:.2f} tok/s (x{x['ratio_vs_hf']:.2f})"
                            if "hf_decode_tok_s" in x else "")
                         + f", batch 8 {x['batch8_tok_s']:.1f} tok/s")
    lines.append(f"peak RSS {r['peak_rss_mb']:.0f} MiB (ours alone {r['ours_peak_rss_mb']:.0f} MiB), "
                 f"{r['threads']} threads")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = parser("model", "prefill and decode speed of builtin:smollm2-135m vs transformers")
    p.add_argument("--steps", type=int, default=32, help="decode steps per round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    p.add_argument("--dtypes", default="fp32,bf16", help="comma-separated: fp32,bf16,fp16")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: leave as is)")
    p.add_argument("--skip-hf", action="store_true", help="do not run transformers")
    p.add_argument("--model", default="builtin:smollm2-135m", help="model spec (default builtin:smollm2-135m)")
    ns = p.parse_args(argv)
    if ns.threads:
        torch.set_num_threads(ns.threads)
    dtypes = [d.strip() for d in ns.dtypes.split(",") if d.strip()]
    emit(run(ns.steps, ns.rounds, dtypes, ns.skip_hf, ns.model), ns.json, _summary)
    return 0
