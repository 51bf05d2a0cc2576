"""The coordinator's side of a consensus round as an I/O-free state machine (h11 style).

The driver (``node/``) feeds it packets and clock readings and carries out the actions it returns;
the machine never reads a clock, sleeps or touches a socket::

    rnd, actions = CoordinatorRound.start(identity, prompt, candidates, judges, now, weights=...)
    ... for each incoming packet: actions = rnd.receive(packet, now)
    ... when now >= rnd.next_deadline: actions = rnd.tick(now)

Phases: CANDIDATES (answers come in) -> COMMITS (judges send vote hashes) -> REVEALS (judges open
them) -> DONE or FAILED. A phase ends early once everyone expected has answered, otherwise at its
deadline (absolute timestamps fixed in the signed spec); whoever missed it is dropped and the round
goes on if at least ``min_candidates`` / ``min_judges`` remain. A judge is asked to reveal only
after every commit is in, so nobody can copy votes. A reveal that does not open its commit, or
votes on pairs it was not assigned, is refused and its judge dropped.

The coordinator may itself answer and judge: the driver then hands the ``Send`` packets addressed
to its own peer id to its participant side (``participant.py``) like any other. ``local.py`` is a
complete in-memory driver to copy from.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field
from typing import Mapping, Sequence, Union

from swarmlm.consensus import bt
from swarmlm.consensus.audit import check_votes
from swarmlm.consensus.pairs import DEFAULT_PAIR_FACTOR
from swarmlm.consensus.priors import prior_pick
from swarmlm.consensus.records import (CandidateHeader, Commit, ConsensusError, JudgeRequest, Packet, Reveal,
                                       RevealRequest, RoundRecord, RoundSpec, check_reveal, open_as, text_hash)
from swarmlm.consensus.screens import SCREENED_PREFIX, screen_all, was_cut_off
from swarmlm.crypto.identity import Identity


class Phase(enum.Enum):
    CANDIDATES = "candidates"
    COMMITS = "commits"
    REVEALS = "reveals"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class Timeouts:
    """Seconds each phase may take, counted from the end of the previous one's deadline."""

    candidates: float = 120.0
    commits: float = 120.0
    reveals: float = 30.0


# -- actions returned to the driver ----------------------------------------------------------

@dataclass(frozen=True)
class Send:
    """Deliver ``packet`` to each peer in ``to``."""

    to: tuple[str, ...]
    packet: Packet


@dataclass(frozen=True)
class Dropped:
    """``node`` is out of the round: it missed ``phase`` or sent something refused (``reason``)."""

    node: str
    phase: str
    reason: str


@dataclass(frozen=True)
class Rejected:
    """A packet was ignored (wrong round, wrong phase, duplicate, bad signature...)."""

    sender: str
    reason: str


@dataclass(frozen=True)
class Finished:
    """The round is decided: the signed record (to add to the swarm state) and the answers."""

    record: RoundRecord
    packet: Packet  # the signed record, to broadcast to the participants
    winner_answer: str
    answers: dict[str, str]  # candidate id -> answer text
    nodes: dict[str, str]  # candidate id -> peer id of its author

    @property
    def round_id(self) -> str:
        return self.record.round_id

    def scores(self) -> list[dict[str, object]]:
        """The score table for the client: one row per candidate, strongest first."""
        rows = []
        for blob in self.record.candidates:
            head = open_as(CandidateHeader, blob)
            rows.append({"candidate": head.id, "node": head.node, "model": head.model, "sampling": head.sampling,
                         "strength": self.record.strengths[head.id], "winner": head.id == self.record.winner,
                         "answer": self.answers[head.id]})
            if self.record.priors:  # the author's record in known-answer audits (consensus/priors.py)
                rows[-1]["prior"] = self.record.priors[head.id]
        rows.sort(key=lambda r: (-float(r["strength"]), str(r["candidate"])))  # type: ignore[arg-type]
        return rows


@dataclass(frozen=True)
class Failed:
    reason: str


Action = Union[Send, Dropped, Rejected, Finished, Failed]


