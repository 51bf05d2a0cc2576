"""The labeled evaluation of consensus with real answers and real judges (pure: models come in as callables).

``run_eval(questions, answer, judges)`` plays one round per question among ``len(judges)`` nodes:

1. ``answer(question) -> [(text, cut_off), ...]``: one candidate per node (in the bench, one model
   with a different sampling profile and seed per node, in one batched generation);
2. the screens (``screens.py``) mark degenerate candidates;
3. every node judges its seeded pairs (``pairs.assign_pairs``, never its own answer) with its
   ``Judge`` behind the screens, batched (``pairwise.judge_many``);
4. the aggregators decide, each scored against the label (``evalset.is_correct``):
   ``majority`` (plurality over normalized answers, empty ones left out, ties to the earliest node),
   ``bt`` (unweighted Bradley-Terry), ``bt_rep`` (BT weighted by the reputation the earlier questions
   built, the fold's own update rule ``ReputationState.apply_round``; with audits, the winner also
   weighs each author's prior from the earlier audits, ``consensus.priors``, as the node does),
   ``bt_rep_judges`` (the same without the priors), and every single node alone.

BT winners follow the round's rule: never a screened candidate while an unscreened one exists.
``degenerate_winner_share`` counts rounds where the winner is screened although an unscreened
candidate existed (0 by construction, checked); ``degenerate_top_share`` counts rounds where the
BT fit's strongest candidate is a screened one (what the rule prevented).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from swarmlm.consensus import bt
from swarmlm.consensus.evalset import Question, is_correct, normalize, prompt_of
from swarmlm.consensus.judging import Judge
from swarmlm.consensus.pairs import assign_pairs
from swarmlm.consensus.pairwise import ScreenedJudge, judge_many
from swarmlm.consensus.priors import author_priors, prior_pick
from swarmlm.consensus.reputation import AUDITED, ReputationParams, ReputationState
from swarmlm.consensus.screens import screen_all

AnswerFn = Callable[[Question], Sequence[tuple[str, bool]]]
ROUND_INTERVAL = 60.0


@dataclass
class QuestionOutcome:
    id: str
    correct: list[bool]  # per node
    majority: bool
    bt: bool
    bt_rep: bool
    bt_rep_judges: bool  # BT + reputation from the judges alone (no author prior)
    screened: dict[str, str]  # node -> reason
    degenerate_winner: bool
    degenerate_top: bool
    detail: dict[str, Any] = field(default_factory=dict)  # the round's inputs, for offline study (``--dump``)


@dataclass
class EvalResult:
    nodes: int
    outcomes: list[QuestionOutcome] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        n = len(self.outcomes)
        if n == 0:
            raise ValueError("no question was evaluated")

        def share(xs: Sequence[bool]) -> float:
            return round(sum(xs) / n, 4)

        per_node = [share([o.correct[i] for o in self.outcomes]) for i in range(self.nodes)]
        reasons = Counter(r for o in self.outcomes for r in o.screened.values())
        return {
            "questions": n, "nodes": self.nodes,
            "best_single_node_acc": max(per_node), "per_node_acc": per_node,
            "majority_acc": share([o.majority for o in self.outcomes]),
            "bt_acc": share([o.bt for o in self.outcomes]),
            "bt_rep_acc": share([o.bt_rep for o in self.outcomes]),
            "bt_rep_judges_only_acc": share([o.bt_rep_judges for o in self.outcomes]),
            "any_correct_acc": share([any(o.correct) for o in self.outcomes]),
            "degenerate_winner_share": share([o.degenerate_winner for o in self.outcomes]),
            "degenerate_top_share": share([o.degenerate_top for o in self.outcomes]),
            "screened_candidates": dict(sorted(reasons.items())),
            "screened_but_right": sum(o.correct[int(n.removeprefix("node"))] for o in self.outcomes for n in o.screened),
        }


def _eligible(cands: Sequence[str], screened: dict[str, str]) -> list[int]:
    return [i for i, c in enumerate(cands) if c not in screened] or list(range(len(cands)))


def _winner(fit: bt.BTResult, cands: Sequence[str], screened: dict[str, str]) -> str:
    return cands[max(_eligible(cands, screened), key=lambda i: (fit.strengths[i], i == fit.winner))]


def _majority(q: Question, texts: Sequence[str]) -> str:
    norms = [normalize(q, t) for t in texts]
    counts = Counter(x for x in norms if x)
    if not counts:
        return texts[0]
    top = max(counts.values())
    first = next(i for i, x in enumerate(norms) if counts.get(x) == top)
    return texts[first]


def run_eval(questions: Sequence[Question], answer: AnswerFn, judges: Sequence[Judge],
             progress: Callable[[int, QuestionOutcome], None] | None = None, *,
             reputation: str = "consensus", audit_every: int = 5) -> EvalResult:
    """``reputation="audits"`` is the node's default rule: standing only from known-answer audits;
    every ``audit_every``-th question is one (after its round the judges are scored against its
    label, ``ReputationState.apply_audit``), as if a coordinator had mixed it in unannounced."""
    names = [f"node{i}" for i in range(len(judges))]
    if len(names) < 3:
        raise ValueError("the evaluation needs at least 3 nodes (each judges the others' answers)")
    if reputation not in ("consensus", "audits") or audit_every < 1:
        raise ValueError("reputation must be consensus or audits, and audit_every at least 1")
    audits = reputation == "audits"
    state = ReputationState(ReputationParams(require_calibration=False, **(AUDITED if audits else {})))
    res = EvalResult(len(names))
    for k, q in enumerate(questions):
        got = list(answer(q))
        if len(got) != len(names):
            raise ValueError(f"expected {len(names)} answers, got {len(got)}")
        texts = [t for t, _ in got]
        by_node = dict(zip(names, texts))
        screened = screen_all(q.question, {n: (t, cut) for n, (t, cut) in zip(names, got)})
        reasons = {by_node[n]: r for n, r in screened.items()}
        prompt = prompt_of(q)
        votes: dict[str, list[tuple[str, str, str]]] = {}
        for name, judge in zip(names, judges):
            pairs = assign_pairs(q.id, name, names, exclude=[name])
            verdicts = judge_many(ScreenedJudge(judge, reasons), prompt, [(by_node[a], by_node[b]) for a, b in pairs])
            votes[name] = [(a, b, v) for (a, b), v in zip(pairs, verdicts)]
        plain = bt.aggregate(names, votes, {n: 1.0 for n in names})
        rep = state.apply_round(k * ROUND_INTERVAL, names, names, votes, round_id=q.id,
                                answer_keys=[normalize(q, t) or f"#{i}" for i, t in enumerate(texts)])
        rep = rep if rep is not None else plain
        w_plain, w_judges = _winner(plain, names, screened), _winner(rep, names, screened)
        priors = author_priors(state, names) if audits else {}
        w_rep = names[prior_pick(rep.strengths, names, priors, _eligible(names, screened))] if audits else w_judges
        if audits and k % audit_every == audit_every - 1:
            state.apply_audit(k * ROUND_INTERVAL, names, votes, {n: is_correct(q, by_node[n]) for n in names})
        clean = len(screened) < len(names)
        out = QuestionOutcome(
            q.id, [is_correct(q, t) for t in texts], is_correct(q, _majority(q, texts)),
            is_correct(q, by_node[w_plain]), is_correct(q, by_node[w_rep]), is_correct(q, by_node[w_judges]), screened,
            clean and (w_plain in screened or w_rep in screened),
            clean and (names[plain.winner] in screened or names[rep.winner] in screened),
            {"texts": texts, "norms": [normalize(q, t) for t in texts], "screened": sorted(screened),
             "strengths": [float(x) for x in rep.strengths], "plain_strengths": [float(x) for x in plain.strengths],
             "priors": [priors[n] for n in names] if audits else [],
             "audit": audits and k % audit_every == audit_every - 1})
        res.outcomes.append(out)
        if progress is not None:
            progress(k, out)
    return res
