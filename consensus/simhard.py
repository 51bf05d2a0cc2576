"""A harder, seeded simulation of consensus: judges that err together, favour themselves and adapt.

What ``sim.py`` leaves out, modelled here (``HardConfig``):

* **Difficulty and shared traps.** Each question has a difficulty ``d ~ U(0, 1)`` and one *trap*:
  the wrong option most wrong answers pick (``trap_share``). An honest node answers right with
  ``skill * (1.2 - 0.8 d)`` (clipped).
* **Judging skill tied to answering skill.** Judge accuracy on a right-vs-wrong pair is
  ``0.5 + judge_gain * (skill - 0.2)``, shrunk toward 1/2 by difficulty.
* **Correlated errors.** A question is *deceptive* with probability ``deceptive * d``: then every
  honest judge prefers the trap over the right answer with its accuracy (all wrong together).
  Between two wrong answers, judges prefer the trap with ``trap_pull``.
* **Self-preference.** When one side equals the judge's own answer, it votes for that side with
  probability ``self_pref`` whatever its skill says.
* **Adaptive colluders** (``attack``): ``"always"``; ``"sleeper"`` (honest, with skill
  ``colluder_skill``, for the first ``sleep`` share of rounds, then attack); ``"majority"``
  (attack only in rounds where they are at least half of the participants); ``"adaptive"``
  (sleeper, and before waking also attack whenever they are the majority). Attacking colluders all
  answer one wrong option and vote for it, and for any wrong answer over the right one.
* **Defenses** (``defense``): ``"none"``; ``"calibration"``: a node judges with weight only after
  passing 10 puzzles at 7/10, each right with its judging accuracy (colluders are capable and pass);
  ``"anchors"``: calibration plus ``anchors`` honest founders established from the start;
  ``"audits"`` (not in the node: what ground truth would buy): a share ``audit_share`` of the
  rounds carry a known answer, unannounced; there each judge's reputation step uses its agreement
  with the key instead of with the consensus (same EMA, same stake and slashing);
  ``"ground"`` (the node's default, ``ReputationParams(earn="audits")``): standing is earned *only*
  in the unannounced known-answer rounds (share ``audit_share``), by agreeing with the key; a judge
  whose agreement there is below 1/2 loses all its standing; ordinary rounds move no score; a
  judge's weight is ``0.01 + score ** 2``. With ``author_prior`` (the node's rule) the winner is
  the candidate with the largest ``log(strength) + log(prior)``, the prior being its author's right
  answers in the audits so far (``consensus.priors``).
  Against it the colluders **rejoin**: a convicted colluder comes back as a fresh identity
  (identities are free) and sleeps again (``sleep`` share of the rounds, still attacking whenever
  colluders dominate a round) to rebuild standing before it attacks again.

``simulate_hard`` runs one seed; ``over_seeds`` runs several and reports every metric's mean,
standard deviation, min and max (``spread``). Deterministic for a config.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np

from swarmlm.consensus import bt
from swarmlm.consensus.pairs import assign_pairs
from swarmlm.consensus.priors import author_priors, prior_pick
from swarmlm.consensus.reputation import AUDITED, ReputationParams, ReputationState

ATTACKS = ("always", "sleeper", "majority", "adaptive")
DEFENSES = ("none", "calibration", "anchors", "audits", "ground")
METRICS = ("majority_acc", "bt_acc", "bt_rep_acc", "best_node_acc", "rep_honest", "rep_malicious", "rejoins")


@dataclass(frozen=True)
class HardConfig:
    rounds: int = 400
    pool: int = 20
    k: int = 7
    options: int = 4
    malicious_share: float = 0.2
    skill: tuple[float, float] = (0.3, 0.85)
    judge_gain: float = 0.6
    trap_share: float = 0.6
    trap_pull: float = 0.6
    deceptive: float = 0.3
    self_pref: float = 0.3
    colluder_skill: float = 0.7
    attack: str = "adaptive"
    sleep: float = 0.3
    defense: str = "anchors"
    anchors: int = 3
    audit_share: float = 0.2
    rejoin: str = "sleep"  # with defense "ground": a convicted colluder's fresh identity "sleep"s again or "attack"s
    author_prior: bool = True  # with defense "ground": weigh each candidate by its author's audited answers
    round_interval: float = 60.0
    seed: int = 0

    def check(self) -> None:
        if self.attack not in ATTACKS or self.defense not in DEFENSES or self.rejoin not in ("sleep", "attack"):
            raise ValueError(f"attack must be one of {ATTACKS} and defense one of {DEFENSES}")
        if not (0.0 <= self.malicious_share <= 1.0 and 2 <= self.k <= self.pool and self.options >= 3):
            raise ValueError("need 0 <= malicious_share <= 1, 2 <= k <= pool and at least 3 options")


def _judge_acc(skill: float, gain: float, d: float) -> float:
    base = min(0.97, max(0.5, 0.5 + gain * (skill - 0.2)))
    return 0.5 + (base - 0.5) * (1.0 - 0.7 * d)


def _honest_vote(rng: np.random.Generator, cfg: HardConfig, acc: float, own: int | None, a: int, b: int,
                 right: int, trap: int, deceptive: bool) -> str:
    if a == b:
        return "tie"
    if own is not None and own in (a, b) and rng.random() < cfg.self_pref:
        return "A" if a == own else "B"
    if right in (a, b):
        good = "A" if a == right else "B"
        other = b if a == right else a
        if deceptive and other == trap:
            good = "B" if good == "A" else "A"
        return good if rng.random() < acc else ("B" if good == "A" else "A")
    if trap in (a, b) and rng.random() < cfg.trap_pull:
        return "A" if a == trap else "B"
    return "A" if rng.random() < 0.5 else "B"


def _attack_vote(a: int, b: int, right: int, target: int, rng: np.random.Generator) -> str:
    if a == b:
        return "tie"
    if target in (a, b):
        return "A" if a == target else "B"
    if right in (a, b):
        return "B" if a == right else "A"
    return "A" if rng.random() < 0.5 else "B"


def colluders_attack(cfg: HardConfig, r: int, n_bad: int, wake: float | None = None) -> bool:
    """Whether the colluders of round ``r`` (``n_bad`` of its ``k`` participants) attack; ``wake``:
    the round a sleeper wakes (default ``sleep * rounds``; later for a rejoined identity)."""
    awake = r >= (cfg.sleep * cfg.rounds if wake is None else wake)
    dominate = 2 * n_bad >= cfg.k
    return n_bad > 0 and {"always": True, "sleeper": awake, "majority": dominate,
                          "adaptive": awake or dominate}[cfg.attack]


def simulate_hard(cfg: HardConfig) -> dict[str, float]:
    cfg.check()
    rng = np.random.default_rng(cfg.seed)
    names = [f"n{i:03d}" for i in range(cfg.pool)]
    skill = rng.uniform(*cfg.skill, size=cfg.pool)
    bad = np.zeros(cfg.pool, dtype=bool)
    bad[rng.choice(cfg.pool, size=int(round(cfg.malicious_share * cfg.pool)), replace=False)] = True
    skill[bad] = cfg.colluder_skill
    honest = np.flatnonzero(~bad)
    gated = cfg.defense in ("calibration", "anchors")
    ground = cfg.defense == "ground"
    state = ReputationState(ReputationParams(require_calibration=gated, **(AUDITED if ground else {})))
    wake = np.full(cfg.pool, cfg.sleep * cfg.rounds)  # per colluder: rejoined identities sleep again
    rejoins = 0
    if gated:
        for i in range(cfg.pool):
            p = 0.9 if bad[i] else _judge_acc(float(skill[i]), cfg.judge_gain, 0.5)
            if rng.binomial(10, p) >= 7:
                state.calibrated[names[i]] = -1.0
    if cfg.defense == "anchors" and len(honest):
        founders = rng.choice(honest, size=min(cfg.anchors, len(honest)), replace=False)
        state.anchors = frozenset(names[i] for i in founders)
    hits = np.zeros(3)
    node_right = np.zeros(cfg.pool)
    node_asked = np.zeros(cfg.pool)
    for r in range(cfg.rounds):
        d = float(rng.random())
        right = int(rng.integers(cfg.options))
        wrong = [o for o in range(cfg.options) if o != right]
        trap = wrong[int(rng.integers(len(wrong)))]
        target = wrong[int(rng.integers(len(wrong)))]
        deceptive = bool(rng.random() < cfg.deceptive * d)
        chosen = sorted(rng.choice(cfg.pool, size=cfg.k, replace=False).tolist())
        n_bad = int(bad[chosen].sum())
        attacks = {i: colluders_attack(cfg, r, n_bad, float(wake[i])) for i in chosen if bad[i]}
        answers: dict[str, int] = {}
        for i in chosen:
            if attacks.get(i, False):
                answers[names[i]] = target
            elif rng.random() < min(0.98, max(0.02, skill[i] * (1.2 - 0.8 * d))):
                answers[names[i]] = right
            else:
                answers[names[i]] = trap if rng.random() < cfg.trap_share else wrong[int(rng.integers(len(wrong)))]
            node_right[i] += answers[names[i]] == right
            node_asked[i] += 1
        cands = [names[i] for i in chosen]
        counts = np.bincount([answers[c] for c in cands], minlength=cfg.options)
        top = np.flatnonzero(counts == counts.max())
        majority = int(top[rng.integers(len(top))])
        votes: dict[str, list[tuple[str, str, str]]] = {}
        for i in chosen:
            me = names[i]
            acc = _judge_acc(float(skill[i]), cfg.judge_gain, d)
            pairs = assign_pairs(f"hard-{cfg.seed}-{r}", me, cands, exclude=[me])
            if attacks.get(i, False):
                votes[me] = [(a, b, _attack_vote(answers[a], answers[b], right, target, rng)) for a, b in pairs]
            else:
                votes[me] = [(a, b, _honest_vote(rng, cfg, acc, answers[me], answers[a], answers[b], right, trap,
                                                 deceptive)) for a, b in pairs]
        plain = bt.aggregate(cands, votes, {c: 1.0 for c in cands})
        rep = state.apply_round(r * cfg.round_interval, cands, cands, votes,
                                answer_keys=[str(answers[c]) for c in cands])
        rep_winner = rep.winner if rep is not None else plain.winner
        if ground and cfg.author_prior and rep is not None:
            rep_winner = prior_pick(rep.strengths, cands, author_priors(state, cands))
        if cfg.defense == "audits" and rng.random() < cfg.audit_share:
            _audit(state, votes, answers, right)
        if ground and rng.random() < cfg.audit_share:
            before = {c: state.nodes[c].convicted if c in state.nodes else 0 for c in cands}
            state.apply_audit(r * cfg.round_interval, cands, votes, {c: answers[c] == right for c in cands})
            for i in chosen:  # a convicted colluder comes back as a fresh identity and sleeps again
                if bad[i] and state.nodes[names[i]].convicted > before[names[i]]:
                    rejoins += 1
                    names[i] = f"n{i:03d}r{rejoins}"
                    wake[i] = r + 1 + (cfg.sleep * cfg.rounds if cfg.rejoin == "sleep" else 0)
        hits += [majority == right, answers[cands[plain.winner]] == right, answers[cands[rep_winner]] == right]
    scores = state.scores()
    per_node = np.where(node_asked > 0, node_right / np.maximum(node_asked, 1), 0.0)
    rep_h = [scores.get(names[i], 0.0) for i in honest]
    rep_m = [scores.get(names[i], 0.0) for i in np.flatnonzero(bad)]
    return {"majority_acc": float(hits[0] / cfg.rounds), "bt_acc": float(hits[1] / cfg.rounds),
            "bt_rep_acc": float(hits[2] / cfg.rounds),
            "best_node_acc": float(per_node[honest].max()) if len(honest) else 0.0,
            "rep_honest": float(np.mean(rep_h)) if rep_h else 0.0,
            "rep_malicious": float(np.mean(rep_m)) if rep_m else 0.0, "rejoins": float(rejoins)}


def _audit(state: ReputationState, votes: dict[str, list[tuple[str, str, str]]], answers: dict[str, int],
           right: int) -> None:
    """A known-answer round: correct each judge's last step toward its agreement with the key."""
    p = state.params
    for judge in sorted(votes):
        scored = [(answers[a] == right) - (answers[b] == right) for a, b, _ in votes[judge]
                  if (answers[a] == right) != (answers[b] == right)]
        if not scored:
            continue
        got = [o for (a, b, o) in votes[judge] if (answers[a] == right) != (answers[b] == right)]
        agree = sum(1.0 if (d > 0 and o == "A") or (d < 0 and o == "B") else 0.5 if o == "tie" else 0.0
                    for d, o in zip(scored, got)) / len(scored)
        rep = state.nodes[judge]
        evidence = max(0.0, 2.0 * agree - 1.0)
        if agree < p.outlier_below:
            rep.score -= p.stake_fraction * rep.score
            evidence = 0.0
        rep.score = (1.0 - p.judge_rate) * rep.score + p.judge_rate * evidence


def over_seeds(cfg: HardConfig, seeds: Sequence[int]) -> dict[str, Any]:
    """Every metric's mean over ``seeds`` and its spread (std, min, max); also the per-seed values."""
    if len(seeds) < 1:
        raise ValueError("need at least one seed")
    runs = [simulate_hard(replace(cfg, seed=s)) for s in seeds]
    out: dict[str, Any] = {"seeds": list(seeds), "per_seed": {m: [round(r[m], 4) for r in runs] for m in METRICS}}
    spread = {}
    for m in METRICS:
        xs = np.array([r[m] for r in runs])
        out[m] = round(float(xs.mean()), 4)
        spread[m] = {"std": round(float(xs.std()), 4), "min": round(float(xs.min()), 4),
                     "max": round(float(xs.max()), 4)}
    out["spread"] = spread
    return out
