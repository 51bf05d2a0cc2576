"""Several continuations of one prompt in lockstep on one whole-model shard, and batched scoring.

* ``generate_many(shard, prompt_ids, params_list, tokenizer)``: one ``GenerationResult`` per
  ``SamplingParams`` (each with its own seed, temperature, stop strings). The prompt is run once and
  its KV cache copied to every continuation; each decode step is one ``forward_batch`` over the
  continuations still running, so N answers cost little more than one on a CPU. Same semantics as
  ``generate.generate`` (EOS and stop strings end a continuation, ``finish_reason`` "stop"/"length").
* ``next_token_logprobs(shard, sequences, batch_tokens)``: the log-probabilities of the token after
  each sequence, for many sequences at once: right-padded into batches (causal attention makes the
  padding invisible to the real positions), only the last real position of each row goes through
  the LM head.
* ``sequence_logprobs(shard, prefix, continuations)``: the summed and per-token log-probabilities
  of each continuation after a shared prefix (prefix run once, continuations batched).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from swarmlm.models.errors import SessionError
from swarmlm.models.generate import GenerationResult
from swarmlm.models.sampling import Sampler, SamplingParams
from swarmlm.models.shard import Shard, rms_norm
from swarmlm.models.textstream import TextStream
from swarmlm.models.tokenizer import Tokenizer


def _check(shard: Shard) -> None:
    if not (shard.has_embedding and shard.has_head):
        raise SessionError("batched generation needs a whole-model shard (embedding and head)")


@torch.inference_mode()
def generate_many(shard: Shard, prompt_ids: Sequence[int], params_list: Sequence[SamplingParams],
                  tokenizer: Tokenizer) -> list[GenerationResult]:
    _check(shard)
    if not prompt_ids:
        raise SessionError("empty prompt")
    n = len(params_list)
    if n == 0:
        return []
    for p in params_list:
        p.validate()
    max_new = max(p.max_new_tokens for p in params_list)
    results = [GenerationResult(prompt_tokens=len(prompt_ids)) for _ in params_list]
    if max_new == 0:
        return results
    eos = set(tokenizer.eos_token_ids)
    sessions = [shard.new_session(len(prompt_ids) + max_new) for _ in params_list]
    try:
        logits = shard.forward(torch.tensor([list(prompt_ids)]), sessions[0], 0, last_only=True)[0, -1]
        for s in sessions[1:]:
            s.k[:, :, :, :len(prompt_ids)] = sessions[0].k[:, :, :, :len(prompt_ids)]
            s.v[:, :, :, :len(prompt_ids)] = sessions[0].v[:, :, :, :len(prompt_ids)]
            s.length = len(prompt_ids)
        samplers = [Sampler(p) for p in params_list]
        streams = [TextStream(tokenizer, p.stop) for p in params_list]
        last = {i: logits for i in range(n)}
        pos = len(prompt_ids)
        while last:
            step: list[int] = []
            toks: list[int] = []
            for i in sorted(last):
                res, p = results[i], params_list[i]
                if p.max_new_tokens == 0:
                    continue
                tok = samplers[i].sample(last[i])
                if tok in eos:
                    res.finish_reason = "stop"
                    continue
                res.token_ids.append(tok)
                streams[i].push(tok)
                if streams[i].stopped:
                    res.finish_reason = "stop"
                    continue
                if len(res.token_ids) >= p.max_new_tokens:
                    res.finish_reason = "length"
                    continue
                step.append(i)
                toks.append(tok)
            if not step:
                break
            outs = shard.forward_batch([(sessions[i], torch.tensor([[t]]), pos) for i, t in zip(step, toks)],
                                       last_only=True)
            last = {i: o[0, -1] for i, o in zip(step, outs)}
            pos += 1
        for res, st in zip(results, streams):
            st.finish()
            res.text = st.text
    finally:
        for s in sessions:
            s.free()
    return results


@torch.inference_mode()
def _hidden(shard: Shard, rows: list[list[int]], pad: int) -> torch.Tensor:
    """Final hidden states [B, T, H] of right-padded rows (before the final norm)."""
    T = max(len(r) for r in rows)
    x = torch.tensor([r + [pad] * (T - len(r)) for r in rows])
    sess = shard.new_session(T, batch_size=len(rows))
    try:
        return shard.forward_batch([(sess, x, 0)], hidden=True)[0]
    finally:
        sess.free()


def _logprobs_at(shard: Shard, h: torch.Tensor) -> torch.Tensor:
    h = rms_norm(h, shard.norm, shard.config.rms_norm_eps)
    return torch.log_softmax(F.linear(h, shard.lm_head).float(), dim=-1)


@torch.inference_mode()
def next_token_logprobs(shard: Shard, sequences: Sequence[Sequence[int]], batch_tokens: int = 2048,
                        pad: int = 0) -> list[torch.Tensor]:
    """Log-probabilities [V] of the next token after each sequence (batched, right-padded)."""
    _check(shard)
    if any(not s for s in sequences):
        raise SessionError("empty sequence")
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    out: list[torch.Tensor | None] = [None] * len(sequences)
    i = 0
    while i < len(order):
        j = i + 1
        while j < len(order) and len(sequences[order[j]]) * (j + 1 - i) <= batch_tokens:
            j += 1
        idx = order[i:j]
        h = _hidden(shard, [list(sequences[k]) for k in idx], pad)
        last = torch.stack([h[b, len(sequences[k]) - 1] for b, k in enumerate(idx)])
        for k, lp in zip(idx, _logprobs_at(shard, last)):
            out[k] = lp
        i = j
    return out  # type: ignore[return-value]


@torch.inference_mode()
def sequence_logprobs(shard: Shard, prefix: Sequence[int], continuations: Sequence[Sequence[int]],
                      batch_tokens: int = 2048, pad: int = 0) -> list[list[float]]:
    """Per-token log-probabilities of each continuation after ``prefix`` (empty list for an empty one)."""
    _check(shard)
    out: list[list[float]] = [[] for _ in continuations]
    todo = [i for i, c in enumerate(continuations) if c]
    i = 0
    while i < len(todo):
        j = i + 1
        while j < len(todo) and (len(prefix) + max(len(continuations[k]) for k in todo[i:j + 1])) * (j + 1 - i) \
                <= batch_tokens:
            j += 1
        idx = todo[i:j]
        rows = [list(prefix) + list(continuations[k]) for k in idx]
        h = _hidden(shard, rows, pad)
        for b, k in enumerate(idx):
            c = continuations[k]
            lp = _logprobs_at(shard, h[b, len(prefix) - 1:len(prefix) + len(c) - 1])
            out[k] = lp.gather(1, torch.tensor(list(c)).unsqueeze(1)).squeeze(1).tolist()
        i = j
    return out
