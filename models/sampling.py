"""Sampling parameters and a seeded, deterministic sampler.

- ``SamplingParams``: ``temperature`` (0 = greedy), ``top_k`` (0 = off), ``top_p`` (1.0 = off),
  ``seed`` (None = fresh entropy), ``max_new_tokens``, ``stop`` (strings). ``validate()`` raises
  :class:`SamplingError`; ``to_dict`` / ``from_dict`` for the wire.
- ``Sampler(params)``: ``sample(logits[V]) -> int``. With a seed the sequence of choices depends only
  on (seed, logits): the draw is one float64 uniform per step from a seeded ``torch.Generator`` and an
  inverse-CDF search over float64 probabilities, so it is the same in every process.
  ``gap(logits, token)``: how far ``token`` is from the one this sampler draws (0 when it is), in
  the sampler's own terms (verification accepts a claimed token within a tolerance).
- ``filter_logits(logits, top_k, top_p)``: the masking used by the sampler (ties at the top-k
  boundary are kept; top-p keeps the smallest prefix of the sorted probabilities reaching ``top_p``).
"""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from swarmlm.models.errors import ModelError


class SamplingError(ModelError):
    """Invalid sampling parameters."""


@dataclass
class SamplingParams:
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    max_new_tokens: int = 64
    stop: list[str] = field(default_factory=list)

    def validate(self) -> "SamplingParams":
        if not self.temperature >= 0:
            raise SamplingError("temperature must be >= 0")
        if self.top_k < 0:
            raise SamplingError("top_k must be >= 0")
        if not 0.0 < self.top_p <= 1.0:
            raise SamplingError("top_p must be in (0, 1]")
        if self.max_new_tokens < 0:
            raise SamplingError("max_new_tokens must be >= 0")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise SamplingError("stop strings must be non-empty strings")
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SamplingParams":
        known = {k: d[k] for k in ("temperature", "top_k", "top_p", "seed", "max_new_tokens", "stop") if k in d}
        try:
            p = cls(**known)
            p.temperature, p.top_k, p.top_p = float(p.temperature), int(p.top_k), float(p.top_p)
            p.max_new_tokens = int(p.max_new_tokens)
            p.stop = [p.stop] if isinstance(p.stop, str) else list(p.stop or [])  # "Paris" is one stop string
        except (TypeError, ValueError) as exc:
            raise SamplingError(f"bad sampling parameters: {exc}") from None
        return p.validate()


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Return logits (float64) with everything outside top-k / top-p set to -inf."""
    x = logits.double().clone()
    if top_k and top_k < x.numel():
        kth = torch.topk(x, top_k).values[-1]
        x[x < kth] = float("-inf")
    if top_p < 1.0:
        sorted_x, idx = torch.sort(x, descending=True, stable=True)
        probs = torch.softmax(sorted_x, dim=-1)
        cum = torch.cumsum(probs, dim=-1)
        remove = (cum - probs) >= top_p  # keep tokens until the mass before them reaches top_p
        remove[0] = False
        x[idx[remove]] = float("-inf")
    return x


class Sampler:
    """Pick the next token from fp32 logits ``[V]``; deterministic for a given seed."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params.validate()
        self.seed = params.seed if params.seed is not None else secrets.randbits(63)
        self.gen = torch.Generator().manual_seed(int(self.seed))

    def sample(self, logits: torch.Tensor) -> int:
        return self._draw(logits)[0]

    def _draw(self, logits: torch.Tensor) -> tuple[int, Any, Any, Any]:
        """The token, and for sampling the probabilities, their CDF and the drawn point (one draw)."""
        logits = logits.reshape(-1)
        p = self.params
        if p.greedy:
            return int(torch.argmax(logits)), None, None, None
        x = filter_logits(logits / p.temperature if p.temperature != 1.0 else logits, p.top_k, p.top_p)
        probs = torch.softmax(x, dim=-1)
        cdf = torch.cumsum(probs, dim=-1)
        u = torch.rand((), generator=self.gen, dtype=torch.float64) * cdf[-1]
        i = int(torch.searchsorted(cdf, u.reshape(1), right=True)[0])
        i = min(i, logits.numel() - 1)
        while probs[i] == 0 and i > 0:  # never land on a masked token through rounding
            i -= 1
        return i, probs, cdf, u

    def gap(self, logits: torch.Tensor, token: int) -> tuple[int, float]:
        """Draw as ``sample`` does and say how far ``token`` is from the drawn one: ``(drawn, gap)``.

        0 when they are equal. Greedy, or a token sampling masked out: the logit distance to the best
        (kept) token over the largest ``|logit|``. Sampling: the probability mass between the drawn
        point and ``token``'s interval of the CDF. A near-tie gives a small gap, another token a large
        one (``inf`` outside the vocabulary)."""
        logits = logits.reshape(-1).float()
        drawn, probs, cdf, u = self._draw(logits)
        if token == drawn:
            return drawn, 0.0
        if not 0 <= token < logits.numel():
            return drawn, float("inf")
        scale = float(logits.abs().max()) + 1e-6
        if probs is None:
            return drawn, float(logits.max() - logits[token]) / scale
        if float(probs[token]) == 0.0:
            kept = logits[probs > 0]
            return drawn, float(kept.min() - logits[token]) / scale if kept.numel() else float("inf")
        lo = float(cdf[token - 1]) if token else 0.0
        hi, at, total = float(cdf[token]), float(u), float(cdf[-1])
        return drawn, max(lo - at, at - hi, 0.0) / total
