"""Calibration: generated checkable puzzles, grading, and signed records anyone can re-grade."""

from __future__ import annotations

import dataclasses

import pytest

from swarmlm.consensus.calibration import (CalibrationAnswers, CalibrationError, CalibrationRecord, Puzzle,
                                           answer_challenge, generate_puzzles, grade, grade_challenge,
                                           issue_challenge, parse_choice, pass_mark, verify_calibration)
from swarmlm.consensus.records import ConsensusError, open_as
from swarmlm.crypto.identity import Identity

EXAMINER = Identity.from_seed(b"\xe1" * 32)
SUBJECT = Identity.from_seed(b"\x5b" * 32)


def test_puzzles_are_deterministic_varied_and_checkable():
    a = generate_puzzles("seed-1", 20)
    assert a == generate_puzzles("seed-1", 20)
    assert a != generate_puzzles("seed-2", 20)
    assert len({p.question for p in a}) >= 15  # small families (conditionals) may repeat
    for p in a:
        assert isinstance(p, Puzzle) and 0 <= p.answer < len(p.options) and len(set(p.options)) == len(p.options)
        assert "A) " in p.prompt() and p.prompt().endswith("Answer:")
    # the keys really are right: recompute a few kinds independently
    a = generate_puzzles("seed-1", 100)
    q = next(p for p in a if p.question.startswith("What is") and "+" in p.question)
    x, y = (int(t) for t in q.question[len("What is "):-1].split(" + "))
    assert q.options[q.answer] == str(x + y)
    letters = next(p for p in a if p.question.startswith("How many times"))
    letter, word = letters.question.split('"')[1], letters.question.split('"')[3]
    assert letters.options[letters.answer] == str(word.count(letter))


def test_grading_and_parsing_replies():
    ps = generate_puzzles("g", 10)
    assert grade(ps, [p.answer for p in ps]) == 10
    assert grade(ps, [(p.answer + 1) % len(p.options) for p in ps]) == 0
    assert grade(ps, [p.answer for p in ps[:4]]) == 4  # missing answers are wrong
    assert parse_choice(" B) 42") == 1 and parse_choice("The answer is c.") == 2 and parse_choice("no idea") == -1
    assert pass_mark(10) == 7 and pass_mark(8) == 6


def _calibrate(right: int, now: float = 100.0):
    ch = issue_challenge(EXAMINER, SUBJECT.peer_id, 0.0, seed="fixed", count=10)
    ps = generate_puzzles("fixed", 10)
    answers = [p.answer if i < right else (p.answer + 1) % len(p.options) for i, p in enumerate(ps)]
    return ch, grade_challenge(EXAMINER, ch, answer_challenge(SUBJECT, ch, answers), now)


def test_signed_record_passes_and_fails_and_re_grades():
    _, ok = _calibrate(8)
    rec = verify_calibration(ok.encode())
    assert rec.passed == 1 and rec.correct == 8 and rec.subject == SUBJECT.peer_id
    _, bad = _calibrate(5)
    assert verify_calibration(bad).passed == 0
    # an examiner who lies about the grade is caught by anyone re-grading
    lie = dataclasses.replace(open_as(CalibrationRecord, bad), correct=9, passed=1)
    with pytest.raises(CalibrationError):
        verify_calibration(lie)
    # a record whose grade does not match its answer sheet is refused
    other = dataclasses.replace(open_as(CalibrationRecord, bad), answers=open_as(CalibrationRecord, ok).answers)
    with pytest.raises(CalibrationError):
        verify_calibration(other)
    forged_sheet = CalibrationAnswers(SUBJECT.peer_id, "someone-else", (0,) * 10).seal(SUBJECT).encode()
    with pytest.raises(CalibrationError):
        verify_calibration(dataclasses.replace(open_as(CalibrationRecord, ok), answers=(forged_sheet,)))


def test_challenge_rules():
    with pytest.raises(CalibrationError):
        issue_challenge(EXAMINER, EXAMINER.peer_id, 0.0)  # no self-examination
    with pytest.raises(CalibrationError):
        issue_challenge(EXAMINER, SUBJECT.peer_id, 0.0, count=3)  # too few questions to mean anything
    with pytest.raises(CalibrationError, match="deadline"):
        _calibrate(10, now=10_000.0)  # answered too late
    ch = issue_challenge(EXAMINER, SUBJECT.peer_id, 0.0)
    with pytest.raises(CalibrationError):
        answer_challenge(EXAMINER, ch, [0] * 10)  # not the subject
    with pytest.raises(CalibrationError):
        grade_challenge(SUBJECT, ch, answer_challenge(SUBJECT, ch, [0] * 10), 1.0)  # not the examiner
    with pytest.raises(ConsensusError):
        verify_calibration(b"garbage")
