"""Speculative decoding, the pure parts: drafting, acceptance, adaptive k, and a local loop.

- ``PromptLookup(max_ngram, min_ngram)``: drafts without a model. ``draft(tokens, k)`` finds the most
  recent earlier occurrence of the last n tokens (n from ``max_ngram`` down to ``min_ngram``) in the
  prompt and the text so far and proposes the (up to) ``k`` tokens that followed it there.
- ``accept_exact(drafts, targets) -> int``: a verify pass of k+1 positions gives the verifier's own
  token at every position (``targets[i]`` follows ``drafts[:i]``); the drafts are kept up to the first
  one that differs and the next token is ``targets[a]``. With greedy targets (argmax) this is the
  greedy rule; with targets sampled from a seed derived per position (what the shard servers do,
  ``node.wire.step_seed``) the tokens are exactly those of plain seeded decoding, so the output
  distribution is unchanged too.
- ``accept_sampled(p, q, drafts, gen) -> (a, next_token)``: the standard speculative-sampling rule
  (Leviathan et al. 2023; Chen et al. 2023) for a draft distribution ``q`` (a draft model): keep draft
  i with probability ``min(1, p_i(d)/q_i(d))``; at the first rejection draw from the residual
  ``max(0, p_i - q_i)`` (normalized); when all k are kept draw the bonus token from ``p_k``. The output
  distribution equals sampling from ``p`` alone. A prompt-lookup draft is ``q = one_hot(d)``.
- ``AdaptiveK(k_min, k_max, k)``: the draft length follows the acceptance rate (longer while drafts
  are kept, shorter after rejections); ``acceptance`` is the running rate.
- ``speculative_generate(shards, prompt_ids, params, ...) -> (tokens, stats)``: greedy decoding on a
  local chain with prompt-lookup drafts, one verify pass of k+1 positions at a time, each shard's KV
  cache rolled back (``Session.truncate``) past the rejected positions. Tokens equal ``generate``'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from swarmlm.models.errors import SessionError
from swarmlm.models.kvcache import Session
from swarmlm.models.sampling import SamplingParams
from swarmlm.models.shard import Shard


class PromptLookup:
    """N-gram drafts from the prompt and the text so far (no draft model)."""

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1) -> None:
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError("need 1 <= min_ngram <= max_ngram")
        self.max_ngram, self.min_ngram = max_ngram, min_ngram

    def draft(self, tokens: Sequence[int], k: int) -> list[int]:
        toks = list(tokens)
        n_tok = len(toks)
        if k <= 0:
            return []
        for n in range(min(self.max_ngram, n_tok - 1), self.min_ngram - 1, -1):
            tail = toks[n_tok - n:]
            for start in range(n_tok - n - 1, -1, -1):  # the most recent earlier occurrence first
                if toks[start:start + n] == tail:
                    follow = toks[start + n:start + n + k]
                    if follow:
                        return follow
        return []


def accept_exact(drafts: Sequence[int], targets: Sequence[int]) -> int:
    """How many drafts match the verifier's tokens (``len(targets) == len(drafts) + 1``)."""
    if len(targets) != len(drafts) + 1:
        raise ValueError("a verify pass gives one target per draft plus the next token")
    a = 0
    while a < len(drafts) and drafts[a] == targets[a]:
        a += 1
    return a


def accept_sampled(p: torch.Tensor, q: torch.Tensor, drafts: Sequence[int],
                   gen: torch.Generator) -> tuple[int, int]:
    """The speculative-sampling rule: ``p`` [k+1, V] target probabilities, ``q`` [k, V] draft ones.

    Returns (drafts kept, the next token). Uniforms come from ``gen`` (seeded: reproducible)."""
    k = len(drafts)
    if p.shape[0] != k + 1 or q.shape[0] != k:
        raise ValueError("p needs k+1 rows and q k rows")
    p, q = p.double(), q.double()
    for i, d in enumerate(drafts):
        u = float(torch.rand((), generator=gen, dtype=torch.float64))
        qd = float(q[i, d])
        if qd > 0 and u < min(1.0, float(p[i, d]) / qd):
            continue
        resid = torch.clamp(p[i] - q[i], min=0.0)
        if float(resid.sum()) <= 0:  # p == q: any rejection leaves nothing to correct; draw from p
            resid = p[i]
        return i, _draw(resid, gen)
    return k, _draw(p[k], gen)


