"""Verified shards, the pure part: tolerances, comparison, the head's token gaps and the evidence format.

A checked session asks every hop to *tap*: for each step it sends the client a signed copy of its
input and output (the head: its input and the token it sampled, signed with its sampling
parameters; ``swarmlm.node.wire.tap_digest``). The client re-runs a hop's inputs on a reference
replica and compares: hidden states by ``relative_error`` within ``tolerance``, the head's tokens by
``sample_gap`` (how far a claimed token is from what the reference samples at that position) within
the same tolerance. On a mismatch the accused's own signed taps become ``evidence`` (middle hops) or
``head_evidence`` that a third replica re-checks (``check_evidence`` / ``check_head_evidence``)
before it publishes a signed verdict. The client side is ``node/client/verify.py``, the server side
``node/server/check.py`` and ``node/server/verify.py``; the figures behind the tolerances are in
docs/RELIABILITY.md (``swarmlm bench verify``).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from swarmlm.consensus.reputation import Verdict
from swarmlm.consensus.verdicts import parse_verdict
from swarmlm.models.sampling import Sampler, SamplingParams
from swarmlm.node.wire import VERDICT_KIND, step_seed, tap_digest

# The largest relative error still counted as agreement, per dtype of the compared tensor. Measured
# honest drift (swarmlm bench verify, bench/verify_drift.py: builtin:tiny and SmolLM2-135M middle
# shards fed real hidden states; prefill vs decode, chunked prefill, batches of 2-8 sessions, 1 vs 2
# threads): fp32 <= 4.1e-7, fp16 <= 1.5e-3, bf16 <= 1.4e-2. The bounds leave >= 120x (fp32), 13x
# (fp16) and 4.2x (bf16) room over that drift; the smallest perturbation of one weight matrix each
# detects is in docs/RELIABILITY.md.
BASE_TOLERANCE = {"fp32": 5e-5, "float32": 5e-5, "bf16": 6e-2, "bfloat16": 6e-2, "fp16": 2e-2, "float16": 2e-2}
NOISE_FACTOR = 20.0


def tolerance(dtype: str, measured_noise: float = 0.0) -> float:
    """Largest relative error still counted as agreement: the dtype's bound, or 20x measured noise."""
    return max(BASE_TOLERANCE.get(dtype.replace("torch.", ""), 6e-2), NOISE_FACTOR * measured_noise)


def sample_gap(logits: Any, claimed: int, sampling: dict | None, seed_pos: int) -> tuple[int, float]:
    """What the head samples from ``logits`` ([V]) at a step that started at ``seed_pos`` with the
    session's ``sampling`` (seeded per position, ``wire.step_seed``), and how far ``claimed`` is from
    it (0: the same token; see ``Sampler.gap``): ``(token, gap)``."""
    sp = dict(sampling or {})
    seed = int(sp.get("seed") or 0)
    params = SamplingParams.from_dict({**sp, "seed": step_seed(seed, seed_pos), "max_new_tokens": 1})
    return Sampler(params).gap(logits, claimed)


def gaps_agree(gaps: list[float], tol: float) -> bool:
    return all(math.isfinite(g) and g <= tol for g in gaps)


def relative_error(a: Any, b: Any) -> float:
    """max |a - b| per position over the largest |b| of that position (hidden states: [1, T, H])."""
    a, b = a.float(), b.float()
    if a.shape != b.shape:
        return float("inf")
    if a.numel() == 0:
        return 0.0
    diff = (a - b).abs().flatten(2).amax(-1) if a.dim() >= 3 else (a - b).abs()
    scale = b.abs().flatten(2).amax(-1) if b.dim() >= 3 else b.abs()
    return float((diff / (scale + 1e-6)).max())


@dataclass
class Tap:
    step: int
    pos: int
    x_in: Any
    x_out: Any
    token: int | list[int] | None  # the head's token; a list for a speculative verify pass (one per row)
    sig: bytes


