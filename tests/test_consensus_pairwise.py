"""The pairwise judge: both orders asked and averaged, position bias cancelled, tie-breaker, screens."""

from __future__ import annotations

import math

from swarmlm.consensus.pairwise import PairwiseJudge, ScreenedJudge, judge_many, pairwise_text


def fake_model(quality: dict[str, float], bias: float = 0.0, calls: list | None = None):
    """P(choice) from answer quality plus a bias toward the letter A (position bias)."""

    def choice_logprobs(texts):
        if calls is not None:
            calls.append(len(texts))
        out = []
        for t in texts:
            a = t.split("Answer A: ")[1].split("\n\nAnswer B: ")[0]
            b = t.split("Answer B: ")[1].split("\n\nThe correct")[0]
            out.append((quality[a] + bias, quality[b]))
        return out

    return choice_logprobs


def test_order_swap_cancels_a_letter_bias():
    q = {"Paris": 2.0, "Lyon": 0.0}
    biased = PairwiseJudge(fake_model(q, bias=3.0))  # alone, the A slot always wins
    assert biased.judge("Capital?", "Paris", "Lyon") == "A"
    assert biased.judge("Capital?", "Lyon", "Paris") == "B"  # the better answer wins from slot B too
    p = biased.preferences("Capital?", [("Paris", "Lyon")])[0]
    want = (1 / (1 + math.exp(-5.0)) + 1 - 1 / (1 + math.exp(-1.0))) / 2
    assert abs(p - want) < 1e-9
    only_bias = PairwiseJudge(fake_model({"x": 0.0, "y": 0.0}, bias=5.0))
    assert only_bias.judge("?", "x", "y") == "tie" and only_bias.judge("?", "y", "x") == "tie"


def test_ties_fall_to_the_likelihood_tiebreaker_and_calls_are_batched():
    calls: list[int] = []
    j = PairwiseJudge(fake_model({"a": 0.0, "b": 0.0, "c": 2.0}, calls=calls),
                      tiebreak=lambda p, ans: {"a": -0.1, "b": -0.9, "c": -3.0}[ans])
    verdicts = j.judge_many("?", [("a", "b"), ("b", "a"), ("a", "c"), ("c", "b"), ("a", "a")])
    assert verdicts == ["A", "B", "B", "A", "tie"]  # c wins on the model despite a worse likelihood
    assert calls == [6]  # 3 unordered pairs x 2 orders, one call
    j.judge_many("?", [("b", "c")])
    assert calls == [6]  # cached
    assert "Answer A: x" in pairwise_text("q", "x", "y") and "Answer B: y" in pairwise_text("q", "x", "y")


def test_screened_answers_lose_without_asking_the_model():
    calls: list[int] = []
    inner = PairwiseJudge(fake_model({"good": 0.0, "other": 1.0, "loop": 9.0, "": 0.0}, calls=calls))
    j = ScreenedJudge(inner, {"loop": "repetition", "": "empty"})
    assert judge_many(j, "?", [("loop", "good"), ("good", "loop"), ("good", "other")]) == ["B", "A", "B"]
    assert calls == [2]  # only the unscreened pair reached the model
    assert judge_many(j, "?", [("loop", "")]) == ["A"]  # two screened answers: the model decides


def test_a_weak_preference_is_no_verdict_the_tiebreaker_decides():
    # a judge that leans 55:45 (a 135M model's A/B answers mostly lean within ~5 points of even,
    # and not toward the right answer): below the margin, the likelihood decides
    weak = fake_model({"right": 0.0, "wrong": 0.2})
    like = {"right": -0.5, "wrong": -2.0}
    j = PairwiseJudge(weak, tiebreak=lambda p, ans: like[ans])
    p = j.preferences("?", [("wrong", "right")])[0]
    assert 0.5 < p < 0.5 + j.margin
    assert j.judge("?", "wrong", "right") == "B" and j.judge("?", "right", "wrong") == "A"
    assert PairwiseJudge(weak).judge("?", "wrong", "right") == "tie"  # no tiebreaker: a tie
    strong = PairwiseJudge(fake_model({"right": 0.0, "wrong": 1.0}), tiebreak=lambda p, ans: like[ans])
    assert strong.judge("?", "wrong", "right") == "A"  # a clear preference (73:27) is the verdict
