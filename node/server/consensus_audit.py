"""Known-answer audit rounds on the network: how judges earn standing (docs/CONSENSUS.md, "Audits").

After a round it coordinated for a client, a node starts, with probability
``ConsensusOptions.audit_share``, one more round in the background whose task is a labeled
question, under the same token limit and stop strings as the client's task, so candidates and
judges see a round like any other. The question is generated from 16 secret random bytes
(``consensus.auditgen``; revealed in the audit record after the round, so nobody can tell it from a
user's question before), or with ``audit_questions="shipped"`` drawn from the public shipped set.
When it finishes, the coordinator stores the round record and a signed ``AuditRecord`` (question id,
task, the candidates' answers) in the swarm state as an ``audit`` record. Every node's reputation
book checks it against the round and scores the judges against the key (``consensus.audits``,
``ReputationState.apply_audit``): with the default ``reputation="audits"`` that is the only way to
earn judging weight, and a judge caught voting against the key loses all of it.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any, Callable

from swarmlm.consensus.audit import verify_record
from swarmlm.consensus.auditgen import SEED_BYTES, generated
from swarmlm.consensus.audits import seal_audit, verify_audit
from swarmlm.consensus.evalset import Question, load_questions, prompt_of
from swarmlm.consensus.records import ConsensusError
from swarmlm.node.wire import MAX_K, task_text

log = logging.getLogger("swarmlm.consensus")

AUDIT_KIND = "audit"


class Audits:
    """The audit side of one ``ConsensusService``."""

    def __init__(self, service: Any) -> None:
        self.svc = service
        self.done: list[dict[str, Any]] = []  # audits coordinated here (newest last)
        self.new_seed: Callable[[], bytes] = lambda: secrets.token_bytes(SEED_BYTES)  # tests may fix it

    def maybe_after(self, task: dict[str, Any], k: int) -> None:
        """After a client's round: start an audit round in the background with ``audit_share`` odds."""
        share = self.svc.options.audit_share
        if share > 0.0 and self.svc._bg is not None and self.svc.rng.random() < share:
            self.svc._bg.start_soon(self.run_quietly, task["model"], int(task["max_new_tokens"]),
                                    list(task["stop"]), k)

    async def run_quietly(self, model: str, max_new_tokens: int, stop: list[str], k: int) -> None:
        try:
            await self.run(model, max_new_tokens=max_new_tokens, stop=stop, k=k)
        except Exception as exc:  # an audit that cannot run costs nothing but its round
            log.info("audit round not completed: %s", str(exc)[:200])

    async def run(self, model: str, question: Question | None = None, *, max_new_tokens: int = 32,
                  stop: list[str] | None = None, k: int = 3) -> dict[str, Any]:
        """Coordinate one audit round; store its round and audit records; which candidates were right."""
        svc = self.svc
        if question is not None:
            q = question
        elif svc.options.audit_questions == "generated":
            q = generated(self.new_seed())
        else:
            q = svc.rng.choice(load_questions())
        text = task_text(model, None, [{"role": "user", "content": prompt_of(q)}], max_new_tokens, list(stop or []))
        fin = await svc._coordinate(text, model, max(2, min(k, MAX_K)))
        envelope = fin.packet.envelope.encode()
        v = verify_record(envelope)
        try:
            svc.store_record(envelope)  # the round counts like any other even if its audit cannot be stored
            data = seal_audit(svc.identity, v, q.id, text, {c: fin.answers[c] for c in v.candidate_ids})
            svc.store_record(data, AUDIT_KIND)  # long answers: as a blob, like a large round record
        except Exception as exc:  # e.g. answers beyond even a blob's limit
            raise ConsensusError(f"audit round {fin.round_id[:12]} not stored: {exc}") from None
        right = verify_audit(data, v)
        out = {"round_id": fin.round_id, "question": q.id,
               "right": {fin.nodes[c]: ok for c, ok in right.items()}}
        self.done = (self.done + [out])[-20:]
        log.info("audit round %s (%s): %d of %d candidates right", fin.round_id[:12], q.id, sum(right.values()),
                 len(right))
        return out
