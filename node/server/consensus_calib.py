"""Calibration over the network: a node proves it can judge before its votes carry weight.

Only used when the swarm's consensus calibration policy is ``required`` (all nodes of a swarm must
agree on it, as on anchors, or their reputation folds differ). Then, once a node hosts a whole
model and the swarm state holds no passed calibration record for it, it asks another node that
hosts a model (any, calibrated or not) to examine it, over ``/swarmlm/consensus/1``:

1. ``calib_challenge`` (subject -> examiner): the examiner signs a ``CalibrationChallenge`` for the
   calling peer (one per subject per ``calib_retry_s``, so failing nodes cannot fish for an easy
   seed) and remembers it;
2. the subject answers the generated puzzles with its model (``ModelBackend.choose``, in a thread)
   and signs its answer sheet;
3. ``calib_grade`` (subject -> examiner): the examiner grades it (``grade_challenge``), adds the
   signed ``CalibrationRecord`` to the swarm state as a ``calibration`` record, passed or not, and
   returns it.

Every node's reputation fold re-grades the record (``verify_calibration``) before it counts.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import trio

from swarmlm.consensus.calibration import (CalibrationAnswers, CalibrationChallenge, answer_challenge,
                                           grade_challenge, issue_challenge, verify_calibration)
from swarmlm.consensus.records import ConsensusError, open_as
from swarmlm.net.rpc import BAD_REQUEST, BUSY, RpcError
from swarmlm.net.rpc_server import CallContext
from swarmlm.node.dial import ensure_connected
from swarmlm.node.wire import CONSENSUS_PROTOCOL

log = logging.getLogger("swarmlm.consensus")


class Calibration:
    def __init__(self, service: Any) -> None:
        self.svc = service
        self.issued: dict[str, bytes] = {}  # challenge id -> challenge envelope
        self.last_exam: dict[str, float] = {}  # subject -> when we last challenged it (monotonic)
        self.attempts = 0

    def register(self, rpc: Any) -> None:
        rpc.add_unary(CONSENSUS_PROTOCOL, "calib_challenge", self._challenge)
        rpc.add_unary(CONSENSUS_PROTOCOL, "calib_grade", self._grade)

    # -- examiner -----------------------------------------------------------------------------------
    async def _challenge(self, ctx: CallContext, args: Any) -> Any:
        node = self.svc.node
        if ctx.peer == node.peer_id:
            raise RpcError(BAD_REQUEST, "a node cannot examine itself")
        now = time.monotonic()
        last = self.last_exam.get(ctx.peer)
        if last is not None and now - last < self.svc.options.calib_retry_s:
            raise RpcError(BUSY, f"examined {now - last:.0f} s ago; retry later")
        self.last_exam[ctx.peer] = now
        env = issue_challenge(node.identity, ctx.peer, time.time(), ttl=600.0)
        ch = open_as(CalibrationChallenge, env)
        self.issued[ch.id] = env.encode()
        if len(self.issued) > 1024:
            self.issued.pop(next(iter(self.issued)))
        return env.encode()

    async def _grade(self, ctx: CallContext, args: Any) -> Any:
        node = self.svc.node
        blob = args.get("answers") if isinstance(args, dict) else None
        if not isinstance(blob, (bytes, bytearray)):
            raise RpcError(BAD_REQUEST, "calib_grade: expected {answers: envelope}")
        an = open_as(CalibrationAnswers, bytes(blob))
        ch = self.issued.get(an.challenge_id)
        if ch is None or an.subject != ctx.peer:
            raise ConsensusError("no open challenge of ours for that answer sheet")
        rec = grade_challenge(node.identity, ch, bytes(blob), time.time())
        del self.issued[an.challenge_id]
        node.state.add_record("calibration", rec.encode())
        return rec.encode()

    # -- subject ------------------------------------------------------------------------------------
    def passed(self, peer: str) -> bool:
        for rec in self.svc.node.state.state.records(kind="calibration"):
            if not isinstance(rec.body, (bytes, bytearray)):
                continue
            try:
                cal = verify_calibration(bytes(rec.body))
            except ConsensusError:
                continue
            if cal.subject == peer and cal.passed:
                return True
        return False

    def examiners(self) -> list[str]:
        node = self.svc.node
        peers = node.state.state.peers(time.time())
        return [e.peer_id for e in peers if e.peer_id != node.peer_id and e.hosted]

    async def run(self) -> None:
        """Get examined until a passed calibration record for us is in the state."""
        node = self.svc.node
        await trio.sleep(1.0)
        while True:
            if self.svc.hosted() is not None and not self.passed(node.peer_id):
                for ex in sorted(self.examiners(), key=lambda _: self.svc.rng.random()):
                    try:
                        if await self.examine_me(ex):
                            break
                    except Exception as exc:  # that examiner is busy, gone or refuses: try another
                        log.info("calibration by %s: %s", ex[-6:], str(exc)[:200])
                else:
                    await trio.sleep(5.0)
                    continue
                await trio.sleep(self.svc.options.calib_retry_s)
                continue
            await trio.sleep(10.0)

    async def examine_me(self, examiner: str) -> bool:
        """One calibration by ``examiner``; True once a record (passed or failed) came back."""
        svc, node = self.svc, self.svc.node
        await ensure_connected(node.host, node.state.state, examiner)
        ch = await node.host.rpc.call(examiner, CONSENSUS_PROTOCOL, "calib_challenge", None, timeout=30)
        challenge = open_as(CalibrationChallenge, bytes(ch))
        if challenge.subject != node.peer_id or challenge.examiner != examiner:
            raise ConsensusError("the examiner sent a challenge for someone else")
        self.attempts += 1
        if svc.options.puzzle_answerer is not None:
            answers = [svc.options.puzzle_answerer(p) for p in challenge.puzzles()]
        else:
            be = await svc.backend()
            answers = [await svc.compute(be.choose, p) for p in challenge.puzzles()]
        sheet = answer_challenge(node.identity, bytes(ch), answers)
        rec = await node.host.rpc.call(examiner, CONSENSUS_PROTOCOL, "calib_grade", {"answers": sheet.encode()}, timeout=60)
        cal = verify_calibration(bytes(rec))
        log.info("calibration by %s: %d/%d, %s", examiner[-6:], cal.correct, challenge.count,
                 "passed" if cal.passed else "failed")
        return True
