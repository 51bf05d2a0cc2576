"""The shipped labeled question set: exactly the generator's output, and its answer checks."""

from __future__ import annotations

from importlib import resources

from swarmlm.consensus.evalgen import dump, generate
from swarmlm.consensus.evalset import is_correct, load_questions, normalize, prompt_of


def test_shipped_file_is_the_generators_output():
    text = resources.files("swarmlm.consensus").joinpath("data/questions.jsonl").read_text("utf-8")
    assert text == dump(generate())
    qs = load_questions()
    assert 200 <= len(qs) <= 1000 and len({q.id for q in qs}) == len(qs)
    assert {q.category for q in qs} == {"arithmetic", "units", "capitals", "facts", "yes/no"}


def test_arithmetic_labels_are_computed():
    for q in load_questions():
        if q.category == "arithmetic":
            words = q.question[len("What is "):-1].split()  # "3 plus 2", "25 divided by 5"
            x, op, y = int(words[0]), words[1], int(words[-1])
            want = {"plus": x + y, "minus": x - y, "times": x * y, "divided": x // y}[op]
            assert q.answer == str(want)


def test_checks_accept_right_answers_and_refuse_wrong_ones():
    by_id = {q.id: q for q in load_questions()}
    cap = by_id["capital-00"]  # France
    assert is_correct(cap, "The capital of France is Paris.") and not is_correct(cap, "Rome, not Paris.")
    assert not is_correct(cap, "") and normalize(cap, "Lyon is big") == "lyon is big"
    add = by_id["arith-000"]  # 3 plus 2
    assert is_correct(add, "3 + 2 = 5") and is_correct(add, "The answer is five.") and not is_correct(add, "3")
    yn = next(q for q in load_questions() if q.kind == "yesno" and q.answer == "no")
    assert is_correct(yn, "No, it is not.") and not is_correct(yn, "Yes.")
    assert prompt_of(add).endswith("Answer with a number.")
