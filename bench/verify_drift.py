"""The numerics half of ``swarmlm bench verify``: honest drift of a middle shard and the smallest
weight perturbation a check detects, per dtype, measured in this process (no network).

For each dtype (fp32, bf16, fp16) a middle shard of the model (its middle third of layers, as a
server loads it) computes the hidden states of ``tokens`` random positions; the *reference* is one
prefill on 1 thread, batch 1. Honest variants of the same computation (what two honest replicas may
legitimately do differently) are compared to it with the checker's own ``relative_error``:

The input is what the first hop sends: layers ``[0, a)`` in fp32 over random token ids.

- ``decode``: the positions one at a time (a session's steps) instead of one prefill;
- ``chunked``: a prefill in chunks of 4 (a check extending its reference session round by round);
- ``threads``: the prefill on ``threads`` threads (2 by default) instead of 1;
- ``batch_B``: a decode step of the session batched with ``B - 1`` other sessions (``forward_batch``:
  continuous batching of concurrent sessions), for B in 2, 4, 8.

``drift[dtype]`` is the largest of these, ``margin[dtype]`` the checker's tolerance over it. Then the
first hosted layer's ``w_down`` is scaled by ``1 + eps * N(0, 1)`` (the ``--fault perturb:EPS`` liar,
same seed) for eps on a grid, and ``min_detected_perturbation[dtype]`` is the smallest eps whose
output the check tells apart (relative error above the tolerance) from the honest prefill.
"""

from __future__ import annotations

from typing import Any

import torch

from swarmlm.models.config import ModelConfig
from swarmlm.models.registry import resolve
from swarmlm.models.shard import Shard, load_shard
from swarmlm.node.server.faults import Fault
from swarmlm.node.verification import relative_error, tolerance

DTYPES = ("fp32", "bf16", "fp16")
EPS_GRID = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 1e-1, 2e-1, 5e-1, 1.0)
BATCHES = (2, 4, 8)


def _prefill(shard: Shard, x: torch.Tensor) -> torch.Tensor:
    return shard.forward(x, shard.new_session(x.shape[1] + 1))


def _chunks(shard: Shard, x: torch.Tensor, size: int) -> torch.Tensor:
    sess = shard.new_session(x.shape[1] + 1)
    return torch.cat([shard.forward(x[:, i:i + size], sess) for i in range(0, x.shape[1], size)], dim=1)


def _batched(shard: Shard, x: torch.Tensor, others: list[torch.Tensor]) -> torch.Tensor:
    """Session 0 decodes ``x`` step by step while ``others`` decode beside it in the same batches."""
    T = x.shape[1]
    sessions = [shard.new_session(T + 1) for _ in range(len(others) + 1)]
    inputs = [x] + others
    outs = []
    for t in range(T):
        res = shard.forward_batch([(s, inp[:, t:t + 1], None) for s, inp in zip(sessions, inputs)])
        outs.append(res[0])
    return torch.cat(outs, dim=1)


def _with_threads(n: int, fn: Any, *args: Any) -> torch.Tensor:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(old)


def measure(model: str = "builtin:tiny", tokens: int = 16, threads: int = 2, seed: int = 0,
            dtypes: tuple[str, ...] = DTYPES) -> dict[str, Any]:
    """``{"drift": {dtype: {variant: rel_err}}, "tolerance", "margin", "min_detected_perturbation",
    "detected_error"}``: see the module docstring."""
    model_dir = resolve(model)
    n = ModelConfig.from_dir(model_dir).num_hidden_layers
    a, b = n // 3, max(n // 3 + 1, 2 * n // 3)
    g = torch.Generator().manual_seed(seed)
    vocab = ModelConfig.from_dir(model_dir).vocab_size
    first = load_shard(model_dir, 0, a, "fp32", embedding=True, head=False)
    # real hidden states, as the first hop sends them: layers [0, a) over random token ids
    xs = [_prefill(first, torch.randint(0, vocab, (1, tokens), generator=g)) for _ in range(max(BATCHES))]
    out: dict[str, Any] = {"model": model, "layers": [a, b], "tokens": tokens, "threads": threads,
                           "drift": {}, "tolerance": {}, "margin": {}, "min_detected_perturbation": {},
                           "detected_error": {}}
    for dt in dtypes:
        shard = load_shard(model_dir, a, b, dt, embedding=False, head=False)
        x = xs[0].to(shard.dtype)
        others = [v.to(shard.dtype) for v in xs[1:]]
        ref = _with_threads(1, _prefill, shard, x)
        d = {"decode": relative_error(_with_threads(1, _chunks, shard, x, 1), ref),
             "chunked": relative_error(_with_threads(1, _chunks, shard, x, 4), ref),
             "threads": relative_error(_with_threads(threads, _prefill, shard, x), ref)}
        for bsz in BATCHES:
            d[f"batch_{bsz}"] = relative_error(_with_threads(1, _batched, shard, x, others[:bsz - 1]), ref)
        tol = tolerance(dt)
        worst = max(d.values())
        out["drift"][dt] = {k: float(f"{v:.3g}") for k, v in d.items()}
        out["tolerance"][dt] = tol
        out["margin"][dt] = round(tol / worst, 1) if worst > 0 else None
        out["min_detected_perturbation"][dt] = None
        for eps in EPS_GRID:
            liar = load_shard(model_dir, a, b, dt, embedding=False, head=False)
            Fault("perturb", eps).prepare(liar)
            err = relative_error(_with_threads(1, _prefill, liar, x), ref)
            if err > tol:
                out["min_detected_perturbation"][dt] = eps
                out["detected_error"][dt] = float(f"{err:.3g}")
                break
    return out
