"""Reference sessions for verification: the ``check`` method of ``/swarmlm/shard/1``.

A client verifying a hop of its route opens a ``check`` stream on a replica of the hop's layers
(``SessionOpen`` arguments, no neighbours, no taps) and feeds it the hop's inputs in order, one
``wire.CheckItem`` per check: the session keeps its KV cache, so each check computes only the
positions since the previous one, as one batch. We answer every item (``wire.check_answer``) with
our outputs for each of its positions (a middle hop) or, holding the LM head, with our own token
and the claimed token's gap for each claim (``verification.sample_gap``).

Checks are budgeted as checks, apart from inference sessions: at most ``CheckLimits.per_peer`` open
per client and ``CheckLimits.total`` in all (beyond: ``busy``), never counted against
``max_sessions``; their KV cache comes from the node's cache budget (when it does not fit: ``busy``,
and the client asks another replica). ``head_claims`` is shared with the report handler
(``node/server/verify.py``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import trio

from swarmlm.errors import SwarmError
from swarmlm.models.errors import CacheBudgetExceeded
from swarmlm.net.rpc import BAD_REQUEST, BUSY, RpcError
from swarmlm.net.rpc_server import ServerCall
from swarmlm.node.verification import sample_gap
from swarmlm.node.wire import CheckItem, SessionOpen, WireError, check_answer

log = logging.getLogger("swarmlm.verify")

HEAD_CHUNK = 256  # positions whose logits one head computation holds at a time ([1, 256, vocab] floats)


@dataclass
class CheckLimits:
    """Open reference sessions per client and in all."""

    per_peer: int = 4
    total: int = 32
    open: dict[str, int] = field(default_factory=dict)

    def take(self, peer: str) -> None:
        if self.open.get(peer, 0) >= self.per_peer or sum(self.open.values()) >= self.total:
            raise RpcError(BUSY, f"check: {sum(self.open.values())} reference sessions open here; ask another replica")
        self.open[peer] = self.open.get(peer, 0) + 1

    def give(self, peer: str) -> None:
        left = self.open.get(peer, 0) - 1
        if left > 0:
            self.open[peer] = left
        else:
            self.open.pop(peer, None)


@dataclass
class CheckSession:
    view: Any
    cache: Any


def head_claims(svc: Any, sess: Any, x: Any, pos: int, claims: list[tuple[int, int, int]],
                sampling: dict | None) -> tuple[list[int], list[float]]:
    """(Blocking.) Run ``x`` at ``pos`` through ``sess`` (its view holds the LM head); for each claim
    ``(offset, seed_pos, token)`` our token at ``pos + offset`` and the claimed token's gap. Logits
    are computed only from the first claim on, ``HEAD_CHUNK`` positions at a time."""
    T = x.shape[1]
    first = min((c[0] for c in claims), default=T)
    at, rows = 0, {}
    if first > 0:  # the positions before the first claim: only their KV cache
        svc.forward(sess, x[:, :first], pos, last_only=True)
        at = first
    wanted = {c[0] for c in claims}
    while at < T:
        n = min(HEAD_CHUNK, T - at)
        out = svc.forward(sess, x[:, at:at + n], pos + at, last_only=False)
        for off in range(at, at + n):
            if off in wanted:
                rows[off] = out[0, off - at]
        at += n
    tokens, gaps = [], []
    for off, seed_pos, tok in claims:
        mine, gap = sample_gap(rows[off], tok, sampling, seed_pos)
        tokens.append(mine)
        gaps.append(gap)
    return tokens, gaps


def _compute(svc: Any, sess: CheckSession, item: CheckItem, sampling: dict | None) -> dict[str, Any]:
    if sess.view.has_head:
        tokens, gaps = head_claims(svc, sess, item.x, item.pos, item.claims, sampling)
        return check_answer(item.step, tokens=tokens, gaps=gaps)
    return check_answer(item.step, out=svc.forward(sess, item.x, item.pos, last_only=False))


async def handle_check(svc: Any, call: ServerCall, o: SessionOpen) -> dict[str, Any]:
    """Serve one reference session on ``svc`` (a ShardService) until the client ends it."""
    peer = call.ctx.peer
    if o.prev or o.next or o.tap:
        raise RpcError(BAD_REQUEST, "check: a reference session has no neighbours and no taps")
    view = svc.view(o.start, o.end)
    svc.checks.take(peer)
    sid = f"check-{o.session_id}"
    try:
        try:
            view._check_window(o.max_length)
            cache = svc.cache.open(sid, o.max_length, layout=view.cache_layout())
        except CacheBudgetExceeded as exc:
            raise RpcError(BUSY, f"check: {exc}") from None
        except SwarmError as exc:
            raise RpcError(BAD_REQUEST, f"check: {exc}") from None
        sess, n = CheckSession(view, cache), 0
        try:
            async for raw in call:
                try:
                    item = CheckItem.parse(raw)
                except WireError as exc:
                    raise RpcError(BAD_REQUEST, str(exc)) from None
                if item.claims and not view.has_head:
                    raise RpcError(BAD_REQUEST, "check: token claims are for the hop holding the LM head")
                try:
                    answer = await trio.to_thread.run_sync(_compute, svc, sess, item, o.sampling,
                                                           limiter=svc.compute_limiter)
                except SwarmError as exc:  # bad positions, wrong hidden size, past max_length...
                    raise RpcError(BAD_REQUEST, f"check: {exc}") from None
                await call.send(answer)
                n += 1
        finally:
            svc.cache.close(sid)
    finally:
        svc.checks.give(peer)
    log.debug("check session %s for %s: %d items", o.session_id[:8], peer[-8:], n)
    return {"steps": n}
