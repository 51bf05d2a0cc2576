"""`swarmlm bench ee`: decode speed of a model and of its equivariant-encryption variant.

Two settings, each measured in the same run with plaintext and EE runs interleaved:
- ``whole``: the whole model in this process, both variants decoding greedily in lockstep (single
  steps alternate, so both see the same machine load);
- ``pipeline``: 3 local node processes serving layers 0:10/10:20/20:30 of the plaintext model and 3
  more serving the EE variant, asked through ``swarmlm.Client`` (with ``ee_key`` for the EE runs).

JSON: {"model", "tokens", "whole": {"plain_tok_s", "ee_tok_s", "ratio", "tokens_identical", "pair_ratios"},
"pipeline": {...same...}, "plain_tok_s", "ee_tok_s", "ratio", "tokens_identical"} -- the top-level
four are the pipeline's (the whole model's with ``--whole-only``). ``ratio`` is the median of the
per-pair ratios ee/plain (each pair back to back). Target: ratio >= 0.95.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from swarmlm.bench.common import emit, log, parser
from swarmlm.crypto.ee import EEKey
from swarmlm.crypto.ee_checkpoint import encrypt_checkpoint
from swarmlm.crypto.ee_codec import EEClientCodec
from swarmlm.models.config import ModelConfig
from swarmlm.models.generate import load_chain, run_chain
from swarmlm.models.partition import split_layers
from swarmlm.models.registry import resolve
from swarmlm.models.tokenizer import Tokenizer
from swarmlm.node.client.sdk import Client
from swarmlm.testnet.local import LocalTestnet

PROMPT = [{"role": "user", "content": "Write a short story about a lighthouse keeper and a storm."}]


def _step_pair(plain: Any, ee: Any, ids: list[int], enc_ids: list[int], tokens: int,
               ) -> tuple[float, float, list[int], list[int]]:
    """Greedy decode of both models in lockstep, alternating which steps first, each step timed.

    A shared, noisy machine drifts over seconds; interleaving single steps puts both variants under
    the same load. Returns (plain tok/s, ee tok/s, plain ids, ee ids)."""
    n = len(ids) + tokens + 1
    runs = {}
    for name, chain, x in (("plain", plain, ids), ("ee", ee, enc_ids)):
        sessions = [s.new_session(n) for s in chain]
        logits = run_chain(chain, sessions, torch.tensor([x]), 0, last_only=True)
        runs[name] = {"chain": chain, "sessions": sessions, "next": int(logits[0, -1].argmax()), "out": [],
                      "t": 0.0}
    for step in range(tokens):
        for name in (("plain", "ee") if step % 2 == 0 else ("ee", "plain")):
            r = runs[name]
            r["out"].append(r["next"])
            t0 = time.perf_counter()
            logits = run_chain(r["chain"], r["sessions"], torch.tensor([[r["next"]]]), len(ids) + step,
                               last_only=True)
            r["t"] += time.perf_counter() - t0
            r["next"] = int(logits[0, -1].argmax())
    return (tokens / runs["plain"]["t"], tokens / runs["ee"]["t"], runs["plain"]["out"], runs["ee"]["out"])


def whole(model: str, ee_dir: Path, key_path: Path, tokens: int, runs: int) -> dict[str, Any]:
    base = resolve(model)
    codec = EEClientCodec.from_key_file(key_path, json.loads((base / "config.json").read_text()))
    ids = Tokenizer.from_dir(base).encode_chat(PROMPT)
    plain, ee = load_chain(base, 1), load_chain(ee_dir, 1)
    _step_pair(plain, ee, ids, codec.encrypt_ids(ids), 4)  # warm-up
    pr, er, same = [], [], True
    for i in range(runs):
        p, e, p_out, e_out = _step_pair(plain, ee, ids, codec.encrypt_ids(ids), tokens)
        pr.append(p)
        er.append(e)
        same = same and codec.decrypt_ids(e_out) == p_out
        log(f"whole model run {i + 1}: plain {p:.2f} tok/s, ee {e:.2f} tok/s, identical={same}")
    return _rates(pr, er, same)


def _rates(pr: list[float], er: list[float], same: bool) -> dict[str, Any]:
    """Medians of each, and the median of the per-pair ratios (robust to load drifting between pairs)."""
    return {"plain_tok_s": round(statistics.median(pr), 2), "ee_tok_s": round(statistics.median(er), 2),
            "ratio": round(statistics.median(e / p for p, e in zip(pr, er)), 3), "tokens_identical": same,
            "pair_ratios": [round(e / p, 3) for p, e in zip(pr, er)]}


def pipeline(model: str, ee_dir: Path, key_path: Path, tokens: int, runs: int, base_dir: str) -> dict[str, Any]:
    n = ModelConfig.from_dir(resolve(model)).num_hidden_layers
    ranges = [f"{a}:{b}" for a, b in split_layers(n, 3)]
    per_node = {i: ["--model", model, "--layers", r] for i, r in enumerate(ranges)}
    per_node.update({3 + i: ["--model", str(ee_dir), "--layers", r] for i, r in enumerate(ranges)})
    net = LocalTestnet(6, base_dir, per_node_args=per_node)
    with net.up(timeout=300):
        log("pipeline: 3 plaintext + 3 EE node processes on loopback")
        addrs = [net.nodes[0].addr]
        with Client(addrs, join_timeout_s=60) as plain, Client(addrs, ee_key=str(key_path), join_timeout_s=60) as ee:
            for c in (plain, ee):  # warm-up
                list(c.chat(PROMPT, model=model, stream=True, max_new_tokens=4, stop=[]))
            pr, er, same = [], [], True
            for i in range(runs):  # who goes first alternates
                order = (plain, ee) if i % 2 == 0 else (ee, plain)
                texts = {}
                for c in order:
                    texts[id(c)] = "".join(c.chat(PROMPT, model=model, stream=True, max_new_tokens=tokens, stop=[]))
                p_text, e_text = texts[id(plain)], texts[id(ee)]
                pr.append(plain.last_summary.tokens_per_s)
                er.append(ee.last_summary.tokens_per_s)
                same = same and e_text == p_text and \
                    ee.last_summary.completion_tokens == plain.last_summary.completion_tokens
                log(f"pipeline run {i + 1}: plain {pr[-1]:.2f} tok/s, ee {er[-1]:.2f} tok/s, identical={same}")
    return {**_rates(pr, er, same), "layers": ranges}


def main(argv: list[str] | None = None) -> int:
    p = parser("ee", "equivariant-encryption overhead: plain vs encrypted decode")
    p.add_argument("--model", default="builtin:smollm2-135m")
    p.add_argument("--mode", default="rotate", choices=["rotate", "permute"])
    p.add_argument("--tokens", type=int, default=48)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--whole-only", action="store_true", help="skip the 3-node pipeline")
    ns = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="swarmlm-bench-ee-") as tmp:
        key_path = EEKey.generate().save(Path(tmp) / "ee.key")
        t0 = time.perf_counter()
        res = encrypt_checkpoint(ns.model, key_path, Path(tmp) / "ee-model", mode=ns.mode)
        log(f"encrypted {ns.model} ({ns.mode}) in {time.perf_counter() - t0:.1f}s: {res.variant_id}")
        result: dict[str, Any] = {"model": ns.model, "mode": ns.mode, "tokens": ns.tokens, "runs": ns.runs,
                                  "encrypt_s": round(res.seconds, 1)}
        result["whole"] = whole(ns.model, res.out_dir, key_path, ns.tokens, ns.runs)
        top = result["whole"]
        if not ns.whole_only:
            result["pipeline"] = pipeline(ns.model, res.out_dir, key_path, ns.tokens, ns.runs, tmp)
            top = result["pipeline"]
        result.update({k: top[k] for k in ("plain_tok_s", "ee_tok_s", "ratio", "tokens_identical")})
    emit(result, ns.json)
    return 0
