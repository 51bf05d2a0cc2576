"""The generator of the shipped labeled question set (``consensus/data/questions.jsonl``).

Source, documented: every question is written or generated here, nothing is downloaded. Arithmetic,
unit conversions and comparison yes/no questions are generated from SHA-256-derived numbers and
their answers are computed; capitals and simple facts come from the hand-written tables below
(common knowledge, checked by us). ``python -m swarmlm.consensus.evalgen > consensus/data/questions.jsonl``
rewrites the file; ``tests/test_consensus_evalset.py`` checks that the shipped file is exactly this
generator's output, so the labels cannot drift from their source.

The set aims at questions a 135M-parameter model gets right sometimes but not always: small and
two-digit arithmetic, well-known and less-known capitals, unit conversions, one-word facts, yes/no.
"""

from __future__ import annotations

import hashlib
import json
import sys
from typing import Iterator

from swarmlm.consensus.evalset import Question

SEED = "swarmlm-consensus-evalset-v1"

CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"),
    ("China", "Beijing"), ("Russia", "Moscow"), ("the United Kingdom", "London"), ("Egypt", "Cairo"),
    ("Canada", "Ottawa"), ("Australia", "Canberra"), ("Brazil", "Brasilia"), ("Argentina", "Buenos Aires"),
    ("Mexico", "Mexico City"), ("India", "New Delhi"), ("Portugal", "Lisbon"), ("Greece", "Athens"),
    ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Finland", "Helsinki"), ("Denmark", "Copenhagen"),
    ("Poland", "Warsaw"), ("Austria", "Vienna"), ("Ireland", "Dublin"), ("the Netherlands", "Amsterdam"),
    ("Belgium", "Brussels"), ("Switzerland", "Bern"), ("Turkey", "Ankara"), ("Kenya", "Nairobi"),
    ("South Korea", "Seoul"), ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"), ("Peru", "Lima"),
    ("Chile", "Santiago"), ("Colombia", "Bogota"), ("Cuba", "Havana"), ("Hungary", "Budapest"),
    ("the Czech Republic", "Prague"), ("Iran", "Tehran"), ("Iraq", "Baghdad"), ("Indonesia", "Jakarta"),
    ("the Philippines", "Manila"), ("New Zealand", "Wellington"), ("Nigeria", "Abuja"), ("Morocco", "Rabat"),
    ("Ukraine", "Kyiv"), ("Romania", "Bucharest"), ("Pakistan", "Islamabad"), ("Saudi Arabia", "Riyadh"),
    ("Israel", "Jerusalem"),
]

# (question, answer, aliases): one-word or number answers everybody agrees on
FACTS = [
    ("How many legs does a spider have?", "8", ()), ("How many legs does an insect have?", "6", ()),
    ("How many days are there in a week?", "7", ()), ("How many months are there in a year?", "12", ()),
    ("How many hours are there in a day?", "24", ()), ("How many minutes are there in an hour?", "60", ()),
    ("How many continents are there on Earth?", "7", ()), ("How many sides does a triangle have?", "3", ()),
    ("How many sides does a hexagon have?", "6", ()), ("How many sides does a square have?", "4", ()),
    ("How many planets are there in the solar system?", "8", ()), ("How many wheels does a bicycle have?", "2", ()),
    ("How many players are on a soccer team on the field?", "11", ()),
    ("How many days are there in a leap year?", "366", ()), ("How many letters are in the English alphabet?", "26", ()),
    ("At what temperature in degrees Celsius does water boil at sea level?", "100", ()),
    ("At what temperature in degrees Celsius does water freeze?", "0", ()),
    ("What is the largest planet in the solar system?", "Jupiter", ()),
    ("What planet is known as the Red Planet?", "Mars", ()),
    ("What is the closest star to the Earth?", "Sun", ("the sun",)),
    ("What gas do plants absorb from the air?", "carbon dioxide", ("co2",)),
    ("What is the chemical symbol for water?", "H2O", ()), ("What is the chemical symbol for gold?", "Au", ()),
    ("What color is the sky on a clear day?", "blue", ()), ("What color is grass?", "green", ()),
    ("What color do you get by mixing blue and yellow?", "green", ()),
    ("What is the largest ocean on Earth?", "Pacific", ()), ("What is the longest river in Africa?", "Nile", ()),
    ("What is the tallest mountain in the world?", "Everest", ()),
    ("Which animal is known as the king of the jungle?", "lion", ()),
    ("What is the largest mammal?", "blue whale", ("whale",)),
    ("What do bees make?", "honey", ()), ("What is frozen water called?", "ice", ()),
    ("Who wrote Romeo and Juliet?", "Shakespeare", ()), ("Who painted the Mona Lisa?", "Leonardo da Vinci",
                                                        ("da vinci", "leonardo")),
    ("In which country are the pyramids of Giza?", "Egypt", ()),
    ("What language is spoken in Brazil?", "Portuguese", ()), ("What language is spoken in Mexico?", "Spanish", ()),
    ("What is the opposite of hot?", "cold", ()), ("What is the opposite of up?", "down", ()),
]

