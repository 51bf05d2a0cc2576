"""Audit questions generated from a secret seed: deterministic, labeled by computation, checkable by anyone."""

from __future__ import annotations

import os
from collections import Counter

import pytest

from swarmlm.consensus.auditgen import generated, question_for
from swarmlm.consensus.audits import question_by_id
from swarmlm.consensus.evalgen import CAPITALS, FACTS, UNITS, YESNO_FACTS
from swarmlm.consensus.evalset import is_correct, load_questions
from swarmlm.consensus.records import ConsensusError


def solve(text: str) -> str:
    """An independent solver of the generated templates (the label must agree with it)."""
    w = text.rstrip("?").split()
    capital_of = {f"What is the capital of {c}?": city for c, city in CAPITALS}
    fact = {q: a for q, a, _ in FACTS} | dict(YESNO_FACTS)
    if text in capital_of or text in fact:
        return capital_of.get(text) or fact[text]
    if text.startswith("Is ") and " the capital of " in text:
        city, country = text[3:-1].split(" the capital of ")
        return "yes" if (country, city) in CAPITALS else "no"
    if text.startswith("What is"):
        x, op, y = int(w[2]), w[3], int(w[-1])
        return str({"plus": x + y, "minus": x - y, "times": x * y, "divided": x // y}[op])
    if text.startswith("How many"):
        small, n, big = w[2], int(w[5]), w[6]
        return str(n * next(f for b, s, f in UNITS if (b, s) == (big, small)))
    if "even" in text:
        return "yes" if int(w[1]) % 2 == 0 else "no"
    return "yes" if int(w[1]) > int(w[4]) else "no"


def test_a_seed_stands_for_one_labeled_question_that_anyone_regenerates():
    seeds = [bytes([i]) * 16 for i in range(200)]
    qs = [generated(s) for s in seeds]
    assert [generated(s) for s in seeds] == qs  # deterministic
    for s, q in zip(seeds, qs):
        assert q.id == "gen-" + s.hex() and question_for(q.id) == q == question_by_id(q.id)
        assert q.answer == solve(q.question) and is_correct(q, f"The answer is {q.answer}.")
    kinds = Counter(q.category for q in qs)
    assert set(kinds) == {"arithmetic", "units", "yes/no", "capitals", "facts"} and min(kinds.values()) >= 15
    yn = Counter(q.answer for q in qs if q.category == "yes/no")
    assert min(yn.values()) >= 10  # both answers occur
    shipped = {q.question for q in load_questions()}
    fresh = {generated(os.urandom(16)).question for _ in range(300)}
    assert len(fresh) > 150 and len(fresh - shipped) > 100  # mostly questions the public set does not hold


def test_malformed_ids_are_not_generated_questions():
    for bad in ("gen-", "gen-zz" + "0" * 30, "gen-" + "0" * 31, "gen-" + "0" * 34, "GEN-" + "0" * 32, "arith-000"):
        assert question_for(bad) is None
    assert question_by_id("arith-000").id == "arith-000"  # the shipped set still answers for its own ids
    with pytest.raises(ConsensusError, match="neither generated nor"):
        question_by_id("gen-" + "0" * 31)
    with pytest.raises(ValueError):
        generated(b"short")


def test_the_node_option_is_checked():
    from swarmlm.node.server.consensus import ConsensusOptions, ConsensusService

    assert ConsensusOptions().audit_questions == "generated"  # the default: questions nobody can look up
    ConsensusService(ConsensusOptions(audit_questions="shipped"))
    with pytest.raises(ConsensusError, match="audit_questions"):
        ConsensusService(ConsensusOptions(audit_questions="public"))
