"""Reputation, weights and stake: a pure, deterministic function of signed round records.

Every node that holds the same set of records computes bit-identical numbers: records are verified,
de-duplicated by round id, sorted by (start time, round id) and folded in that order; judges and
nodes are always visited in sorted order. The fold does not trust the coordinator's numbers: it
recomputes each round's consensus from the signed reveals with the weights *it* derived from the
earlier rounds.

Per node a score in [0, 1] (fresh identities start at 0):

* decay: between events a score halves every ``half_life`` seconds of round time;
* judging: a judge's agreement ``g`` is the mean, over its votes, of ``1 - |vote - consensus|``
  (vote and consensus verdicts as 1 / 0.5 / 0); its score moves by an EMA step toward
  ``max(0, 2 g - 1)`` (a coin-flipping judge earns nothing);
* stake and slashing: entering a round stakes ``stake_fraction`` of the score; a judge whose
  agreement is below ``outlier_below`` (more against the consensus than with it) loses the stake
  before the EMA step, otherwise the stake is returned;
* winning: the author of the winning candidate moves by a smaller EMA step toward 1;
* support: the steps are scaled by the share of the round's weight held by established judges.
  Once any node is established (or from the start, given ``anchors``), a round judged by
  newcomers only changes nothing, so identities cannot farm reputation among themselves.

A judge's weight is 0 until it has a passed calibration record, then ``newcomer_weight + score``.
In one round the newcomers' (score below ``established``) combined weight is capped at
``newcomer_cap`` times the established judges' weight, so no number of fresh identities can
outvote established ones.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from swarmlm.consensus import bt
from swarmlm.consensus.audit import VerifiedRound, verify_record
from swarmlm.consensus.audits import AuditRecord, open_audit, verify_audit
from swarmlm.consensus.calibration import CalibrationError, verify_calibration
from swarmlm.consensus.records import ConsensusError, RoundRecord, Vote

_SCORE = {"A": 1.0, "B": 0.0, "tie": 0.5}


@dataclass(frozen=True)
class ReputationParams:
    judge_rate: float = 0.1
    win_rate: float = 0.05
    half_life: float = 14 * 86400.0
    newcomer_weight: float = 0.01
    established: float = 0.25
    established_rounds: int = 20
    anchor_score: float = 0.5
    newcomer_cap: float = 0.25
    stake_fraction: float = 0.1
    outlier_below: float = 0.5
    max_clock_skew: float = 300.0
    require_calibration: bool = True
    verdict_slash: float = 0.5  # share of its score a node loses per verified "fail" verdict against it
    # "consensus": judges earn by agreeing with the round's consensus; "audits": only by agreeing with the
    # key of known-answer audit rounds (``apply_audit``), ordinary rounds move no score (docs/CONSENSUS.md)
    earn: str = "consensus"
    audit_rate: float = 0.3  # EMA step toward 2 g - 1 per passed audit
    convict_below: float = 0.5  # audit agreement below this: the judge loses all its standing
    weight_power: float = 1.0  # a judge's weight is newcomer_weight + score ** weight_power (AUDITED: 2)
    established_audits: int = 3  # with earn="audits": passed audits before a node counts as established


# The node's default (docs/CONSENSUS.md, "Audits"): standing earned only from known-answer audits,
# a judge's weight the square of its score (measured in consensus/simhard.py, defense "ground")
AUDITED = {"earn": "audits", "weight_power": 2.0}


@dataclass(frozen=True)
class Verdict:
    """A signed "fail" verdict record (shard verification): ``reporter`` found ``subject`` computing wrongly."""

    subject: str
    time: float
    id: str
    reporter: str


@dataclass
class NodeReputation:
    score: float = 0.0
    updated_at: float = float("-inf")
    judged: int = 0
    won: int = 0
    slashed: int = 0
    stake_lost: float = 0.0
    audited: int = 0  # known-answer audits this node judged in
    convicted: int = 0  # audits it failed (agreement with the key below ``convict_below``)
    answered: float = 0.0  # its candidates in known-answer audits (decays with the score) ...
    answered_right: float = 0.0  # ... and how many of them the key found right


@dataclass
class ReputationState:
    """The fold's running state; ``apply_round`` is the whole update rule (the bench uses it directly)."""

    params: ReputationParams = field(default_factory=ReputationParams)
    calibrated: dict[str, float] = field(default_factory=dict)  # node -> time of its first passed calibration
    nodes: dict[str, NodeReputation] = field(default_factory=dict)
    rounds: list[str] = field(default_factory=list)
    anchors: frozenset[str] = frozenset()  # trusted founders: established from the start
    bootstrapped: bool = False  # some node is established: newcomer-only rounds stop counting

    def __post_init__(self) -> None:
        for a in sorted(self.anchors):
            self._node(a).score = max(self._node(a).score, self.params.anchor_score)
        self.bootstrapped = self.bootstrapped or bool(self.anchors)

    def _node(self, node: str) -> NodeReputation:
        rep = self.nodes.get(node)
        if rep is None:
            rep = self.nodes[node] = NodeReputation()
        return rep

    def _decay(self, rep: NodeReputation, t: float) -> None:
        if rep.updated_at != float("-inf") and t > rep.updated_at:
            f = 0.5 ** ((t - rep.updated_at) / self.params.half_life)
            rep.score *= f
            rep.answered *= f
            rep.answered_right *= f
        rep.updated_at = max(rep.updated_at, t)

    def score(self, node: str, at: float | None = None) -> float:
        rep = self.nodes.get(node)
        if rep is None:
            return 0.0
        if at is None or rep.updated_at == float("-inf") or at <= rep.updated_at:
            return rep.score
        return rep.score * 0.5 ** ((at - rep.updated_at) / self.params.half_life)

    def is_calibrated(self, node: str, at: float | None = None) -> bool:
        if not self.params.require_calibration:
            return True
        t = self.calibrated.get(node)
        return t is not None and (at is None or t <= at)

    def weight(self, node: str, at: float | None = None) -> float:
        """A judge's weight on its own: 0 before calibration, then newcomer weight + score."""
        if not self.is_calibrated(node, at):
            return 0.0
        return self.params.newcomer_weight + self.score(node, at) ** self.params.weight_power

    def is_established(self, node: str, at: float | None = None) -> bool:
        """Judged at least ``established_rounds`` rounds and scores at least ``established``."""
        if node in self.anchors:
            return True
        rep = self.nodes.get(node)
        need = self.params.established_audits if self.params.earn == "audits" else self.params.established_rounds
        return (rep is not None and (rep.audited if self.params.earn == "audits" else rep.judged) >= need
                and self.score(node, at) >= self.params.established)

    def stake(self, node: str, at: float | None = None) -> float:
        """The reputation a node puts at risk by judging in a round started at ``at``."""
        return self.params.stake_fraction * self.score(node, at)

    def round_weights(self, judges: Iterable[str], at: float | None = None) -> dict[str, float]:
        """Weights of one round's judges, with the newcomers' combined weight capped."""
        p = self.params
        raw = {j: self.weight(j, at) for j in sorted(set(judges))}
        new = [j for j in raw if not self.is_established(j, at)]
        est_total = sum(raw[j] for j in raw if j not in new)
        new_total = sum(raw[j] for j in new)
        if est_total > 0 and new_total > p.newcomer_cap * est_total:
            scale = p.newcomer_cap * est_total / new_total
            for j in new:
                raw[j] *= scale
        return raw

    def apply_round(self, t: float, candidates: Sequence[str], authors: Sequence[str],
                    votes: Mapping[str, Sequence[Vote]], round_id: str = "",
                    answer_keys: Sequence[str] | None = None) -> bt.BTResult | None:
        """Fold one round (at round time ``t``); returns the consensus fit, None if no judge had weight.

        ``answer_keys`` (the candidates' answer hashes) mark identical answers; votes on a pair of
        identical answers do not count toward a judge's agreement.
        """
        p = self.params
        for n in sorted(set(authors) | set(votes)):
            self._decay(self._node(n), t)
        weights = self.round_weights(votes, t)
        if sum(weights.values()) <= 0.0:
            return None
        fit = bt.aggregate(candidates, votes, weights)
        if p.earn == "audits":  # standing comes from audited ground truth only
            if round_id:
                self.rounds.append(round_id)
            return fit
        established = sum(w for j, w in weights.items() if self.is_established(j, t))
        if established > 0.0:
            support = established / sum(weights.values())
        elif self.bootstrapped:
            return fit  # only newcomers judged: such a round (a Sybil farm?) earns and costs nothing
        else:
            support = 1.0  # bootstrap: nobody is established anywhere yet
        index = {c: i for i, c in enumerate(candidates)}
        keys = list(answer_keys) if answer_keys is not None else list(candidates)

        for judge in sorted(votes):
            # pairs of identical answers carry no information: neither reward nor penalty
            scored = [(index[a], index[b], o) for a, b, o in votes[judge] if keys[index[a]] != keys[index[b]]]
            if weights[judge] <= 0.0 or not scored:
                continue
            agree = sum(1.0 - abs(_SCORE[o] - bt.preference(fit.strengths, ia, ib))
                        for ia, ib, o in scored) / len(scored)
            rep = self.nodes[judge]
            rep.judged += 1
            evidence = max(0.0, 2.0 * agree - 1.0)
            if agree < p.outlier_below:
                lost = p.stake_fraction * rep.score
                rep.score -= lost
                rep.stake_lost += lost
                rep.slashed += 1
                evidence = 0.0
            rate = p.judge_rate * support
            rep.score = (1.0 - rate) * rep.score + rate * evidence
        win = self.nodes[authors[fit.winner]]
        win.won += 1
        win.score = (1.0 - p.win_rate * support) * win.score + p.win_rate * support
        if not self.bootstrapped:
            self.bootstrapped = any(self.is_established(j, t) for j in sorted(votes))
        if round_id:
            self.rounds.append(round_id)
        return fit

    def apply_audit(self, t: float, candidates: Sequence[str], votes: Mapping[str, Sequence[Vote]],
                    right: Mapping[str, bool], authors: Sequence[str] | None = None) -> dict[str, float]:
        """Fold a known-answer audit round: each judge's agreement ``g`` with the key over its pairs
        of one right and one wrong candidate (``right[candidate]``). Below ``convict_below`` the
        judge loses all its standing (like a convicted liar); otherwise its score takes an EMA step
        of ``audit_rate`` toward ``2 g - 1``. Returns every scored judge's agreement.

        ``authors`` (the candidates' nodes, in ``candidates`` order; default: the candidates are the
        nodes) also counts each author's answer against the key, the evidence of ``author_prior``."""
        p = self.params
        out: dict[str, float] = {}
        for c, author in zip(candidates, authors if authors is not None else candidates):
            if c in right:
                rep = self._node(author)
                self._decay(rep, t)
                rep.answered += 1.0
                rep.answered_right += 1.0 if right[c] else 0.0
        for judge in sorted(votes):
            scored = [(a, o) for a, b, o in votes[judge]
                      if a in right and b in right and right[a] != right[b]]
            if not scored:
                continue
            g = sum(_SCORE[o] if right[a] else 1.0 - _SCORE[o] for a, o in scored) / len(scored)
            out[judge] = g
            rep = self._node(judge)
            self._decay(rep, t)
            rep.audited += 1
            if g < p.convict_below:
                rep.stake_lost += rep.score
                rep.score = 0.0
                rep.convicted += 1
                rep.slashed += 1
            else:
                rep.score = (1.0 - p.audit_rate) * rep.score + p.audit_rate * (2.0 * g - 1.0)
        if not self.bootstrapped:
            self.bootstrapped = any(self.is_established(j, t) for j in sorted(votes))
        return out

    def apply_verdict(self, t: float, subject: str) -> None:
        """A verified wrong computation: the subject loses ``verdict_slash`` of its score (as stake)."""
        rep = self._node(subject)
        self._decay(rep, t)
        lost = self.params.verdict_slash * rep.score
        rep.score -= lost
        rep.stake_lost += lost
        rep.slashed += 1

    def decay_to(self, now: float) -> None:
        for n in sorted(self.nodes):
            self._decay(self.nodes[n], now)

    def scores(self) -> dict[str, float]:
        return {n: self.nodes[n].score for n in sorted(self.nodes)}