# (statement as a yes/no question, answer)
YESNO_FACTS = [
    ("Is the Sun a star?", "yes"), ("Is the Moon a planet?", "no"), ("Do fish live in water?", "yes"),
    ("Can penguins fly?", "no"), ("Is ice colder than boiling water?", "yes"), ("Is a whale a fish?", "no"),
    ("Do spiders have eight legs?", "yes"), ("Is Tokyo in China?", "no"), ("Is water wet?", "yes"),
    ("Is the Pacific an ocean?", "yes"), ("Is a tomato a vegetable in botany?", "no"), ("Do cats bark?", "no"),
    ("Is gold a metal?", "yes"), ("Is Mars closer to the Sun than the Earth is?", "no"),
    ("Is a square a kind of rectangle?", "yes"), ("Does a week have ten days?", "no"),
]

UNITS = [  # (big unit, small unit, factor)
    ("meters", "centimeters", 100), ("kilometers", "meters", 1000), ("hours", "minutes", 60),
    ("minutes", "seconds", 60), ("kilograms", "grams", 1000), ("weeks", "days", 7), ("years", "months", 12),
    ("days", "hours", 24), ("liters", "milliliters", 1000), ("dozens", "items", 12),
]


def _draws(tag: str) -> Iterator[int]:
    i = 0
    while True:
        yield int.from_bytes(hashlib.sha256(f"{SEED}/{tag}/{i}".encode()).digest()[:8], "big")
        i += 1


def arithmetic_item(op: int, a: int, b: int) -> tuple[str, str]:
    """Question and answer of arithmetic kind ``op`` (0-3: plus, minus, times, divided by) from two draws."""
    if op == 0:
        x, y = 2 + a % 48, 2 + b % 48
        return f"What is {x} plus {y}?", str(x + y)
    if op == 1:
        x, y = 10 + a % 90, 1 + b % 9
        x, y = max(x, y), min(x, y)
        return f"What is {x} minus {y}?", str(x - y)
    if op == 2:
        x, y = 2 + a % 11, 2 + b % 9
        return f"What is {x} times {y}?", str(x * y)
    y, ans = 2 + a % 8, 2 + b % 9
    return f"What is {y * ans} divided by {y}?", str(ans)


def unit_item(unit: int, a: int) -> tuple[str, str]:
    """Question and answer converting a small number of ``UNITS[unit]``'s big unit to its small one."""
    big, small, f = UNITS[unit % len(UNITS)]
    n = 2 + a % 8
    return f"How many {small} are in {n} {big}?", str(n * f)


def compare_item(even: bool, a: int, b: int) -> tuple[str, str]:
    """A yes/no question on two numbers from draws: "is x an even number?" or "is x greater than y?"."""
    x, y = 1 + a % 99, 1 + b % 99
    if x == y:
        y += 1
    if even:
        return f"Is {x} an even number?", "yes" if x % 2 == 0 else "no"
    return f"Is {x} greater than {y}?", "yes" if x > y else "no"


def _arithmetic() -> list[Question]:
    out = []
    d = _draws("arith")
    for i in range(90):
        a, b = next(d), next(d)
        q, ans = arithmetic_item(i % 4, a, b)
        out.append(Question(f"arith-{i:03d}", "arithmetic", "number", q, ans))
    return out


def _units() -> list[Question]:
    d = _draws("units")
    return [Question(f"unit-{i:03d}", "units", "number", *unit_item(i, next(d))) for i in range(40)]


def _yesno() -> list[Question]:
    out = [Question(f"yn-fact-{i:02d}", "yes/no", "yesno", q, a) for i, (q, a) in enumerate(YESNO_FACTS)]
    d = _draws("yesno")
    for i in range(24):
        a, b = next(d), next(d)
        qid = f"yn-{'cmp' if i % 2 else 'even'}-{i:02d}"
        out.append(Question(qid, "yes/no", "yesno", *compare_item(not i % 2, a, b)))
    for i in range(20):  # "Is X the capital of Y?", true for even i, a wrong city for odd i
        country, city = CAPITALS[(7 * i) % len(CAPITALS)]
        if i % 2:
            city = CAPITALS[(7 * i + 3) % len(CAPITALS)][1]
        out.append(Question(f"yn-cap-{i:02d}", "yes/no", "yesno", f"Is {city} the capital of {country}?",
                            "no" if i % 2 else "yes"))
    return out


def generate() -> list[Question]:
    caps = [Question(f"capital-{i:02d}", "capitals", "word", f"What is the capital of {c}?", city)
            for i, (c, city) in enumerate(CAPITALS)]
    facts = [Question(f"fact-{i:02d}", "facts", "number" if a.isdigit() else "word", q, a, tuple(al))
             for i, (q, a, al) in enumerate(FACTS)]
    return _arithmetic() + _units() + caps + facts + _yesno()


def dump(questions: list[Question]) -> str:
    return "".join(json.dumps(q.to_obj(), ensure_ascii=False, sort_keys=True) + "\n" for q in questions)


if __name__ == "__main__":
    sys.stdout.write(dump(generate()))