def _draw(weights: torch.Tensor, gen: torch.Generator) -> int:
    cdf = torch.cumsum(weights / weights.sum(), dim=-1)
    u = torch.rand((), generator=gen, dtype=torch.float64) * cdf[-1]
    i = min(int(torch.searchsorted(cdf, u.reshape(1), right=True)[0]), weights.numel() - 1)
    while weights[i] == 0 and i > 0:
        i -= 1
    return i


@dataclass
class AdaptiveK:
    """Draft length from the acceptance rate: ``k = 1 + round(rate * (k_max - 1))`` within
    [k_min, k_max], ``rate`` a running average (weight ``alpha``) of each pass's kept fraction."""

    k_min: int = 1
    k_max: int = 8
    k: int = 4
    rate: float = 0.5
    alpha: float = 0.3
    proposed: int = 0
    accepted: int = 0

    def update(self, proposed: int, accepted: int) -> int:
        if proposed <= 0:
            return self.k
        self.proposed += proposed
        self.accepted += accepted
        self.rate = (1 - self.alpha) * self.rate + self.alpha * (accepted / proposed)
        self.k = max(self.k_min, min(self.k_max, 1 + round(self.rate * (self.k_max - 1))))
        return self.k

    @property
    def acceptance(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0


@dataclass
class SpecStats:
    passes: int = 0  # forward passes after the prompt (verify passes and plain steps)
    proposed: int = 0
    accepted: int = 0

    @property
    def acceptance(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0


def speculative_generate(shards: Sequence[Shard], prompt_ids: Sequence[int], params: SamplingParams,
                         eos_ids: Sequence[int] = (), drafter: Any = None,
                         adapt: AdaptiveK | None = None) -> tuple[list[int], SpecStats]:
    """Greedy tokens (no stop strings) with drafts from ``drafter`` (anything with ``draft(tokens, k)``:
    ``PromptLookup``, the default, or a ``models.speculative_draft.DraftModel``) and KV rollback on
    every shard."""
    if not params.greedy:
        raise SessionError("local speculative decoding is greedy only (the pipeline does seeded sampling)")
    drafter, adapt = drafter or PromptLookup(), adapt or AdaptiveK()
    eos, stats = set(eos_ids), SpecStats()
    max_len = len(prompt_ids) + params.max_new_tokens + adapt.k_max + 1
    sessions: list[Session] = [sh.new_session(max_len) for sh in shards]
    out: list[int] = []
    try:
        logits = _chain(shards, sessions, list(prompt_ids), 0)
        nxt = int(torch.argmax(logits[0, -1]))
        while len(out) < params.max_new_tokens and nxt not in eos:
            out.append(nxt)
            if len(out) >= params.max_new_tokens:
                break
            pos = len(prompt_ids) + len(out) - 1  # where ``nxt`` goes in the cache
            room = params.max_new_tokens - len(out)
            drafts = drafter.draft(list(prompt_ids) + out, min(adapt.k, room))
            logits = _chain(shards, sessions, [nxt] + drafts, pos)
            targets = [int(t) for t in torch.argmax(logits[0], dim=-1)]
            a = accept_exact(drafts, targets)
            stats.passes += 1
            if drafts:
                stats.proposed += len(drafts)
                stats.accepted += a
                adapt.update(len(drafts), a)
            for t in drafts[:a]:
                if t in eos:
                    return out, stats
                out.append(t)
            for s in sessions:  # roll back past the rejected drafts
                s.truncate(pos + 1 + a)
            nxt = targets[a]
        return out[:params.max_new_tokens], stats
    finally:
        for s in sessions:
            s.free()


def _chain(shards: Sequence[Shard], sessions: Sequence[Session], ids: list[int], pos: int) -> torch.Tensor:
    x: torch.Tensor = torch.tensor([ids])
    for sh, se in zip(shards, sessions):
        x = sh.forward(x, se, pos)
    return x