def pick_audits(audits: Iterable[AuditRecord | bytes]) -> dict[str, AuditRecord]:
    """Readable audit records by round id (the lowest record id where a round has several)."""
    out: dict[str, AuditRecord] = {}
    for a in audits:
        try:
            rec = a if isinstance(a, AuditRecord) else open_audit(a)
        except ConsensusError:
            continue
        if rec.round_id not in out or rec.id < out[rec.round_id].id:
            out[rec.round_id] = rec
    return out


def fold_round(state: ReputationState, v: VerifiedRound, audit: AuditRecord | None) -> None:
    """One verified round into the state, then its audit if it has a valid one."""
    state.apply_round(v.time, v.candidate_ids, [h.node for h in v.candidates], v.votes, v.round_id,
                      [h.answer_hash for h in v.candidates])
    if audit is not None:
        try:
            right = verify_audit(audit, v)
        except ConsensusError:
            return
        state.apply_audit(v.time, v.candidate_ids, v.votes, right, [h.node for h in v.candidates])


def order_rounds(rounds: Iterable[VerifiedRound], now: float, max_clock_skew: float) -> list[VerifiedRound]:
    """Canonical order: one record per round id (lowest record id wins an equivocation), by time."""
    best: dict[str, VerifiedRound] = {}
    for v in rounds:
        if v.time > now + max_clock_skew:
            continue
        cur = best.get(v.round_id)
        if cur is None or v.record.id < cur.record.id:
            best[v.round_id] = v
    return sorted(best.values(), key=lambda v: (v.time, v.round_id))