@dataclass
class HopTaps:
    """The taps one hop sent in one session (by step)."""

    peer: str
    session_id: str
    start: int
    end: int
    head: bool
    taps: dict[int, Tap] = field(default_factory=dict)

    def history(self, upto_step: int) -> list[Tap]:
        return [self.taps[s] for s in sorted(self.taps) if s <= upto_step]

    def complete(self, upto_step: int) -> bool:
        return all(s in self.taps for s in range(upto_step + 1))


def concat_inputs(taps: list[Tap]) -> Any:
    return torch.cat([t.x_in for t in taps], dim=1)


def concat_outputs(taps: list[Tap]) -> Any:
    return torch.cat([t.x_out for t in taps], dim=1)


_STEP_ROW = struct.Struct(">qqqq64s")  # step, pos, n_in, n_out, Ed25519 signature


def evidence(hop: HopTaps, upto_step: int) -> dict[str, Any]:
    """The accused's own signed taps, packed for a ``report`` call: two tensors and the steps as one
    bytes value of fixed-size rows (large histories then travel out of band, not in the header)."""
    hist = hop.history(upto_step)
    rows = b"".join(_STEP_ROW.pack(t.step, t.pos, t.x_in.shape[1], t.x_out.shape[1], t.sig) for t in hist)
    return {"accused": hop.peer, "session_id": hop.session_id, "start": hop.start, "end": hop.end,
            "steps": rows, "in": concat_inputs(hist), "out": concat_outputs(hist)}


def evidence_rows(steps: Any) -> list[list[Any]]:
    """``[[step, pos, n_in, n_out, signature], ...]`` from packed rows (or such a list, as sent before)."""
    if isinstance(steps, (bytes, bytearray)):
        if len(steps) % _STEP_ROW.size:
            raise ValueError("evidence steps are not whole rows")
        return [list(_STEP_ROW.unpack_from(steps, i)) for i in range(0, len(steps), _STEP_ROW.size)]
    if not isinstance(steps, list):
        raise ValueError("evidence needs its steps")
    return steps


def _kept(rows: list[Any], i: int, n: int) -> int:
    """Rows of step ``i`` (of ``n``) that stayed in the history: up to where the next step starts
    (a speculative verify pass is overwritten from the next pass's ``pos`` on); the last keeps all.
    Positions are signed, so this is what the accused computed on, not a claim of the client."""
    kept = rows[i + 1][1] - rows[i][1] if i + 1 < len(rows) else n
    if not 0 < kept <= n:
        raise ValueError("evidence steps do not tile the history")
    return kept


def check_evidence(ev: dict[str, Any], verify_sig: Any) -> tuple[Any, Any]:
    """Split packed evidence back into steps, check each signature; the inputs and outputs (or raise).
    Rows a later step overwrote (rejected drafts of a verify pass) are signed but left out."""
    x_in, x_out, steps = ev["in"], ev["out"], evidence_rows(ev["steps"])
    if not isinstance(x_in, torch.Tensor) or not isinstance(x_out, torch.Tensor):
        raise ValueError("evidence needs tensors in, out and a list of steps")
    if x_in.dim() < 2 or x_out.dim() != 3 or x_in.shape[0] != 1 or x_out.shape[0] != 1 or not steps:
        raise ValueError("evidence tensors must be [1, T, ...] and [1, T, H]")
    a = b = p = 0
    ins, outs = [], []
    for i, row in enumerate(steps):
        if not (isinstance(row, list) and len(row) == 5 and all(isinstance(v, int) for v in row[:4])
                and isinstance(row[4], bytes)):
            raise ValueError("evidence steps must be [step, pos, n_in, n_out, signature]")
        step, pos, n_in, n_out, sig = row
        t_in, t_out = x_in[:, a:a + n_in], x_out[:, b:b + n_out]
        if t_in.shape[1] != n_in or t_out.shape[1] != n_out or pos != p:
            raise ValueError("evidence steps do not tile the history")
        if not verify_sig(tap_digest(ev["session_id"], step, pos, t_in, t_out, None), bytes(sig)):
            raise ValueError(f"evidence step {step}: bad signature of the accused")
        kept = _kept(steps, i, min(n_in, n_out))
        ins.append(t_in[:, :kept])
        outs.append(t_out[:, :kept])
        a, b, p = a + n_in, b + n_out, p + kept
    if a != x_in.shape[1] or b != x_out.shape[1]:
        raise ValueError("evidence has tensor data beyond its steps")
    return (x_in, x_out) if p == a == b else (torch.cat(ins, dim=1), torch.cat(outs, dim=1))


