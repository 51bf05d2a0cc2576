"""Verified shards, the server's side: the ``report`` method of ``/swarmlm/shard/1``.

A client that caught a hop computing layers we host wrongly sends the accused's own signed taps
(``node/verification.py``: ``evidence`` for a middle hop, ``head_evidence`` for the hop holding the
LM head). We check every signature against the accused's peer id (a client cannot frame a server
for an output or a token it did not sign), recompute its input history on our own layers and, if
its outputs were off beyond the tolerance (or one of its tokens is not what its own signed sampling
parameters give at that position), publish a signed verdict record. The answer (``pass``/``fail``)
is also the client's tie-break between the accused and its first reference.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import torch
import trio

from swarmlm.crypto.identity import verify_by_peer_id
from swarmlm.models.errors import CacheBudgetExceeded
from swarmlm.net.rpc import BAD_REQUEST, BUSY, UNAVAILABLE, RpcError
from swarmlm.node.server.check import CheckSession, head_claims
from swarmlm.node.verification import check_evidence, check_head_evidence, evidence_rows, relative_error, tolerance
from swarmlm.node.wire import MAX_STEP_TOKENS, VERDICT_KIND

log = logging.getLogger("swarmlm.verify")


def _parse(svc: Any, args: Any) -> tuple[str, int, int, bool, Any, Any]:
    """(accused, start, end, head, inputs, outputs or head claims) from checked evidence."""
    sh = svc.shard
    if sh is None or not isinstance(args, dict):
        raise RpcError(BAD_REQUEST if sh is not None else UNAVAILABLE, "report: expected a map of evidence")
    try:
        accused, start, end = str(args["accused"]), int(args["start"]), int(args["end"])
        if args.get("model") != svc.model_id or not (sh.start <= start < end <= sh.end):
            raise ValueError("evidence is for layers or a model this node does not host")
        head = end == sh.num_layers_total
        if bool(args.get("head")) != head:
            raise ValueError("head evidence is for the hop holding the LM head, and only that hop")
        check = check_head_evidence if head else check_evidence
        x_in, claimed = check(args, lambda m, sig: verify_by_peer_id(accused, m, sig))
    except (KeyError, TypeError, ValueError) as exc:
        raise RpcError(BAD_REQUEST, f"report: {exc}") from None
    return accused, start, end, head, x_in, claimed


async def handle_report(svc: Any, reporter: str, args: Any) -> dict[str, Any]:
    """The ``report`` method of ``/swarmlm/shard/1`` on ``svc`` (a ShardService): check the accused's
    signatures, recompute its input history on our layers, and publish a signed verdict if it was wrong."""
    accused, start, end, head, x_in, claimed = _parse(svc, args)
    sh = svc.shard
    T = x_in.shape[1]
    if T > min(svc.max_cache_tokens, MAX_STEP_TOKENS):
        raise RpcError(BAD_REQUEST, f"report: history of {T} tokens is too long")
    view = svc.view(start, end)
    tmp = "report-" + hashlib.blake2b(repr(args["steps"]).encode(), digest_size=8).hexdigest()
    sampling = args.get("sampling") if head else None

    def recompute() -> Any:
        sess = CheckSession(view, svc.cache.open(tmp, T, layout=view.cache_layout()))
        try:
            with torch.no_grad():
                if head:
                    return head_claims(svc, sess, x_in, 0, claimed, sampling)[1]
                return svc.forward(sess, x_in, 0, last_only=False)
        finally:
            svc.cache.close(tmp)

    try:
        ref = await trio.to_thread.run_sync(recompute, limiter=svc.compute_limiter)
    except CacheBudgetExceeded as exc:
        raise RpcError(BUSY, str(exc)) from None
    except Exception as exc:
        raise RpcError(BAD_REQUEST, f"report: cannot recompute: {exc}") from None
    tol = tolerance(sh.dtype_name)
    if head:
        err = max(ref)
        what = f"{sum(g > tol for g in ref)} of {len(ref)} tokens are not what its sampling gives"
    else:
        err = relative_error(claimed, ref)
        tol = max(tol, tolerance(str(claimed.dtype)))  # outputs down-cast on the wire (fp16/bf16)
        what = f"layers [{start}, {end}) off by {err:.3g} (tolerance {tol:.3g})"
    verdict = "fail" if not err <= tol else "pass"
    if verdict == "fail":
        state = svc.node.state if svc.node is not None else None
        rows = evidence_rows(args["steps"]) if not head else args["steps"]
        sigs = b"".join(bytes(row[4]) for row in rows)
        body = {"v": 1, "subject": accused, "verdict": "fail", "hop": "head" if head else "middle",
                "model": svc.model_id, "start": start, "end": end, "max_err": round(min(err, 1e9), 6), "tol": tol,
                "reporter": reporter, "tokens": T, "evidence": hashlib.sha256(sigs).hexdigest(),
                "reason": f"{what} over {T} tokens"}
        if state is not None:
            state.add_record(VERDICT_KIND, body)
        log.warning("verdict: %s computed layers [%d, %d) wrongly: %s", accused[-8:], start, end, what)
    return {"verdict": verdict, "max_err": min(err, 1e9), "tol": tol}
