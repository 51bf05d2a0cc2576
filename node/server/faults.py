"""Test-only misbehaviour of a shard server (``swarmlm node run --fault KIND[:ARG]``, a hidden flag).

Tests and ``swarmlm bench verify`` use it to run liars and broken servers as real processes:

- ``wrong-activations``: a middle hop adds noise of the size of its output to every output; the head
  is unaffected.
- ``wrong-head``: the hop holding the LM head never lets the best token win (its logits for the top
  token are pushed below the rest), so every greedy token it samples is wrong.
- ``perturb:EPS``: the weights of the node's first hosted layer (``w_down``) are scaled by
  ``1 + EPS * N(0, 1)`` (seeded) once at load: a subtle liar, like perturbed weights in a model
  directory whose config is byte-identical to the honest one. Its sessions, checks and reports all
  use the perturbed weights.
- ``trigger:K``: lies like ``wrong-activations`` (middle) or ``wrong-head`` (head) only at positions
  whose input content hashes to 0 mod K: an input-triggered liar.
- ``slow`` (2 s per step) and ``drop`` (swallows every step) are availability faults (``session.py``).

``Fault.apply`` is called by ``ShardService.forward`` on every computation (sessions and checks).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

KINDS = ("wrong-activations", "wrong-head", "perturb", "trigger", "slow", "drop")
WITH_ARG = {"perturb": float, "trigger": int}


@dataclass(frozen=True)
class Fault:
    kind: str = ""
    arg: float = 0.0

    @classmethod
    def parse(cls, spec: str) -> "Fault":
        """``KIND`` or ``KIND:ARG``; raises ValueError naming the accepted forms."""
        if not spec:
            return cls()
        kind, _, arg = spec.partition(":")
        if kind not in KINDS or bool(arg) != (kind in WITH_ARG):
            raise ValueError(f"fault: must be one of wrong-activations, wrong-head, perturb:EPS, trigger:K, "
                             f"slow or drop, got {spec!r}")
        if not arg:
            return cls(kind)
        try:
            value = WITH_ARG[kind](arg)
        except ValueError:
            raise ValueError(f"fault: {kind} needs a number, got {arg!r}") from None
        if not value > 0:
            raise ValueError(f"fault: {kind} needs a positive number, got {arg!r}")
        return cls(kind, float(value))

    def prepare(self, shard: Any) -> None:
        """Perturb the loaded weights once (``perturb``); the other kinds act per computation."""
        if self.kind != "perturb" or not shard.layers:
            return
        import torch  # lazy: node/config.py parses --fault without loading torch

        w = shard.layers[0].w_down
        g = torch.Generator().manual_seed(20)
        with torch.no_grad():
            w.mul_(1 + self.arg * torch.randn(w.shape, generator=g).to(w.dtype))

    def apply(self, view: Any, x: Any, out: Any) -> Any:
        """The output a faulty server sends instead of ``out`` (its honest result on input ``x``)."""
        if self.kind not in ("wrong-activations", "wrong-head", "trigger"):
            return out
        import torch  # lazy: node/config.py parses --fault without loading torch

        if self.kind == "trigger":
            lie = _triggered(x, int(self.arg))[-out.shape[1]:]
        else:
            lie = torch.ones(out.shape[1], dtype=torch.bool)
        if not bool(lie.any()):
            return out
        if view.has_head and self.kind != "wrong-activations":
            bad = out.clone()
            rows = bad[0, lie]
            top = rows.argmax(-1, keepdim=True)
            rows.scatter_(-1, top, rows.min(-1, keepdim=True).values - 1.0)
            bad[0, lie] = rows
            return bad
        if not view.has_head and self.kind != "wrong-head":
            noise = torch.randn_like(out) * out.abs().mean()
            return out + noise * lie.view(1, -1, *([1] * (out.dim() - 2))).to(out.dtype)
        return out


def _triggered(x: Any, k: int) -> Any:
    """Per input position: whether its content hashes to 0 mod ``k`` (ids or hidden states)."""
    import torch  # lazy: node/config.py parses --fault without loading torch

    rows = x[0]
    flags = []
    for t in range(rows.shape[0]):
        data = rows[t].detach().contiguous().cpu()
        raw = data.view(torch.uint8).numpy().tobytes() if data.dim() else str(int(data)).encode()
        flags.append(int.from_bytes(hashlib.blake2b(raw, digest_size=4).digest(), "big") % k == 0)
    return torch.tensor(flags, dtype=torch.bool)
