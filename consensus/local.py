"""Drive a whole round in memory: a reference driver for the state machine (tests, demos, the node's model).

Every packet goes through ``encode``/``decode`` as it would on the wire. Nodes listed in
``silent`` never answer in the phase named (``"candidates"``, ``"commits"`` or ``"reveals"``), so
timeouts can be exercised; the clock advances by ``step`` per message and jumps to the deadline
when the machine waits on someone silent. Returns every action the coordinator emitted.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

from swarmlm.consensus.judging import Judge
from swarmlm.consensus.participant import JudgeSession, answer_packet, open_spec_packet
from swarmlm.consensus.records import JudgeRequest, Packet, RevealRequest, RoundSpec
from swarmlm.consensus.round import Action, CoordinatorRound, Phase, Send
from swarmlm.crypto.identity import Identity

Tamper = Callable[[JudgeSession, Packet], Packet]


def _wire(p: Packet) -> Packet:
    return Packet.decode(p.encode())


def run_local_round(coordinator: Identity, prompt: str, answers: Mapping[Identity, str],
                    judges: Mapping[Identity, Judge], weights: Mapping[str, float], now: float = 0.0, *,
                    seed: str = "local", silent: Mapping[str, Sequence[str]] | None = None, step: float = 0.01,
                    tamper_reveal: Tamper | None = None, **start_kw: object) -> tuple[CoordinatorRound, list[Action]]:
    silent = {k: set(v) for k, v in (silent or {}).items()}
    ids = {i.peer_id: i for i in list(answers) + list(judges)}
    answer_of = {i.peer_id: a for i, a in answers.items()}
    judge_of = {i.peer_id: j for i, j in judges.items()}
    rnd, actions = CoordinatorRound.start(coordinator, prompt, list(answer_of), list(judge_of), now,
                                          weights=weights, seed=seed, **start_kw)  # type: ignore[arg-type]
    log: list[Action] = list(actions)
    sessions: dict[str, JudgeSession] = {}
    t = now
    pending = list(actions)
    while rnd.phase not in (Phase.DONE, Phase.FAILED):
        inbox: list[Packet] = []
        for act in pending:
            if not isinstance(act, Send):
                continue
            pkt = _wire(act.packet)
            for peer in act.to:
                if peer not in ids:
                    continue
                reply = _respond(ids[peer], pkt, answer_of, judge_of, sessions, silent, tamper_reveal)
                if reply is not None:
                    inbox.append(_wire(reply))
        pending = []
        for pkt in inbox:
            t += step
            pending += rnd.receive(pkt, t)
        if not pending and rnd.next_deadline is not None:  # someone is silent: wait for the deadline
            t = max(t, rnd.next_deadline)
            pending = rnd.tick(t)
        log += pending
    return rnd, log


def _respond(me: Identity, pkt: Packet, answer_of: Mapping[str, str], judge_of: Mapping[str, Judge],
             sessions: dict[str, JudgeSession], silent: Mapping[str, set[str]],
             tamper_reveal: Tamper | None) -> Packet | None:
    pid = me.peer_id
    if pkt.domain == RoundSpec.DOMAIN:
        if pid in silent.get("candidates", ()):
            return None
        spec, _prompt = open_spec_packet(pkt)
        return answer_packet(me, spec, answer_of[pid], model="local", sampling="")
    if pkt.domain == JudgeRequest.DOMAIN:
        if pid in silent.get("commits", ()):
            return None
        sess = sessions[pid] = JudgeSession.open(me, pkt)
        return sess.commit(sess.decide(judge_of[pid]))
    if pkt.domain == RevealRequest.DOMAIN:
        if pid in silent.get("reveals", ()):
            return None
        out = sessions[pid].reveal(pkt)
        return tamper_reveal(sessions[pid], out) if tamper_reveal else out
    return None  # the final record: nothing to answer

