"""Audit questions nobody can recognise: generated from a secret seed, revealed after the round.

The shipped labeled set is public, so a colluder that checks each prompt against it knows an audit
when it sees one and behaves there (docs/CONSENSUS.md, *Audits*). A coordinator therefore draws
its audit questions from 16 random bytes of its own: the seed picks a kind and its content, with
the templates, ranges and tables of the shipped set (``evalgen``): arithmetic, a unit conversion
or a yes/no question on numbers (labels computed), or a capital, a simple fact or a yes/no
question from the hand-checked tables (labels from the table). The question id is ``gen-`` + the seed
in hex; it is revealed in the signed ``AuditRecord`` only after the round, and anyone regenerates
the question and its label from it (``question_for``), so nothing but the id needs trusting.
Before the reveal, a generated question looks like any user's question of these kinds (about
10^5 computed ones, and every row of the tables): a colluder can only behave on all of them.
"""

from __future__ import annotations

import hashlib
import re

from swarmlm.consensus.evalgen import CAPITALS, FACTS, YESNO_FACTS, arithmetic_item, compare_item, unit_item
from swarmlm.consensus.evalset import Question

PREFIX = "gen-"
SEED_BYTES = 16
_ID = re.compile(rf"^{PREFIX}([0-9a-f]{{{2 * SEED_BYTES}}})$")
# the share of each kind among generated questions (out of 16): computed ones, then ones from the tables
KINDS = ("arithmetic",) * 4 + ("units",) * 2 + ("number yes/no",) * 2 + ("capital",) * 3 + ("fact",) * 3 + \
    ("capital yes/no", "fact yes/no")


def _draw(seed: bytes, i: int) -> int:
    return int.from_bytes(hashlib.sha256(b"swarmlm-audit-question-v1/" + seed + bytes([i])).digest()[:8], "big")


def generated(seed: bytes) -> Question:
    """The question a seed stands for (deterministic)."""
    if len(seed) != SEED_BYTES:
        raise ValueError(f"an audit seed is {SEED_BYTES} bytes, got {len(seed)}")
    pick, a, b = _draw(seed, 0), _draw(seed, 1), _draw(seed, 2)
    qid = PREFIX + seed.hex()
    kind = KINDS[pick % len(KINDS)]
    if kind == "arithmetic":
        return Question(qid, "arithmetic", "number", *arithmetic_item((pick >> 8) % 4, a, b))
    if kind == "units":
        return Question(qid, "units", "number", *unit_item((pick >> 8) % 1000, a))
    if kind == "number yes/no":
        return Question(qid, "yes/no", "yesno", *compare_item(bool((pick >> 8) % 2), a, b))
    if kind == "capital":
        country, city = CAPITALS[a % len(CAPITALS)]
        return Question(qid, "capitals", "word", f"What is the capital of {country}?", city)
    if kind == "fact":
        q, ans, aliases = FACTS[a % len(FACTS)]
        return Question(qid, "facts", "number" if ans.isdigit() else "word", q, ans, tuple(aliases))
    if kind == "capital yes/no":  # the country's own capital for an even draw, another city for an odd one
        i = a % len(CAPITALS)
        country, city = CAPITALS[i]
        if b % 2:
            city = CAPITALS[(i + 1 + (b >> 1) % (len(CAPITALS) - 1)) % len(CAPITALS)][1]
        return Question(qid, "yes/no", "yesno", f"Is {city} the capital of {country}?", "no" if b % 2 else "yes")
    q, ans = YESNO_FACTS[a % len(YESNO_FACTS)]
    return Question(qid, "yes/no", "yesno", q, ans)


def question_for(qid: str) -> Question | None:
    """The generated question of a ``gen-`` id, or None if ``qid`` is not one (malformed ids too)."""
    m = _ID.match(qid) if isinstance(qid, str) else None
    return generated(bytes.fromhex(m.group(1))) if m else None
