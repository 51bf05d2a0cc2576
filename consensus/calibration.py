"""Proof of capability: generated multiple-choice puzzles with checkable answers, and their records.

A node may judge only after passing calibration. An examiner (any other node) signs a challenge
naming a random seed; the questions are *generated* from that seed (arithmetic, sequences, order
logic, conditionals, letter counting), so nothing is downloaded and anyone can regenerate and
re-grade them. The subject signs its answers; the examiner signs a ``CalibrationRecord`` holding
both envelopes, the score and the verdict, which ``verify_calibration`` re-checks from scratch.
All randomness comes from SHA-256 of the seed, so every node generates the same questions.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from typing import ClassVar, Sequence

from swarmlm.consensus.records import ConsensusError, Record, open_as
from swarmlm.crypto.envelope import Envelope
from swarmlm.crypto.identity import Identity

LETTERS = "ABCD"
DEFAULT_COUNT = 10
MIN_COUNT = 8
PASS_SHARE = 0.7
_NAMES = ("Ana", "Ben", "Chloe", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "June")
_ADJ = (("older", "oldest", "youngest"), ("taller", "tallest", "shortest"), ("faster", "fastest", "slowest"))
_WORDS = ("strawberry", "banana", "committee", "mississippi", "bookkeeper", "parallel", "balloon", "address")
_CONDS = (("it rains", "the street is wet"), ("the alarm rings", "Tom wakes up"), ("the lamp is on", "the room is lit"))


class CalibrationError(ConsensusError):
    """A calibration challenge, answer sheet or record that does not check out."""


@dataclass(frozen=True)
class Puzzle:
    question: str
    options: tuple[str, ...]
    answer: int  # index into options

    def prompt(self) -> str:
        """The text put to a model: the question, lettered options, answer with one letter."""
        opts = "\n".join(f"{LETTERS[i]}) {o}" for i, o in enumerate(self.options))
        return f"{self.question}\n{opts}\nAnswer with the letter only.\nAnswer:"


class _Rng:
    """Portable deterministic integers from SHA-256(seed, counter)."""

    def __init__(self, seed: str) -> None:
        self.seed, self.n = seed, 0

    def below(self, k: int) -> int:
        self.n += 1
        h = hashlib.sha256(f"swarmlm-calibration-v1|{self.seed}|{self.n}".encode()).digest()
        return int.from_bytes(h[:8], "big") % k

    def pick(self, seq: Sequence):  # type: ignore[no-untyped-def]
        return seq[self.below(len(seq))]

    def shuffled(self, seq: Sequence) -> list:  # type: ignore[type-arg]
        out = list(seq)
        for i in range(len(out) - 1, 0, -1):
            j = self.below(i + 1)
            out[i], out[j] = out[j], out[i]
        return out


def _numeric(rng: _Rng, question: str, answer: int, near: Sequence[int]) -> Puzzle:
    wrong: list[int] = []
    for d in list(near) + [answer + k for k in (1, -1, 2, -2, 10, -10, 3, -3)]:
        if d != answer and d not in wrong:
            wrong.append(d)
    opts = rng.shuffled([answer] + wrong[:3])
    return Puzzle(question, tuple(str(o) for o in opts), opts.index(answer))


def _arithmetic(rng: _Rng) -> Puzzle:
    a, b = 10 + rng.below(90), 10 + rng.below(90)
    op = rng.below(3)
    if op == 0:
        return _numeric(rng, f"What is {a} + {b}?", a + b, [a + b + 10, a + b - 1])
    if op == 1:
        a, b = max(a, b), min(a, b)
        return _numeric(rng, f"What is {a} - {b}?", a - b, [a + b, a - b + 10])
    b = 2 + rng.below(8)
    return _numeric(rng, f"What is {a} x {b}?", a * b, [a + b, a * b + b])


def _sequence(rng: _Rng) -> Puzzle:
    start, step = rng.below(20), 2 + rng.below(9)
    seq = [start + step * i for i in range(4)]
    nxt = start + step * 4
    return _numeric(rng, f"What number comes next: {', '.join(map(str, seq))}, ?", nxt, [nxt + step, nxt - 1])


def _ordering(rng: _Rng) -> Puzzle:
    people = rng.shuffled(_NAMES)[:4]  # people[0] is the most <adj>
    comp, most, least = rng.pick(_ADJ)
    facts = rng.shuffled([f"{people[i]} is {comp} than {people[i + 1]}." for i in range(3)])
    ask_most = rng.below(2) == 0
    answer = people[0] if ask_most else people[3]
    opts = rng.shuffled(people)
    q = " ".join(facts) + f" Who is the {most if ask_most else least}?"
    return Puzzle(q, tuple(opts), opts.index(answer))


def _conditional(rng: _Rng) -> Puzzle:
    p, q = rng.pick(_CONDS)
    kind = rng.below(3)
    if kind == 0:  # modus ponens
        text, ans = f"If {p}, then {q}. It is true that {p}. Is it true that {q}?", "Yes"
    elif kind == 1:  # modus tollens
        text, ans = f"If {p}, then {q}. It is false that {q}. Is it true that {p}?", "No"
    else:  # affirming the consequent
        text, ans = f"If {p}, then {q}. It is true that {q}. Must it be true that {p}?", "Cannot tell"
    opts = rng.shuffled(["Yes", "No", "Cannot tell"])
    return Puzzle(text, tuple(opts), opts.index(ans))


def _letters(rng: _Rng) -> Puzzle:
    word = rng.pick(_WORDS)
    letter = rng.pick(sorted(set(word)))
    n = word.count(letter)
    return _numeric(rng, f'How many times does the letter "{letter}" appear in the word "{word}"?', n,
                    [n + 1, n - 1 if n > 1 else n + 2, n + 2])


_KINDS = (_arithmetic, _sequence, _ordering, _conditional, _letters)


def generate_puzzles(seed: str, count: int = DEFAULT_COUNT) -> list[Puzzle]:
    """``count`` puzzles from ``seed``, kinds in rotation; identical on every node."""
    rng = _Rng(seed)
    return [_KINDS[i % len(_KINDS)](rng) for i in range(count)]


_CHOICE = re.compile(r"\b([A-D])\b")


def parse_choice(text: str) -> int:
    """The option index in a model's reply (first standalone letter A-D), -1 if none."""
    m = _CHOICE.search(text.strip().upper())
    return LETTERS.index(m.group(1)) if m else -1


