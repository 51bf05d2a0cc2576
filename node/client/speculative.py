"""Speculative decoding through the pipeline (the client's side of it).

``Speculation.run(gen, sess, first)`` replaces a generation's token-by-token loop: after the prompt's
answer it drafts up to k tokens by prompt lookup (``models.speculative.PromptLookup``), sends the last
token and the drafts as one step of k+1 positions (``PipelineSession.step(verify=True)``: every hop
first drops its cached positions from ``pos`` on, so the rejected drafts of the previous pass vanish,
then computes the k+1 positions as one multi-token step in its batch scheduler), and keeps the drafts
up to the first that differs from the head's token at that position, then the head's token there.
The head samples each position with the per-position seed (``wire.step_seed``), so greedy and seeded
output are exactly those of plain decoding. k adapts to the acceptance rate (``AdaptiveK``).
Failover is unchanged: the generation replays the kept tokens on the new route and calls ``run``
again (the statistics and k carry over).
"""

from __future__ import annotations

from typing import Any

import torch

from swarmlm.models.speculative import AdaptiveK, PromptLookup, SpecStats, accept_exact
from swarmlm.node.client.session import PipelineSession, StepResult


class Speculation:
    """Drafter, adaptive k and counts of one generation."""

    def __init__(self, k_max: int = 8) -> None:
        self.drafter = PromptLookup()
        self.adapt = AdaptiveK(k_min=1, k_max=max(1, k_max), k=min(4, max(1, k_max)))
        self.stats = SpecStats()

    async def run(self, gen: Any, sess: PipelineSession, first: StepResult) -> None:
        """Drive ``gen`` (a ``PipelineGeneration``) on ``sess`` until its generation ends."""
        if not await gen._take(first):
            return
        max_new = gen.request.params.max_new_tokens
        while True:
            n = len(gen.token_ids)
            pos = len(gen.prompt_ids) + n - 1  # where the last kept token goes in every cache
            drafts = self.drafter.draft(gen.prompt_ids + gen.token_ids, min(self.adapt.k, max_new - n))
            res = await sess.step(torch.tensor([[gen.token_ids[-1]] + drafts], dtype=torch.long), pos, verify=True)
            targets = list(res.tokens or [])
            a = accept_exact(drafts, targets)
            self.stats.passes += 1
            if drafts:
                self.stats.proposed += len(drafts)
                self.stats.accepted += a
                self.adapt.update(len(drafts), a)
            for i, t in enumerate(drafts[:a] + [targets[a]]):
                if not await gen._take(StepResult(t, None, res.timings if i == 0 else [])):
                    return

    def summary(self) -> dict[str, Any]:
        s = self.stats
        return {"passes": s.passes, "proposed": s.proposed, "accepted": s.accepted,
                "acceptance": round(s.acceptance, 4),
                "tokens_per_pass": round((s.accepted + s.passes) / s.passes, 3) if s.passes else 0.0}