def head_evidence(hop: HopTaps, upto_step: int, sampling: dict | None) -> dict[str, Any]:
    """The head's own signed taps: its inputs (as the previous hop signed them as output), and per
    step the token it sampled (-1: none), signed with ``sampling``."""
    hist = hop.history(upto_step)
    return {"accused": hop.peer, "session_id": hop.session_id, "start": hop.start, "end": hop.end,
            "head": True, "sampling": sampling, "in": concat_inputs(hist),
            "steps": [[t.step, t.pos, t.x_in.shape[1], -1 if t.token is None else t.token, t.sig] for t in hist]}


def _head_token(token: Any, n_in: int) -> int | list[int] | None:
    """A head evidence row's token: -1 (none), one token, or one per row (a verify pass)."""
    if isinstance(token, int):
        return None if token < 0 else token
    if isinstance(token, list) and len(token) == n_in and all(isinstance(t, int) and t >= 0 for t in token):
        return token
    raise ValueError("head evidence steps must be [step, pos, n_in, token, signature]")


def check_head_evidence(ev: dict[str, Any], verify_sig: Any) -> tuple[Any, list[tuple[int, int, int]]]:
    """Check every signature of head evidence; its inputs and the claims ``(offset, seed_pos, token)``
    (the token sampled from the logits at position ``offset``, with the seed of ``seed_pos``). A
    verify pass claims a token per row it kept (row j seeded by ``pos + j``)."""
    x_in, steps, sampling = ev["in"], ev["steps"], ev.get("sampling")
    if not isinstance(x_in, torch.Tensor) or not isinstance(steps, list) or not steps:
        raise ValueError("head evidence needs a tensor in and a list of steps")
    if sampling is not None and not isinstance(sampling, dict):
        raise ValueError("head evidence: sampling must be a map")
    if x_in.dim() < 2 or x_in.shape[0] != 1:
        raise ValueError("head evidence: in must be [1, T, ...]")
    a = p = 0
    claims, ins = [], []
    for i, row in enumerate(steps):
        if not (isinstance(row, list) and len(row) == 5 and all(isinstance(v, int) for v in row[:3])
                and isinstance(row[4], bytes)):
            raise ValueError("head evidence steps must be [step, pos, n_in, token, signature]")
        step, pos, n_in, token, sig = row
        t_in = x_in[:, a:a + n_in]
        if n_in <= 0 or t_in.shape[1] != n_in or pos != p:
            raise ValueError("head evidence steps do not tile the history")
        tok = _head_token(token, n_in)
        if not verify_sig(tap_digest(ev["session_id"], step, pos, t_in, None, tok, sampling), bytes(sig)):
            raise ValueError(f"head evidence step {step}: bad signature of the accused")
        kept = _kept(steps, i, n_in)
        if isinstance(tok, list):
            claims += [(p + j, pos + j, tok[j]) for j in range(kept)]
        elif tok is not None and kept == n_in:
            claims.append((p + n_in - 1, pos, tok))
        ins.append(t_in[:, :kept])
        a, p = a + n_in, p + kept
    if a != x_in.shape[1]:
        raise ValueError("head evidence has tensor data beyond its steps")
    if not claims:
        raise ValueError("head evidence claims no token")
    return (x_in if p == a else torch.cat(ins, dim=1)), claims


def verdicts_from_state(state: Any, authors: Callable[[str], bool] | None = None) -> list[Any]:
    """The well-formed signed "fail" verdict records of the swarm state, as the reputation fold takes
    them; with ``authors``, only those whose author it accepts (e.g. established peers)."""
    out = []
    for rec in state.records(kind=VERDICT_KIND):
        v = parse_verdict(rec.body)
        if v is not None and v.verdict == "fail" and v.subject != rec.author and (authors is None or authors(rec.author)):
            out.append(Verdict(subject=v.subject, time=float(rec.created), id=rec.key, reporter=rec.author))
    return out
