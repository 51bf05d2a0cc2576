"""Audit questions nobody can recognise: generated from a secret seed, revealed after the round.

The shipped labeled set is public, so a colluder that checks each prompt against it knows an audit
when it sees one and behaves there (docs/CONSENSUS.md, *Audits*). A coordinator therefore draws
its audit questions from 16 random bytes of its own: the seed picks a kind (arithmetic, a unit
conversion, or a yes/no question on numbers) and the numbers, with the templates and ranges of
the shipped set (``evalgen``), and the label is computed. The question id is ``gen-`` + the seed
in hex; it is revealed in the signed ``AuditRecord`` only after the round, and anyone regenerates
the question and its label from it (``question_for``), so nothing but the id needs trusting.
Before the reveal, a generated question is one of about 10^5 arithmetic, unit and comparison
questions, like any user's: a colluder can only behave on all of them.
"""

from __future__ import annotations

import hashlib
import re

from swarmlm.consensus.evalgen import arithmetic_item, compare_item, unit_item
from swarmlm.consensus.evalset import Question

PREFIX = "gen-"
SEED_BYTES = 16
_ID = re.compile(rf"^{PREFIX}([0-9a-f]{{{2 * SEED_BYTES}}})$")
# one generated question in N of each kind: 4 arithmetic operations, 10 units, 2 yes/no forms
KINDS = ("arithmetic", "arithmetic", "arithmetic", "arithmetic", "units", "units", "yes/no", "yes/no")


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
    return Question(qid, "yes/no", "yesno", *compare_item(bool((pick >> 8) % 2), a, b))


def question_for(qid: str) -> Question | None:
    """The generated question of a ``gen-`` id, or None if ``qid`` is not one (malformed ids too)."""
    m = _ID.match(qid) if isinstance(qid, str) else None
    return generated(bytes.fromhex(m.group(1))) if m else None
