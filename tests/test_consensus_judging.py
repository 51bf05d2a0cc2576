"""Judging backends: the Protocol, the log-likelihood judge and the prompted judge."""

from __future__ import annotations

import pytest

from swarmlm.consensus.judging import Judge, LogLikelihoodJudge, PromptJudge, judging_prompt, parse_verdict


def test_log_likelihood_judge_compares_scores_with_a_tie_margin():
    scores = {"good": -0.5, "bad": -2.0, "close": -0.52}
    seen = []

    def score(prompt, answer):
        seen.append(prompt)
        return scores[answer]

    j = LogLikelihoodJudge(score, margin=0.05)
    assert isinstance(j, Judge)
    assert j.judge("q", "good", "bad") == "A"
    assert j.judge("q", "bad", "good") == "B"
    assert j.judge("q", "good", "close") == "tie"
    n = len(seen)
    assert j.judge("q", "same", "same") == "tie" and len(seen) == n  # no model call for equal answers
    assert set(seen) == {"q"}


@pytest.mark.parametrize("reply,verdict", [
    ("A", "A"), (" b.", "B"), ("**B**", "B"), ("Tie", "tie"), ("Answer A is better", "A"),
    ("I cannot decide", "tie"), ("", "tie"),
])
def test_parse_verdict(reply, verdict):
    assert parse_verdict(reply) == verdict


def test_prompt_judge_builds_the_judging_prompt():
    prompts = []

    def generate(text):
        prompts.append(text)
        return " B\n"

    j = PromptJudge(generate)
    assert isinstance(j, Judge)
    assert j.judge("2+2?", "5", "4") == "B"
    assert prompts == [judging_prompt("2+2?", "5", "4")]
    assert "Answer A:\n5" in prompts[0] and "Answer B:\n4" in prompts[0] and prompts[0].endswith("Verdict:")
