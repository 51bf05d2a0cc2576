"""Verified shards, the pure part: tolerances, comparison, tie-breaking and the evidence format.

A checked session asks every hop to *tap*: for each step it sends the client a signed copy of its
input and output (``swarmlm.node.wire.tap_digest`` is what it signs). The client re-runs a hop's
input history on a second replica and compares (``relative_error`` within ``tolerance``); on a
mismatch a third replica breaks the tie (``odd_one_out``) and the accused's own signed taps become
``evidence`` that the tie-breaker re-checks (``check_evidence``) before it publishes a signed
verdict. The client side is ``node/client/verify.py``, the server side ``node/server/verify.py``;
see docs/RELIABILITY.md.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from swarmlm.consensus.reputation import Verdict
from swarmlm.consensus.verdicts import parse_verdict
from swarmlm.node.wire import VERDICT_KIND, tap_digest

# relative error of fp32 prefill vs incremental decode measured on builtin:tiny and SmolLM2 is ~1e-6..1e-5;
# half precision rounds at 2^-8 (bf16) / 2^-11 (fp16) per op: the bounds leave >10x room over measured noise
BASE_TOLERANCE = {"fp32": 1e-3, "float32": 1e-3, "bf16": 6e-2, "bfloat16": 6e-2, "fp16": 1e-2, "float16": 1e-2}
NOISE_FACTOR = 20.0


def tolerance(dtype: str, measured_noise: float = 0.0) -> float:
    """Largest relative error still counted as agreement: the dtype's bound, or 20x measured noise."""
    return max(BASE_TOLERANCE.get(dtype, 6e-2), NOISE_FACTOR * measured_noise)


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


def odd_one_out(primary_vs_ref: bool, primary_vs_third: bool | None, ref_vs_third: bool | None) -> str | None:
    """Who disagrees with the other two: "primary", "reference", or None (undecided). Args: "agree"?"""
    if primary_vs_ref:
        return None
    if primary_vs_third is None or ref_vs_third is None:
        return None
    if ref_vs_third and not primary_vs_third:
        return "primary"
    if primary_vs_third and not ref_vs_third:
        return "reference"
    return None


@dataclass
class Tap:
    step: int
    pos: int
    x_in: Any
    x_out: Any
    token: int | None
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


def check_evidence(ev: dict[str, Any], verify_sig: Any) -> tuple[Any, Any]:
    """Split packed evidence back into steps, check each signature; the inputs and outputs (or raise)."""
    x_in, x_out, steps = ev["in"], ev["out"], evidence_rows(ev["steps"])
    if not isinstance(x_in, torch.Tensor) or not isinstance(x_out, torch.Tensor):
        raise ValueError("evidence needs tensors in, out and a list of steps")
    if x_in.dim() < 2 or x_out.dim() != 3 or x_in.shape[0] != 1 or x_out.shape[0] != 1 or not steps:
        raise ValueError("evidence tensors must be [1, T, ...] and [1, T, H]")
    a = b = 0
    for row in steps:
        if not (isinstance(row, list) and len(row) == 5 and all(isinstance(v, int) for v in row[:4])
                and isinstance(row[4], bytes)):
            raise ValueError("evidence steps must be [step, pos, n_in, n_out, signature]")
        step, pos, n_in, n_out, sig = row
        t_in, t_out = x_in[:, a:a + n_in], x_out[:, b:b + n_out]
        if t_in.shape[1] != n_in or t_out.shape[1] != n_out or pos != a:
            raise ValueError("evidence steps do not tile the history")
        if not verify_sig(tap_digest(ev["session_id"], step, pos, t_in, t_out, None), bytes(sig)):
            raise ValueError(f"evidence step {step}: bad signature of the accused")
        a, b = a + n_in, b + n_out
    if a != x_in.shape[1] or b != x_out.shape[1]:
        raise ValueError("evidence has tensor data beyond its steps")
    return x_in, x_out



def verdicts_from_state(state: Any, authors: Callable[[str], bool] | None = None) -> list[Any]:
    """The well-formed signed "fail" verdict records of the swarm state, as the reputation fold takes
    them; with ``authors``, only those whose author it accepts (e.g. established peers)."""
    out = []
    for rec in state.records(kind=VERDICT_KIND):
        v = parse_verdict(rec.body)
        if v is not None and v.verdict == "fail" and v.subject != rec.author and (authors is None or authors(rec.author)):
            out.append(Verdict(subject=v.subject, time=float(rec.created), id=rec.key, reporter=rec.author))
    return out
