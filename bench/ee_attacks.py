"""`swarmlm bench ee-attacks`: token-recovery rates of three attacks on equivariant encryption.

1. frequency analysis of the encrypted token stream of a realistic corpus, rank-matched against
   public unigram statistics of a *different* corpus, as a function of the tokens observed.
   Attacked stream: the package descriptions (METADATA: READMEs) of the installed Python
   distributions, each wrapped as a user chat message with the model's chat template.
   Public statistics: the docstrings of the Python standard library (plus add-one smoothing).
   An "oracle" row rank-matches against the attacked stream's own counts (an upper bound).
2. weight matching of the EE embedding table against the public base model's table:
   permute mode (sorted rows) and rotate mode (norms, Gram signatures, Procrustes), plus rotate
   mode on a drifted table (public E + alpha * std * noise), a crude proxy for a private fine-tune.
3. the "Hidden No More" vocabulary-matching inversion of the hidden states a middle shard server
   receives (both modes), on builtin:tiny (and --hidden-model for another model).

Every run uses a fresh random key unless --seed is given. ``--smoke`` runs everything on
builtin:tiny with small corpora in seconds (the test suite runs it).
"""

from __future__ import annotations

import ast
import hashlib
import json
import importlib.metadata
import random
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from swarmlm.bench.common import emit, log, parser
from swarmlm.crypto.ee import EEKey, vocab_permutation
from swarmlm.crypto.ee_attacks import (frequency_attack, hidden_state_attack, match_permuted_rows, match_rotated_rows,
                                       score_mapping, score_stream, unigram_counts)
from swarmlm.crypto.ee_checkpoint import _index, encrypt_checkpoint
from swarmlm.crypto.ee_codec import EEClientCodec
from swarmlm.crypto.ee_transform import EETransform
from swarmlm.models.config import ModelConfig
from swarmlm.models.registry import resolve
from swarmlm.models.shard import load_shard
from swarmlm.models.tokenizer import Tokenizer

OBSERVED_SIZES = (100, 1_000, 10_000, 100_000, 1_000_000)


def attacked_texts(limit_chars: int) -> list[str]:
    """Installed distributions' long descriptions (their READMEs), sorted by name."""
    out, total = [], 0
    for dist in sorted(importlib.metadata.distributions(), key=lambda d: (d.metadata["Name"] or "").lower()):
        body = dist.metadata.get_payload() or dist.metadata.get("Description") or ""  # type: ignore[attr-defined]
        if len(body) > 200:
            out.append(body)
            total += len(body)
            if total >= limit_chars:
                break
    return out


def public_texts(limit_chars: int) -> list[str]:
    """Docstrings of the Python standard library (a different corpus from the attacked one)."""
    out, total = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        try:
            tree = ast.parse(path.read_text(errors="replace"))
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    out.append(doc)
                    total += len(doc)
        if total >= limit_chars:
            break
    return out


def _key(seed: int | None):
    if seed is None:
        return EEKey.generate()
    return EEKey(hashlib.sha256(f"ee-attacks-{seed}".encode()).digest())


def frequency(tok: Any, vocab: int, perm: Any, smoke: bool) -> dict[str, Any]:
    docs = attacked_texts(60_000 if smoke else 2_000_000)
    random.Random(0).shuffle(docs)
    stream: list[int] = []
    for d in docs:
        stream += tok.encode_chat([{"role": "user", "content": d}])
    public: list[int] = []
    for d in public_texts(60_000 if smoke else 2_000_000):
        public += tok.encode(d)
    stream_t = torch.tensor(stream, dtype=torch.long)
    pub_counts = unigram_counts(public, vocab) + 1.0
    rows = []
    for n in [s for s in OBSERVED_SIZES if s < len(stream)] + [len(stream)]:
        obs = stream_t[:n]
        r = score_stream(frequency_attack(perm[obs], pub_counts), perm, obs).as_dict()
        o = score_stream(frequency_attack(perm[obs], unigram_counts(stream_t, vocab)), perm, obs).as_dict()
        rows.append({"observed_tokens": n, **r, "oracle_token_recovery": o["token_recovery"]})
        log(f"frequency: {n} tokens observed -> {r}")
    return {"attacked_corpus": f"{len(docs)} installed package READMEs, {len(stream)} tokens (chat-wrapped)",
            "public_corpus": f"stdlib docstrings, {len(public)} tokens", "rows": rows}