@dataclass
class CoordinatorRound:
    identity: Identity
    spec: RoundSpec
    spec_packet: Packet
    prompt: str
    weights: dict[str, float]
    priors: dict[str, float] = field(default_factory=dict)  # candidate node -> author prior (may be empty)
    phase: Phase = Phase.CANDIDATES
    heads: dict[str, tuple[CandidateHeader, bytes, str]] = field(default_factory=dict)  # node -> (hdr, env, answer)
    commits: dict[str, Commit] = field(default_factory=dict)
    reveals: dict[str, tuple[Reveal, bytes]] = field(default_factory=dict)
    dropped: list[tuple[str, str]] = field(default_factory=list)
    cand_order: tuple[CandidateHeader, ...] = ()
    cand_ids: tuple[str, ...] = ()
    record: RoundRecord | None = None

    @classmethod
    def start(cls, identity: Identity, prompt: str, candidates: Sequence[str], judges: Sequence[str], now: float,
              *, weights: Mapping[str, float], seed: str | None = None, timeouts: Timeouts = Timeouts(),
              min_candidates: int = 2, min_judges: int = 1, pair_factor: int = DEFAULT_PAIR_FACTOR,
              priors: Mapping[str, float] | None = None) -> tuple["CoordinatorRound", list[Action]]:
        """Create the signed spec and the packets asking every candidate node for an answer.

        ``weights`` are the judges' reputation weights at ``now`` (``reputation.round_weights``);
        judges without a positive weight are not invited. ``priors`` (candidate node -> its author
        prior, ``priors.author_priors``): the winner is then the unscreened candidate with the largest
        ``log(strength) + log(prior)``, and the record carries the priors; without them, the strongest.
        """
        judges = [j for j in dict.fromkeys(judges) if weights.get(j, 0.0) > 0.0]
        cands = list(dict.fromkeys(candidates))
        if len(cands) < min_candidates:
            raise ConsensusError(f"a round needs at least {min_candidates} candidate nodes, got {len(cands)}")
        if len(judges) < min_judges:
            raise ConsensusError(f"a round needs at least {min_judges} judges with reputation weight, got {len(judges)}")
        t1 = now + timeouts.candidates
        t2 = t1 + timeouts.commits
        spec = RoundSpec(identity.peer_id, text_hash(prompt), tuple(cands), tuple(judges),
                         seed or os.urandom(16).hex(), float(now), t1, t2, t2 + timeouts.reveals,
                         min_candidates, min_judges, pair_factor)
        spec.check()
        pkt = Packet(spec.seal(identity), (prompt,))
        if priors and any(not (0.0 < float(priors.get(c, 0.0)) <= 1.0) for c in cands):
            raise ConsensusError("author priors must be in (0, 1] for every candidate node")
        rnd = cls(identity, spec, pkt, prompt, {j: float(weights[j]) for j in judges},
                  {c: float(priors[c]) for c in cands} if priors else {})
        return rnd, [Send(spec.candidates, pkt)]

    @property
    def round_id(self) -> str:
        return self.spec.id

    @property
    def next_deadline(self) -> float | None:
        """When the driver must call ``tick`` at the latest (None once the round is over)."""
        return {Phase.CANDIDATES: self.spec.candidate_deadline, Phase.COMMITS: self.spec.commit_deadline,
                Phase.REVEALS: self.spec.reveal_deadline}.get(self.phase)

    # -- events ------------------------------------------------------------------------------

    def tick(self, now: float) -> list[Action]:
        """Close every phase whose deadline is at or before ``now``."""
        out: list[Action] = []
        while self.next_deadline is not None and now >= self.next_deadline:
            out += self._close_phase(now, timed_out=True)
        return out

    def receive(self, packet: Packet, now: float) -> list[Action]:
        """Handle one incoming packet (deadlines up to ``now`` are processed first)."""
        out = self.tick(now)
        handler = {CandidateHeader.DOMAIN: (Phase.CANDIDATES, self._on_candidate),
                   Commit.DOMAIN: (Phase.COMMITS, self._on_commit),
                   Reveal.DOMAIN: (Phase.REVEALS, self._on_reveal)}.get(packet.domain)
        if handler is None:
            return out + [Rejected(packet.sender, f"unexpected message {packet.domain}")]
        phase, fn = handler
        if self.phase is not phase:
            return out + [Rejected(packet.sender, f"{packet.domain} arrived in phase {self.phase.value}")]
        try:
            out += fn(packet)
        except ConsensusError as exc:
            return out + [Rejected(packet.sender, str(exc))]
        if self._phase_complete():
            out += self._close_phase(now, timed_out=False)
        return out

    def _on_candidate(self, packet: Packet) -> list[Action]:
        head = open_as(CandidateHeader, packet.envelope)
        if head.round_id != self.round_id or head.node not in self.spec.candidates:
            raise ConsensusError("candidate is not for this round or its node was not asked")
        if head.node in self.heads:
            raise ConsensusError("duplicate candidate")
        if len(packet.texts) != 1 or text_hash(packet.texts[0]) != head.answer_hash:
            raise ConsensusError("the answer does not match the candidate's answer hash")
        self.heads[head.node] = (head, packet.envelope.encode(), packet.texts[0])
        return []

    def _on_commit(self, packet: Packet) -> list[Action]:
        com = open_as(Commit, packet.envelope)
        if com.round_id != self.round_id or com.judge not in self.spec.judges or self._is_dropped(com.judge):
            raise ConsensusError("commit is not for this round or its judge is not in it")
        if com.judge in self.commits:
            raise ConsensusError("duplicate commit")
        self.commits[com.judge] = com
        return []

    def _on_reveal(self, packet: Packet) -> list[Action]:
        rev = open_as(Reveal, packet.envelope)
        com = self.commits.get(rev.judge)
        if rev.round_id != self.round_id or com is None or self._is_dropped(rev.judge):
            raise ConsensusError("reveal is not for this round or its judge did not commit")
        if rev.judge in self.reveals:
            raise ConsensusError("duplicate reveal")
        try:
            check_reveal(rev, com)
            check_votes(self.spec, rev, self.cand_order, self.cand_ids)
        except ConsensusError as exc:
            self.dropped.append((rev.judge, f"bad reveal: {exc}"))
            return [Dropped(rev.judge, self.phase.value, f"bad reveal: {exc}")]
        self.reveals[rev.judge] = (rev, packet.envelope.encode())
        return []

    # -- phase transitions -------------------------------------------------------------------

    def _is_dropped(self, node: str) -> bool:  # a screened candidate still judges
        return any(n == node and not why.startswith(SCREENED_PREFIX) for n, why in self.dropped)

    def _live_judges(self) -> list[str]:
        return [j for j in self.spec.judges if not self._is_dropped(j)]

    def _phase_complete(self) -> bool:
        if self.phase is Phase.CANDIDATES:
            return len(self.heads) == len(self.spec.candidates)
        if self.phase is Phase.COMMITS:
            return all(j in self.commits for j in self._live_judges())
        if self.phase is Phase.REVEALS:
            return all(j in self.reveals for j in self._live_judges())
        return False

    def _drop_missing(self, present: Mapping[str, object], nodes: Sequence[str]) -> list[Action]:
        out: list[Action] = []
        for n in nodes:
            if n not in present and not self._is_dropped(n):
                self.dropped.append((n, f"missed {self.phase.value}"))
                out.append(Dropped(n, self.phase.value, "missed the deadline"))
        return out

    def _fail(self, reason: str) -> list[Action]:
        self.phase = Phase.FAILED
        return [Failed(reason)]

    def _close_phase(self, now: float, timed_out: bool) -> list[Action]:
        if self.phase is Phase.CANDIDATES:
            out = self._drop_missing(self.heads, self.spec.candidates)
            if len(self.heads) < self.spec.min_candidates:
                return out + self._fail(f"only {len(self.heads)} candidates by the deadline")
            order = sorted(self.heads.values(), key=lambda t: t[0].id)
            self.cand_order = tuple(t[0] for t in order)
            self.cand_ids = tuple(h.id for h in self.cand_order)
            why = screen_all(self.prompt, {h.node: (t[2], was_cut_off(h.sampling)) for h, t in
                                           ((t[0], t) for t in order)})
            self.dropped += [(n, SCREENED_PREFIX + r) for n, r in sorted(why.items())]
            req = JudgeRequest(self.spec.coordinator, self.round_id, (self.spec_packet.envelope.encode(),),
                               tuple(t[1] for t in order))
            self.phase = Phase.COMMITS
            pkt = Packet(req.seal(self.identity), (self.prompt,) + tuple(t[2] for t in order))
            return out + [Send(tuple(self._live_judges()), pkt)]
        if self.phase is Phase.COMMITS:
            out = self._drop_missing(self.commits, self.spec.judges)
            live = self._live_judges()
            if len(live) < self.spec.min_judges:
                return out + self._fail(f"only {len(live)} judges committed by the deadline")
            self.phase = Phase.REVEALS
            req = RevealRequest(self.spec.coordinator, self.round_id, tuple(live))
            return out + [Send(tuple(live), Packet(req.seal(self.identity)))]
        if self.phase is Phase.REVEALS:
            out = self._drop_missing(self.reveals, self.spec.judges)
            if len(self.reveals) < self.spec.min_judges:
                return out + self._fail(f"only {len(self.reveals)} judges revealed valid votes by the deadline")
            return out + self._finish(now)
        return []

    def _finish(self, now: float) -> list[Action]:
        judges = sorted(self.reveals)
        votes = {j: self.reveals[j][0].votes for j in judges}
        weights = {j: self.weights[j] for j in judges}
        fit = bt.aggregate(self.cand_ids, votes, weights)
        strengths = dict(zip(self.cand_ids, fit.strengths))
        screened = {n for n, why in self.dropped if why.startswith(SCREENED_PREFIX)}
        eligible = [h.id for h in self.cand_order if h.node not in screened] or list(self.cand_ids)
        priors = {h.id: self.priors[h.node] for h in self.cand_order} if self.priors else {}
        if priors:
            idx = {c: i for i, c in enumerate(self.cand_ids)}
            winner = self.cand_ids[prior_pick(fit.strengths, self.cand_ids, priors, [idx[c] for c in eligible])]
        else:
            winner = max(eligible, key=lambda c: (strengths[c], c == self.cand_ids[fit.winner]))
        rec = RoundRecord(self.spec.coordinator, self.round_id, (self.spec_packet.envelope.encode(),),
                          tuple(self.heads[h.node][1] for h in self.cand_order),
                          tuple(self.reveals[j][1] for j in judges), weights, strengths,
                          winner, tuple(self.dropped), float(now), priors)
        self.record = rec
        self.phase = Phase.DONE
        answers = {h.id: self.heads[h.node][2] for h in self.cand_order}
        pkt = Packet(rec.seal(self.identity))
        everyone = tuple(dict.fromkeys(self.spec.candidates + self.spec.judges))
        return [Send(everyone, pkt),
                Finished(rec, pkt, answers[rec.winner], answers, {h.id: h.node for h in self.cand_order})]
