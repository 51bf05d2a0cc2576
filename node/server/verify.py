"""Verified shards, the server's side: the ``report`` method of ``/swarmlm/shard/1``.

A client that caught a hop computing layers we host wrongly sends the accused's own signed taps
(``node/verification.py`` ``evidence``); we check the signatures, recompute its input history on our
own layers and, if its output was off beyond the tolerance, publish a signed verdict record.
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
from swarmlm.node.verification import check_evidence, evidence_rows, relative_error, tolerance
from swarmlm.node.wire import MAX_STEP_TOKENS, VERDICT_KIND

log = logging.getLogger("swarmlm.verify")


async def handle_report(svc: Any, reporter: str, args: Any) -> dict[str, Any]:
    """The ``report`` method of ``/swarmlm/shard/1`` on ``svc`` (a ShardService): check the accused's
    signatures, recompute its input history on our layers, and publish a signed verdict if it was wrong."""
    sh = svc.shard
    if sh is None or not isinstance(args, dict):
        raise RpcError(BAD_REQUEST if sh is not None else UNAVAILABLE, "report: expected a map of evidence")
    try:
        accused, start, end = str(args["accused"]), int(args["start"]), int(args["end"])
        if args.get("model") != svc.model_id or not (sh.start <= start < end <= sh.end):
            raise ValueError("evidence is for layers or a model this node does not host")
        if end == sh.num_layers_total:
            raise ValueError("head hops are checked by their tokens; no verdict from evidence")
        x_in, x_out = check_evidence(args, lambda m, sig: verify_by_peer_id(accused, m, sig))
    except (KeyError, TypeError, ValueError) as exc:
        raise RpcError(BAD_REQUEST, f"report: {exc}") from None
    T = x_in.shape[1]
    if T > min(svc.max_cache_tokens, MAX_STEP_TOKENS):
        raise RpcError(BAD_REQUEST, f"report: history of {T} tokens is too long")
    view = svc.view(start, end)
    tmp = "report-" + hashlib.blake2b(repr(args["steps"]).encode(), digest_size=8).hexdigest()

    def recompute() -> Any:
        cache = svc.cache.open(tmp, T, layout=view.cache_layout())
        try:
            with torch.no_grad():
                return view.forward(x_in, cache, 0, last_only=False)
        finally:
            svc.cache.close(tmp)

    try:
        ref = await trio.to_thread.run_sync(recompute, limiter=svc.compute_limiter)
    except CacheBudgetExceeded as exc:
        raise RpcError(BUSY, str(exc)) from None
    except Exception as exc:
        raise RpcError(BAD_REQUEST, f"report: cannot recompute: {exc}") from None
    err, tol = relative_error(x_out, ref), tolerance(sh.dtype_name)
    verdict = "fail" if err > tol else "pass"
    if verdict == "fail":
        state = svc.node.state if svc.node is not None else None
        sigs = b"".join(bytes(row[4]) for row in evidence_rows(args["steps"]))
        body = {"v": 1, "subject": accused, "verdict": "fail", "hop": "middle", "model": svc.model_id,
                "start": start, "end": end, "max_err": round(err, 6), "tol": tol, "reporter": reporter, "tokens": T,
                "evidence": hashlib.sha256(sigs).hexdigest(),
                "reason": f"layers [{start}, {end}) off by {err:.3g} (tolerance {tol:.3g}) over {T} tokens"}
        if state is not None:
            state.add_record(VERDICT_KIND, body)
        log.warning("verdict: %s computed layers [%d, %d) wrongly (error %.3g > %.3g)", accused[-8:], start, end,
                    err, tol)
    return {"verdict": verdict, "max_err": err, "tol": tol}