def grade(puzzles: Sequence[Puzzle], answers: Sequence[int]) -> int:
    """How many answers are right (missing answers are wrong)."""
    return sum(1 for p, a in zip(puzzles, answers) if a == p.answer)


def pass_mark(count: int, share: float = PASS_SHARE) -> int:
    return max(1, -(-int(round(share * count * 1000)) // 1000))


# -- signed records --------------------------------------------------------------------------

@dataclass(frozen=True)
class CalibrationChallenge(Record):
    DOMAIN: ClassVar[str] = "swarmlm/consensus/calibration-challenge/v1"
    AUTHOR: ClassVar[str] = "examiner"
    examiner: str
    subject: str
    seed: str
    count: int
    pass_mark: int
    issued_at: float
    deadline: float

    def check(self) -> None:
        if self.examiner == self.subject:
            raise CalibrationError("a node cannot examine itself")
        if not (MIN_COUNT <= self.count <= 200) or not (0 < self.pass_mark <= self.count):
            raise CalibrationError("calibration needs 8..200 questions and a pass mark within them")
        if self.deadline < self.issued_at:
            raise CalibrationError("calibration deadline before issue time")

    def puzzles(self) -> list[Puzzle]:
        return generate_puzzles(self.seed, self.count)


@dataclass(frozen=True)
class CalibrationAnswers(Record):
    DOMAIN: ClassVar[str] = "swarmlm/consensus/calibration-answers/v1"
    AUTHOR: ClassVar[str] = "subject"
    subject: str
    challenge_id: str
    answers: tuple[int, ...]


@dataclass(frozen=True)
class CalibrationRecord(Record):
    DOMAIN: ClassVar[str] = "swarmlm/consensus/calibration/v1"
    AUTHOR: ClassVar[str] = "examiner"
    examiner: str
    subject: str
    challenge: tuple[bytes, ...]  # one CalibrationChallenge envelope
    answers: tuple[bytes, ...]  # one CalibrationAnswers envelope
    correct: int
    passed: int  # 1 or 0
    graded_at: float


def issue_challenge(examiner: Identity, subject: str, now: float, *, count: int = DEFAULT_COUNT,
                    ttl: float = 600.0, seed: str | None = None) -> Envelope:
    ch = CalibrationChallenge(examiner.peer_id, subject, seed or os.urandom(16).hex(), count, pass_mark(count),
                              float(now), float(now) + ttl)
    ch.check()
    return ch.seal(examiner)


def answer_challenge(subject: Identity, challenge: Envelope | bytes, answers: Sequence[int]) -> Envelope:
    ch = open_as(CalibrationChallenge, challenge)
    if ch.subject != subject.peer_id:
        raise CalibrationError("this challenge is for another node")
    return CalibrationAnswers(subject.peer_id, ch.id, tuple(int(a) for a in answers)).seal(subject)


def grade_challenge(examiner: Identity, challenge: Envelope | bytes, answers: Envelope | bytes,
                    now: float) -> Envelope:
    """The examiner's signed verdict; answers after the deadline are refused."""
    ch_env = challenge if isinstance(challenge, Envelope) else Envelope.decode(challenge)
    an_env = answers if isinstance(answers, Envelope) else Envelope.decode(answers)
    ch = open_as(CalibrationChallenge, ch_env)
    if ch.examiner != examiner.peer_id:
        raise CalibrationError("only the examiner who issued a challenge grades it")
    if now > ch.deadline:
        raise CalibrationError("the answers came after the calibration deadline")
    an = _open_answers(ch, an_env)
    correct = grade(ch.puzzles(), an.answers)
    rec = CalibrationRecord(ch.examiner, ch.subject, (ch_env.encode(),), (an_env.encode(),), correct,
                            int(correct >= ch.pass_mark), float(now))
    return rec.seal(examiner)


def _open_answers(ch: CalibrationChallenge, env: Envelope | bytes) -> CalibrationAnswers:
    an = open_as(CalibrationAnswers, env)
    if an.subject != ch.subject or an.challenge_id != ch.id or len(an.answers) != ch.count:
        raise CalibrationError("the answer sheet does not belong to that challenge")
    return an


def verify_calibration(rec: CalibrationRecord | Envelope | bytes) -> CalibrationRecord:
    """Re-check a calibration record: signatures, deadline, and the grade from regenerated puzzles."""
    if not isinstance(rec, CalibrationRecord):
        rec = open_as(CalibrationRecord, rec)
    if len(rec.challenge) != 1 or len(rec.answers) != 1:
        raise CalibrationError("a calibration record holds one challenge and one answer sheet")
    ch = open_as(CalibrationChallenge, rec.challenge[0])
    if ch.examiner != rec.examiner or ch.subject != rec.subject:
        raise CalibrationError("calibration record and challenge disagree on who is who")
    if not (ch.issued_at <= rec.graded_at <= ch.deadline):
        raise CalibrationError("calibration graded outside the challenge's time window")
    an = _open_answers(ch, rec.answers[0])
    correct = grade(ch.puzzles(), an.answers)
    if correct != rec.correct or rec.passed != int(correct >= ch.pass_mark):
        raise CalibrationError("calibration record grade does not match the answers")
    return rec