def compute_reputation(records: Iterable[RoundRecord | bytes], now: float, *,
                       calibrations: Iterable[object] = (), anchors: Iterable[str] = (),
                       params: ReputationParams | None = None, verdicts: Iterable[Verdict] = (),
                       audits: Iterable[AuditRecord | bytes] = ()) -> ReputationState:
    """Reputation of every node from round records (and calibration records), as of ``now``.

    ``anchors`` are peer ids every node of the swarm agrees to trust from the start (e.g. its
    founders): they count as established, which ends the bootstrap phase at once.

    ``verdicts`` (from signed verdict records) slash their subject; one counts per (reporter,
    subject) pair (the earliest), none from a node about itself; they fold in time order with the
    rounds (ties: rounds first, then by id).

    ``audits`` (signed ``AuditRecord`` s) fold right after their round (``apply_audit``).

    Records that fail verification are ignored, so the result depends only on the set of valid
    records, never on their order or on duplicates.
    """
    params = params or ReputationParams()
    state = ReputationState(params, anchors=frozenset(anchors))
    for c in calibrations:
        try:
            cal = verify_calibration(c)  # type: ignore[arg-type]
        except (CalibrationError, ConsensusError):
            continue
        if cal.passed and cal.graded_at <= now + params.max_clock_skew:
            prev = state.calibrated.get(cal.subject)
            state.calibrated[cal.subject] = cal.graded_at if prev is None else min(prev, cal.graded_at)
    verified = []
    for r in records:
        try:
            verified.append(verify_record(r))
        except ConsensusError:
            continue
    keys = pick_audits(audits)
    first: dict[tuple[str, str], Verdict] = {}
    for vd in verdicts:
        if vd.reporter == vd.subject or vd.time > now + params.max_clock_skew:
            continue
        key = (vd.reporter, vd.subject)
        if key not in first or (vd.time, vd.id) < (first[key].time, first[key].id):
            first[key] = vd
    events: list[tuple[float, int, str, object]] = [(v.time, 0, v.round_id, v)
                                                     for v in order_rounds(verified, now, params.max_clock_skew)]
    events += [(vd.time, 1, vd.id, vd) for vd in first.values()]
    for _, kind, _, ev in sorted(events, key=lambda e: e[:3]):
        if kind == 1:
            state.apply_verdict(ev.time, ev.subject)  # type: ignore[attr-defined]
            continue
        v = ev  # type: ignore[assignment]
        fold_round(state, v, keys.get(v.round_id))
    state.decay_to(now)
    return state


