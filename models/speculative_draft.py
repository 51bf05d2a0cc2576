"""Drafts from a small local model (speculative decoding's ``--draft-model``), the pure parts.

- ``check_same_vocab(draft_tok, target_tok, draft_cfg)``: a draft model is only useful, and only
  safe to index, when its token ids mean what the target's mean: the two tokenizers must have the
  same vocabulary (token -> id, added tokens included) and the draft's LM head must cover it.
  Raises ``DraftModelError`` (one line: what differs) otherwise.
- ``DraftModel(shard, max_length, pick=None)``: a whole model (embedding and head) with its own KV
  cache. ``draft(tokens, k)`` (the interface of ``PromptLookup``) returns up to ``k`` tokens that follow ``tokens`` (the prompt and the
  kept text). The cache is kept between calls: each call first rolls it back to the longest prefix
  it shares with ``tokens`` (``Session.truncate``: the drafts the verifier rejected vanish), feeds
  the new tokens in one forward, then decodes the drafts one by one. ``pick(logits, pos)`` chooses
  the token that follows position ``pos`` (default: argmax, greedy). For seeded sampling the client
  passes the verifier's own sampler seeded for ``pos``: the draft is then the token the verifier
  draws with the same uniforms, so it is kept whenever the two distributions agree around that
  draw (coupled drafts; the exact-match rule keeps the output that of plain seeded decoding).
- ``free()`` releases the cache.
- ``load_draft_model(spec, target_tok, max_length, pick=None)``: resolve and load ``spec`` whole
  (``models.registry.resolve``), check its tokenizer against the target's, and wrap it.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from swarmlm.models.config import ModelConfig
from swarmlm.models.errors import ModelError
from swarmlm.models.kvcache import Session
from swarmlm.models.registry import resolve
from swarmlm.models.shard import Shard, load_shard
from swarmlm.models.tokenizer import Tokenizer

Pick = Callable[[torch.Tensor, int], int]


class DraftModelError(ModelError):
    """The draft model cannot draft for this target (another vocabulary, not a whole model...)."""


def _vocab(tok: Any) -> dict[str, int]:
    return dict(tok.tk.get_vocab(with_added_tokens=True))


def check_same_vocab(draft_tok: Any, target_tok: Any, draft_cfg: ModelConfig, name: str = "the draft model") -> None:
    """Raise ``DraftModelError`` unless ``draft_tok`` maps every token to the id ``target_tok`` does."""
    if not isinstance(getattr(target_tok, "tk", None), type(draft_tok.tk)):  # e.g. EE's id-encrypting adapter
        raise DraftModelError(f"{name} cannot draft for this model: its token ids are not plain tokenizer ids "
                              "(an encrypted variant?); use prompt-lookup drafts (--speculative) instead")
    dv, tv = _vocab(draft_tok), _vocab(target_tok)
    if dv != tv:
        diff = len(set(dv.items()) ^ set(tv.items()))
        raise DraftModelError(f"{name} has another tokenizer ({len(dv)} tokens vs the model's {len(tv)}, "
                              f"{diff} token/id pairs differ): pick a draft model with the same tokenizer")
    if draft_cfg.vocab_size < len(tv):
        raise DraftModelError(f"{name}'s LM head has {draft_cfg.vocab_size} rows for {len(tv)} tokens: "
                              "pick a draft model with the same vocabulary")


def greedy_pick(logits: torch.Tensor, pos: int) -> int:
    return int(torch.argmax(logits))


class DraftModel:
    """A local draft model with its own KV cache, rolled back past rejected drafts (module doc)."""

    def __init__(self, shard: Shard, max_length: int, pick: Pick | None = None, vocab: int | None = None) -> None:
        if not (shard.has_embedding and shard.has_head):
            raise DraftModelError("a draft model must be a whole model (embedding and LM head)")
        self.shard = shard
        self.session: Session = shard.new_session(max_length)
        self.pick = pick or greedy_pick
        self.vocab = vocab  # draft logits past the target's vocabulary (padding rows) are never picked
        self.fed: list[int] = []  # the tokens whose keys and values are in the cache, in order
        self.forwards = 0  # draft-model forward passes (a cost figure)

    def _forward(self, ids: list[int], pos: int) -> torch.Tensor:
        self.forwards += 1
        out = self.shard.forward(torch.tensor([ids], dtype=torch.long), self.session, pos, last_only=True)
        logits = out[0, -1]
        return logits[:self.vocab] if self.vocab else logits

    def draft(self, tokens: Sequence[int], k: int) -> list[int]:
        toks = list(tokens)
        if k <= 0 or not toks:
            return []
        room = self.session.max_length - len(toks)
        k = min(k, room)
        if k <= 0:
            return []
        common = 0
        limit = min(len(self.fed), len(toks) - 1)  # the last token is fed again: its logits give draft 1
        while common < limit and self.fed[common] == toks[common]:
            common += 1
        self.session.truncate(common)
        self.fed = toks[:common]
        logits = self._forward(toks[common:], common)
        self.fed = toks
        drafts = [self.pick(logits, len(toks) - 1)]
        while len(drafts) < k:
            pos = len(self.fed)
            logits = self._forward([drafts[-1]], pos)
            self.fed.append(drafts[-1])
            drafts.append(self.pick(logits, pos))
        return drafts

    def free(self) -> None:
        self.session.free()
        self.fed = []


def load_draft_shard(spec: str, target_tok: Any) -> Shard:
    """The whole model ``spec`` (fp32), after checking that it shares ``target_tok``'s vocabulary."""
    model_dir = resolve(spec)
    cfg = ModelConfig.from_dir(model_dir)
    check_same_vocab(Tokenizer.from_dir(model_dir), target_tok, cfg, f"draft model {spec!r}")
    return load_shard(model_dir, 0, cfg.num_hidden_layers)
