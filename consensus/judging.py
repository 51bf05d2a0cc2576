"""Pluggable judging backends: decide which of two answers to a prompt is better.

``Judge`` is the interface the node plugs its model into. Two implementations stay torch-free by
taking callables: ``LogLikelihoodJudge`` compares ``score(prompt, answer)`` (e.g. the mean token
log-likelihood of the answer under the judge's model) and ``PromptJudge`` asks a text generator
with a judging prompt and parses the verdict.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Literal, Protocol, runtime_checkable

Verdict = Literal["A", "B", "tie"]

JUDGING_TEMPLATE = (
    "You are judging two answers to the same question. Pick the answer that is more correct and more "
    "helpful.\n\nQuestion:\n{prompt}\n\nAnswer A:\n{a}\n\nAnswer B:\n{b}\n\n"
    "Reply with exactly one word: A, B, or tie.\nVerdict:"
)


@runtime_checkable
class Judge(Protocol):
    def judge(self, prompt: str, answer_a: str, answer_b: str) -> Verdict:
        """``"A"`` if the first answer is better, ``"B"`` if the second is, else ``"tie"``."""
        ...


@dataclass
class LogLikelihoodJudge:
    """Prefers the answer the judge's model finds more likely.

    ``score(prompt, answer)`` returns a length-normalised log-likelihood (higher is better);
    differences within ``margin`` are a tie. Identical answers are always a tie.
    """

    score: Callable[[str, str], float]
    margin: float = 0.05

    def judge(self, prompt: str, answer_a: str, answer_b: str) -> Verdict:
        if answer_a == answer_b:
            return "tie"
        diff = float(self.score(prompt, answer_a)) - float(self.score(prompt, answer_b))
        if diff > self.margin:
            return "A"
        if diff < -self.margin:
            return "B"
        return "tie"


def judging_prompt(prompt: str, answer_a: str, answer_b: str) -> str:
    return JUDGING_TEMPLATE.format(prompt=prompt.strip(), a=answer_a.strip(), b=answer_b.strip())


_VERDICT = re.compile(r"\b(tie|a|b)\b", re.IGNORECASE)


def parse_verdict(text: str) -> Verdict:
    """The first verdict word in a model's reply (``"Answer B"``, ``"b."``, ``"Tie"``); ``tie`` if none."""
    m = _VERDICT.search(text.replace("*", " "))
    if not m:
        return "tie"
    word = m.group(1).lower()
    return "tie" if word == "tie" else ("A" if word == "a" else "B")


@dataclass
class PromptJudge:
    """Asks an LLM: ``generate(prompt_text) -> completion`` (greedy, a few tokens is enough)."""

    generate: Callable[[str], str]

    def judge(self, prompt: str, answer_a: str, answer_b: str) -> Verdict:
        if answer_a == answer_b:
            return "tie"
        return parse_verdict(self.generate(judging_prompt(prompt, answer_a, answer_b)))
