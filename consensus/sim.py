"""Seeded simulation of consensus rounds on multiple-choice questions (what the bench runs).

A swarm of ``pool`` nodes; each round ``k`` of them answer a question with ``options`` choices and
judge each other's answers on the real seeded pair assignment. Honest node ``i`` answers right with
probability ``answer_acc[i]`` (otherwise a random wrong option) and, shown a right and a wrong answer,
prefers the right one with probability ``judge_acc[i]``; two different wrong answers get a coin flip,
equal answers a tie. Malicious nodes collude: they all answer the same wrong option and, as judges,
always prefer it (and any wrong answer over the right one).

Three aggregators decide every round: plurality vote over the answers (majority), unweighted BT, and
BT weighted by the reputation ``ReputationState`` has learned from the earlier rounds (the same
update rule that ``compute_reputation`` folds over signed records). With ``warmup_rounds`` the
honest nodes first build reputation alone and the malicious ones join afterwards (an attack on an
established swarm); with 0 everyone starts fresh together (cold start).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from swarmlm.consensus import bt
from swarmlm.consensus.pairs import assign_pairs
from swarmlm.consensus.reputation import ReputationParams, ReputationState


@dataclass(frozen=True)
class SimConfig:
    rounds: int = 1000
    pool: int = 20
    k: int = 7
    options: int = 4
    malicious_share: float = 0.0
    answer_acc: tuple[float, float] = (0.3, 0.8)  # honest answer accuracy, uniform in this range
    judge_acc: tuple[float, float] = (0.6, 0.9)  # honest pairwise judging accuracy
    round_interval: float = 60.0
    pair_factor: int = 3
    warmup_rounds: int = 0  # honest-only rounds before the malicious nodes join (not scored)
    seed: int = 0


@dataclass
class SimResult:
    config: SimConfig
    majority_acc: float
    bt_acc: float
    bt_rep_acc: float
    bt_rep_acc_late: float  # over the second half of the rounds, once reputation has been learned
    best_node_acc: float  # accuracy of the best honest node answering alone (expected)
    mean_node_acc: float
    rep_honest: float  # mean final score of honest nodes
    rep_malicious: float  # mean final score of malicious nodes (nan without any)
    elapsed_s: float = 0.0
    per_round: list[tuple[bool, bool, bool]] = field(default_factory=list, repr=False)


def _vote(rng: np.random.Generator, malicious: bool, jacc: float, a: int, b: int, right: int, target: int) -> str:
    if a == b:
        return "tie"
    if malicious:
        if a == target or b == target:
            return "A" if a == target else "B"
        if a == right or b == right:
            return "B" if a == right else "A"
        return "A" if rng.random() < 0.5 else "B"
    if a == right or b == right:
        good = "A" if a == right else "B"
        return good if rng.random() < jacc else ("B" if good == "A" else "A")
    return "A" if rng.random() < 0.5 else "B"


def simulate(cfg: SimConfig) -> SimResult:
    """Run ``cfg.rounds`` rounds; deterministic for a given config."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    names = [f"n{i:03d}" for i in range(cfg.pool)]
    ans_acc = rng.uniform(*cfg.answer_acc, size=cfg.pool)
    jud_acc = rng.uniform(*cfg.judge_acc, size=cfg.pool)
    n_bad = int(round(cfg.malicious_share * cfg.pool))
    bad = np.zeros(cfg.pool, dtype=bool)
    bad[rng.choice(cfg.pool, size=n_bad, replace=False)] = True
    state = ReputationState(ReputationParams(require_calibration=False))
    per_round: list[tuple[bool, bool, bool]] = []
    honest_idx = np.flatnonzero(~bad)
    for r in range(cfg.warmup_rounds + cfg.rounds):
        warm = r < cfg.warmup_rounds
        right = int(rng.integers(cfg.options))
        target = (right + 1 + int(rng.integers(cfg.options - 1))) % cfg.options
        chosen = sorted((rng.choice(honest_idx, size=min(cfg.k, len(honest_idx)), replace=False) if warm
                         else rng.choice(cfg.pool, size=cfg.k, replace=False)).tolist())
        answers: dict[str, int] = {}
        for i in chosen:
            if bad[i]:
                answers[names[i]] = target
            elif rng.random() < ans_acc[i]:
                answers[names[i]] = right
            else:
                answers[names[i]] = (right + 1 + int(rng.integers(cfg.options - 1))) % cfg.options
        cands = [names[i] for i in chosen]  # one candidate per node: its name is its id
        counts = np.bincount([answers[c] for c in cands], minlength=cfg.options)
        top = np.flatnonzero(counts == counts.max())
        majority = int(top[rng.integers(len(top))])
        votes: dict[str, list[tuple[str, str, str]]] = {}
        for i in chosen:
            pairs = assign_pairs(f"sim-{cfg.seed}-{r}", names[i], cands, exclude=[names[i]], factor=cfg.pair_factor)
            votes[names[i]] = [(a, b, _vote(rng, bool(bad[i]), float(jud_acc[i]), answers[a], answers[b], right,
                                            target)) for a, b in pairs]
        plain = bt.aggregate(cands, votes, {c: 1.0 for c in cands})
        rep_fit = state.apply_round(r * cfg.round_interval, cands, cands, votes,
                                    answer_keys=[str(answers[c]) for c in cands])
        assert rep_fit is not None
        if not warm:
            per_round.append((majority == right, answers[cands[plain.winner]] == right,
                              answers[cands[rep_fit.winner]] == right))
    arr = np.array(per_round, dtype=float)
    late = arr[len(arr) // 2:]
    scores = state.scores()
    honest = [scores.get(names[i], 0.0) for i in range(cfg.pool) if not bad[i]]
    mal = [scores.get(names[i], 0.0) for i in range(cfg.pool) if bad[i]]
    honest_acc = ans_acc[~bad] if (~bad).any() else np.zeros(1)
    return SimResult(cfg, float(arr[:, 0].mean()), float(arr[:, 1].mean()), float(arr[:, 2].mean()),
                     float(late[:, 2].mean()), float(honest_acc.max()), float(honest_acc.mean()),
                     float(np.mean(honest)) if honest else float("nan"),
                     float(np.mean(mal)) if mal else float("nan"), time.perf_counter() - t0, per_round)


def fit_time_ms(candidates: int = 50, judges: int = 50, repeats: int = 20,
                seed: int = 0) -> tuple[list[float], list[float]]:
    """Wall times (ms) of weighted BT for ``candidates`` x ``judges`` (about 3N pairs each).

    Returns (from votes: ``bt.aggregate`` including turning the vote lists into arrays, matrix
    only: ``bt.fit`` on the prepared win matrix).
    """
    rng = np.random.default_rng(seed)
    cands = [f"c{i:03d}" for i in range(candidates)]
    true = dict(zip(cands, rng.normal(0.0, 1.0, candidates)))
    votes = {}
    weights = {}
    for j in range(judges):
        name = f"j{j:03d}"
        pairs = assign_pairs(f"fit-{seed}", name, cands, factor=3)
        votes[name] = [(a, b, "A" if rng.random() < 1 / (1 + np.exp(true[b] - true[a])) else "B") for a, b in pairs]
        weights[name] = float(rng.uniform(0.05, 1.0))
    index = {c: i for i, c in enumerate(cands)}
    arrays = [(index[a], index[b], 1.0 if o == "A" else 0.0, weights[j]) for j, vs in votes.items() for a, b, o in vs]
    wins = bt.win_matrix(candidates, *(np.array(x) for x in zip(*arrays)))
    full, core = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        bt.aggregate(cands, votes, weights)
        full.append((time.perf_counter() - t) * 1000.0)
        t = time.perf_counter()
        bt.fit(wins)
        core.append((time.perf_counter() - t) * 1000.0)
    return full, core
