"""Speculative decoding through the pipeline (the client's side of it).

``Speculation.run(gen, sess, first)`` replaces a generation's token-by-token loop: after the prompt's
answer it drafts up to k tokens, sends the last token and the drafts as one step of k+1 positions
(``PipelineSession.step(verify=True)``: every hop first drops its cached positions from ``pos`` on, so
the rejected drafts of the previous pass vanish, then computes the k+1 positions as one multi-token
step in its batch scheduler), and keeps the drafts up to the first that differs from the head's token
at that position, then the head's token there. The head samples each position with the per-position
seed (``wire.step_seed``), so greedy and seeded output are exactly those of plain decoding. k adapts
to the acceptance rate (``AdaptiveK``). Failover is unchanged: the generation replays the kept tokens
on the new route and calls ``run`` again (the statistics, k and the draft model's cache carry over).
With verification on, each pass is handed to the ``Verifier`` with the number of rows kept
(``Verifier.keep``): checks cover the kept rows of every hop (docs/RELIABILITY.md).

Drafts come from prompt lookup (``models.speculative.PromptLookup``: n-gram matches in the prompt and
the text so far) or, with ``ClientOptions.draft_model``, from a small model run here
(``models.speculative_draft.DraftModel``, its own KV cache rolled back like the servers'). Its
forward passes run in a worker thread. With seeded sampling the draft model draws each draft with
the head's own sampler and seed for that position (coupled drafts: kept whenever both models'
distributions put the shared uniform on the same token), so the exact-match rule above still gives
the tokens of plain seeded decoding. ``load_draft`` loads a draft model once per process and
refuses one whose tokenizer differs from the target's (``DraftModelError``, one line).
"""

from __future__ import annotations

from typing import Any

import torch
import trio

from swarmlm.models.sampling import Sampler, SamplingParams
from swarmlm.models.shard import Shard
from swarmlm.models.speculative import AdaptiveK, PromptLookup, SpecStats, accept_exact
from swarmlm.models.speculative_draft import DraftModel, Pick, load_draft_shard
from swarmlm.node.client.session import HopFailed, PipelineSession, StepResult
from swarmlm.node.wire import step_seed

# (draft spec, id of the target tokenizer) -> (that tokenizer, kept so the id stays its own; the model)
_LOADED: dict[tuple[str, int], tuple[Any, Shard]] = {}


async def load_draft(spec: str, target_tok: Any) -> Shard:
    """The draft model ``spec`` for a target with ``target_tok`` (loaded and checked once)."""
    key = (spec, id(target_tok))
    if key not in _LOADED:
        _LOADED[key] = (target_tok, await trio.to_thread.run_sync(load_draft_shard, spec, target_tok))
    return _LOADED[key][1]


def head_pick(sampling: dict[str, Any]) -> Pick:
    """Choose a draft as the head samples the token at ``pos`` (``node/server/session.sample_token``)."""
    seed = int(sampling.get("seed") or 0)

    def pick(logits: torch.Tensor, pos: int) -> int:
        params = SamplingParams.from_dict({**sampling, "seed": step_seed(seed, pos), "max_new_tokens": 1})
        return Sampler(params).sample(logits)
    return pick


class Speculation:
    """Drafter, adaptive k and counts of one generation."""

    def __init__(self, k_max: int = 8, draft: Shard | None = None) -> None:
        self.draft_shard = draft
        self.drafter: Any = PromptLookup()
        self.adapt = AdaptiveK(k_min=1, k_max=max(1, k_max), k=min(4, max(1, k_max)))
        self.stats = SpecStats()

    @classmethod
    async def create(cls, options: Any, target_tok: Any) -> "Speculation":
        """For ``ClientOptions``: prompt lookup, or the local ``options.draft_model``."""
        draft = await load_draft(options.draft_model, target_tok) if options.draft_model else None
        return cls(options.draft_k_max, draft)

    def _drafter(self, gen: Any) -> Any:
        if self.draft_shard is not None and not isinstance(self.drafter, DraftModel):
            max_length = len(gen.prompt_ids) + gen.request.params.max_new_tokens + self.adapt.k_max + 1
            self.drafter = DraftModel(self.draft_shard, max_length, head_pick(gen.sampling),
                                      vocab=gen.tok.vocab_size)
        return self.drafter

    async def _draft(self, gen: Any, k: int) -> list[int]:
        drafter, tokens = self._drafter(gen), gen.prompt_ids + gen.token_ids
        if isinstance(drafter, DraftModel):
            return await trio.to_thread.run_sync(drafter.draft, tokens, k)
        return drafter.draft(tokens, k)

    async def run(self, gen: Any, sess: PipelineSession, first: StepResult) -> None:
        """Drive ``gen`` (a ``PipelineGeneration``) on ``sess`` until its generation ends. With
        verification (``gen.verifier``) each answered pass is handed to it with the rows it kept."""
        v = gen.verifier
        if v is not None:
            v.answered(sess.last_step)
        if not await gen._take(first):
            return
        max_new = gen.request.params.max_new_tokens
        while True:
            n = len(gen.token_ids)
            pos = len(gen.prompt_ids) + n - 1  # where the last kept token goes in every cache
            drafts = await self._draft(gen, min(self.adapt.k, max_new - n))
            res = await sess.step(torch.tensor([[gen.token_ids[-1]] + drafts], dtype=torch.long), pos, verify=True)
            targets = list(res.tokens or [])
            if len(targets) != len(drafts) + 1:  # a hostile or broken head: fail over, never raise to the user
                raise HopFailed(sess.hops[-1].peer_id, f"answered a verify pass of {len(drafts) + 1} positions "
                                                       f"with {len(targets)} tokens")
            a = accept_exact(drafts, targets)
            self.stats.passes += 1
            if drafts:
                self.stats.proposed += len(drafts)
                self.stats.accepted += a
                self.adapt.update(len(drafts), a)
            if v is not None:
                v.keep(sess.last_step, a + 1)
                v.answered(sess.last_step)
            for i, t in enumerate(drafts[:a] + [targets[a]]):
                if not await gen._take(StepResult(t, None, res.timings if i == 0 else [])):
                    return

    def close(self) -> None:
        if isinstance(self.drafter, DraftModel):
            self.drafter.free()

    def summary(self) -> dict[str, Any]:
        s = self.stats
        out = {"passes": s.passes, "proposed": s.proposed, "accepted": s.accepted,
               "acceptance": round(s.acceptance, 4),
               "tokens_per_pass": round((s.accepted + s.passes) / s.passes, 3) if s.passes else 0.0}
        if isinstance(self.drafter, DraftModel):
            out["draft_forwards"] = self.drafter.forwards
        return out
