"""The comparing judge (default) and the screen wrapper every judge runs behind.

``PairwiseJudge`` shows the judge's model the question and two answers and reads the
probabilities of the two choice tokens ("A", "B") as the next token. It asks in both orders and
averages, so a model that always says "A" expresses no preference: ``P(a > b) = (P_A(a, b) +
P_B(b, a)) / 2`` with each ``P`` renormalized over the two choice tokens. Within ``margin`` of 1/2
(0.1: a lean under 60:40 is no verdict) the verdict falls to ``tiebreak(prompt, answer)`` (e.g. the
mean token log-likelihood), else a tie. A model too small for the A/B question (SmolLM2-135M)
thus judges by likelihood behind the screens; one that can answer it judges by comparison.
The model call is torch-free here: ``choice_logprobs(texts) -> [(logp_A, logp_B), ...]`` takes a
batch of judging texts, so one round's comparisons cost one batched forward.

``ScreenedJudge`` puts the deterministic screens (``screens.py``) in front of any judge: an
unscreened answer beats a screened one without asking the model; two screened answers (a round
where nothing passed) go to the judge like two clean ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from swarmlm.consensus.judging import Judge, Verdict

PAIRWISE_TEMPLATE = (
    "Which answer to the question is correct? Reply with the letter A or B.\n\n"
    "Question: {prompt}\n\nAnswer A: {a}\n\nAnswer B: {b}\n\nThe correct answer is"
)
MAX_SHOWN_CHARS = 1200  # each answer is cut to this in the judging text (bounded prompt size)

ChoiceFn = Callable[[Sequence[str]], Sequence[tuple[float, float]]]


def pairwise_text(prompt: str, a: str, b: str) -> str:
    return PAIRWISE_TEMPLATE.format(prompt=prompt.strip()[:MAX_SHOWN_CHARS], a=a.strip()[:MAX_SHOWN_CHARS],
                                    b=b.strip()[:MAX_SHOWN_CHARS])


def _p_first(la: float, lb: float) -> float:
    """P(first choice) renormalized over the two choice tokens."""
    d = lb - la
    return 1.0 / (1.0 + math.exp(min(50.0, max(-50.0, d))))


@dataclass
class PairwiseJudge:
    choice_logprobs: ChoiceFn
    tiebreak: Callable[[str, str], float] | None = None
    # A verdict needs the judge to lean at least 60:40, averaged over both orders. SmolLM2-135M
    # leans within ~5 points of even on 90% of pairs (median 1.8), and its leanings pick worse than its likelihood
    # does: on 60 labeled questions (docs/BENCHMARKS.md) the winners were right 35% of the time with
    # margin 0, 42% with 0.02, 55% from 0.1 up, where the likelihood decides (majority vote: 48%).
    margin: float = 0.1
    tie_margin: float = 0.05
    _pref: dict[tuple[str, str, str], float] = field(default_factory=dict, repr=False)

    def preferences(self, prompt: str, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """``P(a better than b)`` for each pair, both orders averaged (one batched model call)."""
        need = sorted({(min(a, b), max(a, b)) for a, b in pairs if a != b and (prompt, a, b) not in self._pref
                       and (prompt, b, a) not in self._pref})
        if need:
            texts = [pairwise_text(prompt, a, b) for a, b in need] + [pairwise_text(prompt, b, a) for a, b in need]
            got = list(self.choice_logprobs(texts))
            if len(got) != len(texts):
                raise ValueError("the choice scorer returned the wrong number of results")
            for k, (a, b) in enumerate(need):
                fwd, back = got[k], got[len(need) + k]
                p = (_p_first(*fwd) + (1.0 - _p_first(*back))) / 2.0
                self._pref[(prompt, a, b)] = p
        out = []
        for a, b in pairs:
            if a == b:
                out.append(0.5)
            elif (prompt, a, b) in self._pref:
                out.append(self._pref[(prompt, a, b)])
            else:
                out.append(1.0 - self._pref[(prompt, b, a)])
        return out

    def _verdict(self, prompt: str, a: str, b: str, p: float) -> Verdict:
        if a == b:
            return "tie"
        if p > 0.5 + self.margin:
            return "A"
        if p < 0.5 - self.margin:
            return "B"
        if self.tiebreak is not None:
            diff = float(self.tiebreak(prompt, a)) - float(self.tiebreak(prompt, b))
            if diff > self.tie_margin:
                return "A"
            if diff < -self.tie_margin:
                return "B"
        return "tie"

    def judge_many(self, prompt: str, pairs: Sequence[tuple[str, str]]) -> list[Verdict]:
        prefs = self.preferences(prompt, pairs)
        return [self._verdict(prompt, a, b, p) for (a, b), p in zip(pairs, prefs)]

    def judge(self, prompt: str, answer_a: str, answer_b: str) -> Verdict:
        return self.judge_many(prompt, [(answer_a, answer_b)])[0]


def judge_many(judge: Judge, prompt: str, pairs: Sequence[tuple[str, str]]) -> list[Verdict]:
    """Every pair's verdict, batched when the judge can (``judge_many``), else one by one."""
    many = getattr(judge, "judge_many", None)
    if callable(many):
        return list(many(prompt, pairs))
    return [judge.judge(prompt, a, b) for a, b in pairs]


@dataclass
class ScreenedJudge:
    """``inner`` behind the screens: ``reasons`` maps a screened answer text to why."""

    inner: Judge
    reasons: Mapping[str, str]

    def judge_many(self, prompt: str, pairs: Sequence[tuple[str, str]]) -> list[Verdict]:
        out: list[Verdict | None] = []
        ask: list[tuple[str, str]] = []
        for a, b in pairs:
            ra, rb = bool(self.reasons.get(a)), bool(self.reasons.get(b))
            if a == b:
                out.append("tie")
            elif ra != rb:
                out.append("B" if ra else "A")
            else:
                out.append(None)
                ask.append((a, b))
        got = iter(judge_many(self.inner, prompt, ask) if ask else [])
        return [v if v is not None else next(got) for v in out]

    def judge(self, prompt: str, answer_a: str, answer_b: str) -> Verdict:
        return self.judge_many(prompt, [(answer_a, answer_b)])[0]