class ReputationBook:
    """A node's running view: records are verified once, and folded incrementally when they arrive
    in canonical order (otherwise the fold restarts). ``snapshot(now)`` always equals
    ``compute_reputation`` over the same records, bit for bit.
    """

    def __init__(self, params: ReputationParams | None = None, anchors: Iterable[str] = ()) -> None:
        self.params = params or ReputationParams()
        self.anchors = frozenset(anchors)
        self._rounds: dict[str, VerifiedRound] = {}
        self._calibrated: dict[str, float] = {}
        self._audits: dict[str, AuditRecord] = {}
        self._state: ReputationState | None = None
        self._last: tuple[float, str] | None = None  # canonical key of the last folded round

    def add_record(self, record: RoundRecord | bytes) -> bool:
        """Verify and keep a round record; False if invalid or already known."""
        try:
            v = verify_record(record)
        except ConsensusError:
            return False
        cur = self._rounds.get(v.round_id)
        if cur is not None and cur.record.id <= v.record.id:
            return False
        self._rounds[v.round_id] = v
        if cur is not None or (self._last is not None and (v.time, v.round_id) <= self._last):
            self._state = None  # replaces or precedes a folded round: fold again from the start
        return True

    def add_audit(self, record: AuditRecord | bytes) -> bool:
        """Keep an audit record (checked against its round when folded); False if unreadable or not new."""
        got = pick_audits([record])
        if not got:
            return False
        (rid, rec), = got.items()
        cur = self._audits.get(rid)
        if cur is not None and cur.id <= rec.id:
            return False
        self._audits[rid] = rec
        v = self._rounds.get(rid)
        if v is not None and self._last is not None and (v.time, v.round_id) <= self._last:
            self._state = None  # its round is folded already: fold again from the start
        return True

    def add_calibration(self, record: object) -> bool:
        """Verify and keep a calibration record; False if invalid, failed or not earlier than known."""
        try:
            cal = verify_calibration(record)  # type: ignore[arg-type]
        except (CalibrationError, ConsensusError):
            return False
        prev = self._calibrated.get(cal.subject)
        if not cal.passed or (prev is not None and prev <= cal.graded_at):
            return False
        self._calibrated[cal.subject] = cal.graded_at
        self._state = None
        return True

    def snapshot(self, now: float) -> ReputationState:
        """The reputation as of ``now`` (a copy: the caller may keep or change it)."""
        p = self.params
        if self._state is None:
            self._state, self._last = ReputationState(p, anchors=self.anchors), None
        st = self._state
        st.calibrated = {n: t for n, t in self._calibrated.items() if t <= now + p.max_clock_skew}
        if len(st.calibrated) != len(self._calibrated):  # calibrations still in the future: no caching
            self._state = None
        for v in order_rounds(self._rounds.values(), now, p.max_clock_skew):
            if self._last is None or (v.time, v.round_id) > self._last:
                fold_round(st, v, self._audits.get(v.round_id))
                self._last = (v.time, v.round_id)
        out = copy.deepcopy(st)
        out.decay_to(now)
        return out
