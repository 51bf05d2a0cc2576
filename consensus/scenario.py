"""Scripted, deterministic consensus scenarios: identities, calibration records, signed round histories.

Used by the tests (reputation determinism, the Sybil test) and handy for demos of the node: every
round runs through the real state machine (``local.run_local_round``) and yields signed records.
Judges score the fixed answers of ``QUALITY``; ``Contrarian`` is a colluding adversary.
"""

from __future__ import annotations

from swarmlm.consensus.calibration import answer_challenge, generate_puzzles, grade_challenge, issue_challenge
from swarmlm.consensus.judging import LogLikelihoodJudge
from swarmlm.consensus.local import run_local_round
from swarmlm.consensus.reputation import ReputationState
from swarmlm.consensus.round import Finished
from swarmlm.crypto.identity import Identity

COORD = Identity.from_seed(b"\xc0" * 32)
EXAMINER = Identity.from_seed(b"\xe0" * 32)
QUALITY = {"Paris": 3.0, "Paris, France": 2.5, "Lyon": 1.0, "Marseille": 0.5, "Berlin": 0.0}


def ident(tag: str, i: int) -> Identity:
    return Identity.from_seed((tag.encode() + bytes([i])).ljust(32, b"\x00"))


def calibrate(node: Identity, at: float, right: bool = True) -> bytes:
    ch = issue_challenge(EXAMINER, node.peer_id, at, seed=f"cal-{node.peer_id}")
    puzzles = generate_puzzles(f"cal-{node.peer_id}", 10)
    answers = [p.answer if right else (p.answer + 1) % len(p.options) for p in puzzles]
    return grade_challenge(EXAMINER, ch, answer_challenge(node, ch, answers), at + 1.0).encode()


def honest() -> LogLikelihoodJudge:
    return LogLikelihoodJudge(lambda prompt, answer: QUALITY[answer], margin=0.0)


class Contrarian:
    """Prefers ``favourite``, otherwise the worse answer."""

    def __init__(self, favourite: str = "Berlin") -> None:
        self.favourite = favourite

    def judge(self, prompt: str, a: str, b: str) -> str:
        if a == b:
            return "tie"
        if self.favourite in (a, b):
            return "A" if a == self.favourite else "B"
        return "A" if QUALITY[a] < QUALITY[b] else "B"


def history(nodes: list[Identity], rounds: int, t0: float = 10_000.0, bad: Identity | None = None,
            state: ReputationState | None = None, coordinator: Identity = COORD,
            answering: int = 5, step: float = 100.0) -> list[bytes]:
    """Signed records of ``rounds`` rounds among ``nodes`` (plus an optional contrarian judge).

    The first ``answering`` nodes (rotating) answer, every node judges; round ``r`` starts at
    ``t0 + step * r``.
    """
    answers = ["Paris", "Lyon", "Paris, France", "Marseille", "Berlin"]
    out = []
    for r in range(rounds):
        t = t0 + step * r
        judges = {n: honest() for n in nodes}
        if bad is not None:
            judges[bad] = Contrarian()
        weights = {j.peer_id: 1.0 for j in judges} if state is None else state.round_weights(
            [j.peer_id for j in judges], t)
        shift = r % len(nodes)
        rotated = nodes[shift:] + nodes[:shift]
        cand = {n: answers[i % len(answers)] for i, n in enumerate(rotated[:answering])}
        _, log = run_local_round(coordinator, f"question {r}", cand, judges, weights, now=t, seed=f"h{r}-{t0}")
        out.append(next(a for a in log if isinstance(a, Finished)).packet.envelope.encode())
    return out