def weight_matching(E: Any, cfg: dict, key: Any, drifts: tuple[float, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {"vocab_rows": int(E.shape[0]), "hidden": int(E.shape[1])}
    tr = EETransform(key, cfg, "permute")
    t0 = time.perf_counter()
    g = match_permuted_rows(E, tr.transform_tensor("model.embed_tokens.weight", lambda n: E))
    out["permute_sorted_rows"] = round(score_mapping(g, tr.perm), 4)
    log(f"weight matching, permute: {out['permute_sorted_rows']} ({time.perf_counter() - t0:.1f}s)")
    tr = EETransform(key, cfg, "rotate")
    gen = torch.Generator().manual_seed(0)
    for alpha in (0.0,) + drifts:
        Ed = E if alpha == 0 else E + alpha * E.float().std() * torch.randn(E.shape, generator=gen)
        t0 = time.perf_counter()
        res = match_rotated_rows(E, tr.transform_tensor("model.embed_tokens.weight", lambda n: Ed))
        row = {k: round(score_mapping(v, tr.perm), 4) for k, v in res.items()}
        out["rotate" if alpha == 0 else f"rotate_drift_{alpha}"] = row
        log(f"weight matching, rotate, drift {alpha}: {row} ({time.perf_counter() - t0:.1f}s)")
    return out


def hidden_state(spec: str, key_seed: int | None, prompts: list[list[int]], layer: int | None,
                 candidates: int | None) -> dict[str, Any]:
    base = resolve(spec)
    cfg = ModelConfig.from_dir(base)
    a = layer if layer is not None else cfg.num_hidden_layers // 2
    pub = load_shard(base, 0, a)
    out: dict[str, Any] = {"model": spec, "observed_layer": a, "prompts": len(prompts),
                           "tokens": sum(len(p) for p in prompts)}
    cand = None
    if candidates:
        cand = torch.arange(min(candidates, cfg.vocab_size))  # BPE ids ~ frequency order
        out["candidates"] = f"ids < {candidates} (BPE ids are roughly frequency-ordered)"

    def states(ids: torch.Tensor) -> torch.Tensor:
        return pub.forward(ids, pub.new_session(ids.shape[1], batch_size=ids.shape[0]))

    with tempfile.TemporaryDirectory() as tmp:
        key = _key(key_seed)
        key_path = key.save(Path(tmp) / "k")
        for mode in ("permute", "rotate"):
            res = encrypt_checkpoint(base, key_path, Path(tmp) / mode, mode=mode)
            ee = load_shard(res.out_dir, 0, a)
            codec = EEClientCodec(key, cfg.vocab_size)
            right = total = 0
            t0 = time.perf_counter()
            for p in prompts:
                x = torch.tensor([codec.encrypt_ids(p)])
                observed = ee.forward(x, ee.new_session(len(p)))[0]  # what the next shard server receives
                rec = hidden_state_attack(states, observed, cfg.vocab_size, mode, cand)
                right += sum(int(u == v) for u, v in zip(rec, p))
                total += len(p)
            out[f"{mode}_token_recovery"] = round(right / max(total, 1), 4)
            log(f"hidden-state inversion, {mode}: {right}/{total} ({time.perf_counter() - t0:.1f}s)")
    return out


def main(argv: list[str] | None = None) -> int:
    p = parser("ee-attacks", "token-recovery rates of attacks on equivariant encryption")
    p.add_argument("--model", default="builtin:smollm2-135m", help="model for attacks 1 and 2")
    p.add_argument("--hidden-model", default="builtin:tiny", help="model for attack 3")
    p.add_argument("--hidden-prompts", type=int, default=4)
    p.add_argument("--hidden-tokens", type=int, default=24, help="tokens per attacked prompt")
    p.add_argument("--hidden-layer", type=int, default=None, help="layer whose input is observed (default n/2)")
    p.add_argument("--hidden-candidates", type=int, default=None, help="only try ids below this (big vocabularies)")
    p.add_argument("--drift", type=float, nargs="*", default=[0.01, 0.1, 0.3], help="fine-tune proxies")
    p.add_argument("--seed", type=int, default=None, help="derive the key from this seed (default: random key)")
    p.add_argument("--smoke", action="store_true", help="builtin:tiny only, small corpora (seconds)")
    ns = p.parse_args(argv)
    model = "builtin:tiny" if ns.smoke else ns.model
    base = resolve(model)
    cfg = json.loads((base / "config.json").read_text())
    key = _key(ns.seed)
    tok = Tokenizer.from_dir(base)
    perm = vocab_permutation(key, int(cfg["vocab_size"]))
    t0 = time.perf_counter()
    result: dict[str, Any] = {"model": model, "vocab_size": int(cfg["vocab_size"])}
    result["frequency"] = frequency(tok, int(cfg["vocab_size"]), perm, ns.smoke)
    with safe_open(str(base / _index(base)["model.embed_tokens.weight"]), framework="pt") as sf:
        E = sf.get_tensor("model.embed_tokens.weight")
    result["weight_matching"] = weight_matching(E, cfg, key, tuple(ns.drift))
    htok = tok if ns.hidden_model == model else Tokenizer.from_dir(resolve(ns.hidden_model))
    texts = attacked_texts(20_000)
    prompts = [htok.encode(t[200 * i: 200 * i + 2000])[: (6 if ns.smoke else ns.hidden_tokens)] for i, t in
               enumerate(texts[: (1 if ns.smoke else ns.hidden_prompts)])]
    result["hidden_state"] = hidden_state(ns.hidden_model, ns.seed, prompts, ns.hidden_layer, ns.hidden_candidates)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    emit(result, ns.json, _summary)
    return 0


def _summary(r: dict[str, Any]) -> str:
    lines = [f"EE attacks on {r['model']} (V={r['vocab_size']})", "1. frequency analysis "
             f"({r['frequency']['attacked_corpus']}; public: {r['frequency']['public_corpus']})"]
    for row in r["frequency"]["rows"]:
        lines.append(f"   {row['observed_tokens']:>9} tokens observed: {100 * row['token_recovery']:5.1f}% of tokens, "
                     f"{100 * row['type_recovery']:5.1f}% of types (oracle {100 * row['oracle_token_recovery']:5.1f}%)")
    w = r["weight_matching"]
    lines.append(f"2. weight matching: permute {100 * w['permute_sorted_rows']:.2f}% of vocabulary rows")
    for k, v in w.items():
        if k.startswith("rotate"):
            lines.append(f"   {k}: " + ", ".join(f"{s} {100 * x:.2f}%" for s, x in v.items()))
    h = r["hidden_state"]
    lines.append(f"3. hidden-state inversion at layer {h['observed_layer']} of {h['model']} ({h['tokens']} tokens): "
                 f"permute {100 * h['permute_token_recovery']:.1f}%, rotate {100 * h['rotate_token_recovery']:.1f}%")
    return "\n".join(lines)
