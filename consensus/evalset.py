"""The shipped labeled question set and its programmatic answer checks.

``load_questions()`` reads ``consensus/data/questions.jsonl`` (package data; its source and how it
was made: ``consensus/evalgen.py``). Each ``Question`` has a ``kind``:

* ``number``: the first number of the answer's first sentence (digits, or a number word up to
  twenty) after its last "=", else the first that does not restate a number of the question,
  must equal it;
* ``yesno``: the first "yes" or "no" word of the answer must equal it;
* ``word``: the answer or one of its aliases must appear as whole words in the answer's first
  sentence, before any other answer of the set that the question does not name (so "Rome, not
  Paris" is wrong and "The capital of Egypt is Cairo" right).

``normalize`` turns a free-text answer into the short form majority voting counts (the number,
yes/no, the first known entity, else the first words), ``is_correct`` checks it against the label.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

KINDS = ("number", "yesno", "word")
MAX_QUESTIONS = 10_000

NUMBER_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}
_NUM = re.compile(r"-?\d[\d,]*(?:\.\d+)?|\b(?:" + "|".join(NUMBER_WORDS) + r")\b", re.IGNORECASE)
_YESNO = re.compile(r"\b(yes|no)\b", re.IGNORECASE)
_WORDS = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class Question:
    id: str
    category: str
    kind: str
    question: str
    answer: str
    aliases: tuple[str, ...] = ()

    def to_obj(self) -> dict[str, Any]:
        return {"id": self.id, "category": self.category, "kind": self.kind, "question": self.question,
                "answer": self.answer, "aliases": list(self.aliases)}

    @classmethod
    def from_obj(cls, obj: Any) -> "Question":
        if not isinstance(obj, dict) or set(obj) != {"id", "category", "kind", "question", "answer", "aliases"}:
            raise ValueError("a question is a map of id, category, kind, question, answer, aliases")
        vals = [obj[k] for k in ("id", "category", "kind", "question", "answer")]
        if not all(isinstance(v, str) and v for v in vals) or obj["kind"] not in KINDS:
            raise ValueError(f"bad question {obj.get('id')!r}")
        if not isinstance(obj["aliases"], list) or not all(isinstance(a, str) and a for a in obj["aliases"]):
            raise ValueError(f"bad aliases in question {obj['id']!r}")
        return cls(*vals, tuple(obj["aliases"]))


def parse_questions(text: str) -> list[Question]:
    out = [Question.from_obj(json.loads(line)) for line in text.splitlines() if line.strip()]
    if len(out) > MAX_QUESTIONS or len({q.id for q in out}) != len(out):
        raise ValueError("question ids must be unique (and at most 10000 questions)")
    return out


@lru_cache(maxsize=1)
def load_questions() -> tuple[Question, ...]:
    """The shipped set, in file order."""
    text = resources.files("swarmlm.consensus").joinpath("data/questions.jsonl").read_text("utf-8")
    return tuple(parse_questions(text))


def _words(text: str) -> list[str]:
    return _WORDS.findall(text.lower())


def _numbers(text: str) -> list[str]:
    out = []
    for m in _NUM.finditer(text):
        tok = m.group(0).lower().replace(",", "")
        out.append(str(NUMBER_WORDS[tok]) if tok in NUMBER_WORDS else (tok[:-2] if tok.endswith(".0") else tok))
    return out


def _first_sentence(text: str) -> str:
    return re.split(r"(?<=[.!?])\s|\n", text.strip(), maxsplit=1)[0]


@lru_cache(maxsize=1)
def _entities() -> tuple[tuple[str, ...], ...]:
    """Every word answer (and alias) of the shipped set, as word tuples, longest first."""
    names = {tuple(_words(x)) for q in load_questions() if q.kind == "word" for x in (q.answer,) + q.aliases}
    return tuple(sorted((n for n in names if n), key=lambda n: (-len(n), n)))


def _find(words: list[str], name: tuple[str, ...]) -> int:
    n = len(name)
    for i in range(len(words) - n + 1):
        if tuple(words[i:i + n]) == name:
            return i
    return -1


def normalize(q: Question, text: str) -> str:
    """The short form of an answer that majority voting groups by ("" for no answer)."""
    if q.kind == "number":
        sent = _first_sentence(text)
        if "=" in sent:  # "6 * 100 = 600 centimeters": the result follows the last equals sign
            after = _numbers(sent.rsplit("=", 1)[1])
            if after:
                return after[0]
        nums = _numbers(sent)
        for n in _numbers(q.question):  # "3 + 2 = 5": the operands restate the question
            if n in nums and len(nums) > 1:
                nums.remove(n)
        return nums[0] if nums else ""
    if q.kind == "yesno":
        m = _YESNO.search(text)
        return m.group(1).lower() if m else ""
    words = _words(_first_sentence(text))
    asked = _words(q.question)
    names = _entities() + tuple(tuple(_words(a)) for a in (q.answer,) + q.aliases)
    found = [(i, name) for name in names if _find(asked, name) < 0 and (i := _find(words, name)) >= 0]
    if found:
        i, name = min(found, key=lambda f: (f[0], -len(f[1])))
        return " ".join(name)
    return " ".join(words[:6])


def is_correct(q: Question, text: str) -> bool:
    got = normalize(q, text)
    if q.kind != "word":
        return got == q.answer.lower()
    return got in {" ".join(_words(x)) for x in (q.answer,) + q.aliases}


def prompt_of(q: Question) -> str:
    """The user message the evaluation sends for a question."""
    hint = {"number": "Answer with a number.", "yesno": "Answer yes or no."}.get(q.kind, "Answer in a few words.")
    return f"{q.question} {hint}"
