"""A local generation loop over a chain of shards (tests, the bench, whole-model nodes, consensus).

- ``load_chain(spec_or_dir, n_shards=1, dtype="fp32") -> list[Shard]`` (spec as in
  :func:`swarmlm.models.registry.resolve`; the even split of :func:`swarmlm.models.partition.split_layers`).
- ``run_chain(shards, sessions, x, positions, last_only=False)``: one forward through every shard.
- ``generate_stream(shards, prompt_ids, params, tokenizer=None, eos_ids=None)`` yields
  ``StreamEvent(token_id, text)`` per generated token (``text`` is the new printable text, held back
  while it could still be the start of a stop string; a last event with ``token_id == -1`` carries
  text held back until the end), then returns; ``generate(...)`` collects a
  ``GenerationResult(token_ids, text, finish_reason, prompt_tokens)``. ``finish_reason`` is ``"stop"``
  (EOS or a stop string; neither is included in the result) or ``"length"`` (``max_new_tokens``).
  Sessions are opened on each shard for ``len(prompt) + max_new_tokens`` and dropped at the end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch

from swarmlm.models.config import ModelConfig
from swarmlm.models.errors import SessionError
from swarmlm.models.kvcache import Session
from swarmlm.models.partition import split_layers
from swarmlm.models.registry import resolve
from swarmlm.models.sampling import Sampler, SamplingParams
from swarmlm.models.shard import Shard, load_shard
from swarmlm.models.textstream import TextStream
from swarmlm.models.tokenizer import Tokenizer


@dataclass
class StreamEvent:
    token_id: int
    text: str


@dataclass
class GenerationResult:
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str = "length"
    prompt_tokens: int = 0


def load_chain(spec: str | Path, n_shards: int = 1, dtype: str = "fp32") -> list[Shard]:
    model_dir = resolve(str(spec))
    n = ModelConfig.from_dir(model_dir).num_hidden_layers
    return [load_shard(model_dir, a, b, dtype) for a, b in split_layers(n, n_shards)]


def run_chain(shards: Sequence[Shard], sessions: Sequence[Session], x: torch.Tensor,
              positions: int | None, last_only: bool = False) -> torch.Tensor:
    for sh, se in zip(shards, sessions):
        x = sh.forward(x, se, positions, last_only=last_only and sh.has_head)
    return x


def _check_chain(shards: Sequence[Shard]) -> None:
    if not shards or not shards[0].has_embedding or not shards[-1].has_head:
        raise SessionError("a generation chain starts with the embedding shard and ends with the head shard")
    for a, b in zip(shards, shards[1:]):
        if a.end != b.start:
            raise SessionError(f"shards {a} and {b} are not contiguous")


def generate_stream(shards: Sequence[Shard], prompt_ids: Sequence[int], params: SamplingParams,
                    tokenizer: Tokenizer | None = None, eos_ids: Sequence[int] | None = None,
                    result: GenerationResult | None = None) -> Iterator[StreamEvent]:
    """Yield generated tokens one by one (see module docstring); fills ``result`` when given."""
    _check_chain(shards)
    params.validate()
    if params.stop and tokenizer is None:
        raise SessionError("stop strings need a tokenizer")
    res = result if result is not None else GenerationResult()
    res.prompt_tokens = len(prompt_ids)
    if not prompt_ids:
        raise SessionError("empty prompt")
    eos = set(eos_ids if eos_ids is not None else (tokenizer.eos_token_ids if tokenizer else
                                                   shards[0].config.eos_token_ids))
    max_len = len(prompt_ids) + max(params.max_new_tokens, 1)
    sessions = [sh.new_session(max_len) for sh in shards]
    sampler = Sampler(params)
    stream = TextStream(tokenizer, params.stop) if tokenizer else None
    try:
        if params.max_new_tokens == 0:
            res.finish_reason = "length"
            return
        logits = run_chain(shards, sessions, torch.tensor([list(prompt_ids)]), 0, last_only=True)
        pos = len(prompt_ids)
        while True:
            tok = sampler.sample(logits[0, -1])
            if tok in eos:
                res.finish_reason = "stop"
                break
            res.token_ids.append(tok)
            out = ""
            if stream is not None:
                stream.push(tok)
                out = stream.release()
                if stream.stopped:
                    res.text = stream.text
                    res.finish_reason = "stop"
                    if out:
                        yield StreamEvent(tok, out)
                    return
            yield StreamEvent(tok, out)
            if len(res.token_ids) >= params.max_new_tokens:
                res.finish_reason = "length"
                break
            logits = run_chain(shards, sessions, torch.tensor([[tok]]), pos, last_only=True)
            pos += 1
        if stream is not None:
            rest = stream.finish()
            res.text = stream.text
            if rest:
                yield StreamEvent(-1, rest)
    finally:
        for s in sessions:
            s.free()


def generate(shards: Sequence[Shard], prompt_ids: Sequence[int], params: SamplingParams,
             tokenizer: Tokenizer | None = None, eos_ids: Sequence[int] | None = None) -> GenerationResult:
    res = GenerationResult()
    for _ in generate_stream(shards, prompt_ids, params, tokenizer, eos_ids, result=res):
        pass
    return res
