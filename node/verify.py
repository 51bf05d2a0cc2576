"""Verified shards: spot checks of what shard servers compute (see docs/RELIABILITY.md).

A checked session asks every hop to *tap*: for each step it sends the client a signed copy of its
input and output (``tap_digest`` is what it signs). At a sampled step the client re-runs each hop's
input history on a second replica of the same layers (one prefill) and compares the outputs at
every position since the previous check within ``tolerance(dtype)``. On a mismatch a third replica
breaks the tie; the odd one out is banned by the client and reported (with its own signed taps as
evidence) to the tie-breaker, which re-checks on its own layers and publishes a signed ``verdict``
record. The pure parts (digests, tolerances, comparison, tie-breaking, evidence) are at the top; the
I/O at the bottom: ``reference_output``, the client's ``SpotChecker`` and the server's
``handle_report``.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any

import torch

log = logging.getLogger("swarmlm.verify")

VERDICT_KIND = "verdict"
# relative error of fp32 prefill vs incremental decode measured on builtin:tiny and SmolLM2 is ~1e-6..1e-5;
# half precision rounds at 2^-8 (bf16) / 2^-11 (fp16) per op: the bounds leave >10x room over measured noise
BASE_TOLERANCE = {"fp32": 1e-3, "float32": 1e-3, "bf16": 6e-2, "bfloat16": 6e-2, "fp16": 1e-2, "float16": 1e-2}
NOISE_FACTOR = 20.0


def tensor_bytes(x: Any) -> bytes:
    if x is None:
        return b""
    t = x.detach().contiguous().cpu()
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def tap_digest(session_id: str, step: int, pos: int, x_in: Any, x_out: Any, token: int | None) -> bytes:
    """What a server signs for one tapped step: its input, its output (or token), where and when."""
    h = hashlib.blake2b(digest_size=32, person=b"swarmlm-tap-v1")
    h.update(f"{session_id}|{step}|{pos}|{token}|".encode())
    for t in (x_in, x_out):
        h.update(str(None if t is None else (str(t.dtype), tuple(t.shape))).encode())
        h.update(tensor_bytes(t))
    return h.digest()


def tolerance(dtype: str, measured_noise: float = 0.0) -> float:
    """Largest relative error still counted as agreement: the dtype's bound, or 20x measured noise."""
    return max(BASE_TOLERANCE.get(dtype, 6e-2), NOISE_FACTOR * measured_noise)


def relative_error(a: Any, b: Any) -> float:
    """max |a - b| per position over the largest |b| of that position (hidden states: [1, T, H])."""
    a, b = a.float(), b.float()
    if a.shape != b.shape:
        return float("inf")
    if a.numel() == 0:
        return 0.0
    diff = (a - b).abs().flatten(2).amax(-1) if a.dim() >= 3 else (a - b).abs()
    scale = b.abs().flatten(2).amax(-1) if b.dim() >= 3 else b.abs()
    return float((diff / (scale + 1e-6)).max())


def odd_one_out(primary_vs_ref: bool, primary_vs_third: bool | None, ref_vs_third: bool | None) -> str | None:
    """Who disagrees with the other two: "primary", "reference", or None (undecided). Args: "agree"?"""
    if primary_vs_ref:
        return None
    if primary_vs_third is None or ref_vs_third is None:
        return None
    if ref_vs_third and not primary_vs_third:
        return "primary"
    if primary_vs_third and not ref_vs_third:
        return "reference"
    return None


@dataclass
class Tap:
    step: int
    pos: int
    x_in: Any
    x_out: Any
    token: int | None
    sig: bytes


@dataclass
class HopTaps:
    """The taps one hop sent in one session (by step)."""

    peer: str
    session_id: str
    start: int
    end: int
    head: bool
    taps: dict[int, Tap] = field(default_factory=dict)

    def history(self, upto_step: int) -> list[Tap]:
        return [self.taps[s] for s in sorted(self.taps) if s <= upto_step]

    def complete(self, upto_step: int) -> bool:
        return all(s in self.taps for s in range(upto_step + 1))


def concat_inputs(taps: list[Tap]) -> Any:
    return torch.cat([t.x_in for t in taps], dim=1)


def concat_outputs(taps: list[Tap]) -> Any:
    return torch.cat([t.x_out for t in taps], dim=1)


def evidence(hop: HopTaps, upto_step: int) -> dict[str, Any]:
    """The accused's own signed taps, packed for a ``report`` call (two tensors, a list of steps)."""
    hist = hop.history(upto_step)
    return {"accused": hop.peer, "session_id": hop.session_id, "start": hop.start, "end": hop.end,
            "steps": [[t.step, t.pos, t.x_in.shape[1], t.x_out.shape[1], t.sig] for t in hist],
            "in": concat_inputs(hist), "out": concat_outputs(hist)}


def check_evidence(ev: dict[str, Any], verify_sig: Any) -> tuple[Any, Any]:
    """Split packed evidence back into steps, check each signature; the inputs and outputs (or raise)."""
    x_in, x_out, steps = ev["in"], ev["out"], ev["steps"]
    if not isinstance(x_in, torch.Tensor) or not isinstance(x_out, torch.Tensor) or not isinstance(steps, list):
        raise ValueError("evidence needs tensors in, out and a list of steps")
    if x_in.dim() < 2 or x_out.dim() != 3 or x_in.shape[0] != 1 or x_out.shape[0] != 1 or not steps:
        raise ValueError("evidence tensors must be [1, T, ...] and [1, T, H]")
    a = b = 0
    for row in steps:
        if not (isinstance(row, list) and len(row) == 5 and all(isinstance(v, int) for v in row[:4])
                and isinstance(row[4], bytes)):
            raise ValueError("evidence steps must be [step, pos, n_in, n_out, signature]")
        step, pos, n_in, n_out, sig = row
        t_in, t_out = x_in[:, a:a + n_in], x_out[:, b:b + n_out]
        if t_in.shape[1] != n_in or t_out.shape[1] != n_out or pos != a:
            raise ValueError("evidence steps do not tile the history")
        if not verify_sig(tap_digest(ev["session_id"], step, pos, t_in, t_out, None), bytes(sig)):
            raise ValueError(f"evidence step {step}: bad signature of the accused")
        a, b = a + n_in, b + n_out
    if a != x_in.shape[1] or b != x_out.shape[1]:
        raise ValueError("evidence has tensor data beyond its steps")
    return x_in, x_out


# -- I/O --------------------------------------------------------------------------------------------

async def reference_output(rpc: Any, peer: str, model: str, start: int, end: int, x_hist: Any,
                           sampling: dict | None = None, last_pos: int | None = None, timeout_s: float = 30.0) -> Any:
    """Run ``x_hist`` through layers [start, end) of ``peer`` in a fresh session: the hidden states for
    every position (non-head), or the token sampled at the last step (head; ``last_pos`` is where that
    step started, so the sampler seed is the one the route used)."""
    import trio

    from swarmlm.node.shard_service import SHARD_PROTOCOL

    T = x_hist.shape[1]
    args = {"session_id": secrets.token_hex(16), "model": model, "start": start, "end": end, "max_length": T,
            "prev": None, "next": None, "next_session": None, "sampling": sampling, "logits": False}
    with trio.fail_after(timeout_s):
        async with rpc.stream(peer, SHARD_PROTOCOL, "session", args, timeout=timeout_s) as call:
            if sampling is not None and last_pos:
                await call.send({"step": 0, "pos": 0, "x": x_hist[:, :last_pos], "want": False})
                await call.send({"step": 1, "pos": last_pos, "x": x_hist[:, last_pos:], "want": True})
            else:
                await call.send({"step": 0, "pos": 0, "x": x_hist, "want": True})
            async for msg in call:
                if not isinstance(msg, dict) or msg.get("step") in (-1, None):
                    continue
                if "token" in msg and msg.get("token") is not None:
                    await call.end()
                    return int(msg["token"])
                if "x" in msg and (sampling is None):
                    await call.end()
                    return msg["x"]
    raise RuntimeError(f"{peer[-8:]} answered no reference output")


class VerificationFailed(Exception):
    """Raised by ``SpotChecker.check``; the client turns it into a ``HopFailed`` failover."""

    def __init__(self, peer: str, reason: str, verdict: bool = False) -> None:
        super().__init__(f"{peer}: {reason}")
        self.peer, self.reason, self.verdict = peer, reason, verdict


class SpotChecker:
    """The client's side of verification for one generation (see the module docstring).

    ``sample()`` draws whether to check this step (probability ``fraction``); ``check(sess, step)``
    verifies every hop of ``sess`` up to ``step``; ``stats`` counts what happened.
    """

    def __init__(self, client: Any, model: str, fraction: float, sampling: dict | None, rng: Any,
                 stats: dict[str, Any]) -> None:
        self.client, self.model, self.fraction, self.sampling, self.rng = client, model, fraction, sampling, rng
        self.stats = stats
        self._done: dict[str, int] = {}  # hop session id -> positions already verified

    def sample(self) -> bool:
        return self.fraction > 0 and self.rng.random() < self.fraction

    def _replicas(self, start: int, end: int, exclude: set[str]) -> list[str]:
        peers = sorted({s.peer_id for s in self.client.servers(self.model)
                        if s.start <= start and end <= s.end and s.peer_id not in exclude})
        self.rng.shuffle(peers)
        return peers

    async def _reference(self, peer: str, hop: HopTaps, x_in: Any, last_pos: int) -> Any:
        await self.client.ensure_connected(peer)
        return await reference_output(self.client.host.rpc, peer, self.model, hop.start, hop.end, x_in,
                                      sampling=self.sampling if hop.head else None, last_pos=last_pos)

    async def check(self, sess: Any, step: int) -> None:
        self.stats["checks"] = self.stats.get("checks", 0) + 1
        hops = sess.taps
        for a, b in zip(hops, hops[1:]):  # what hop i signed as output is what hop i+1 signed as input
            for s in range(step + 1):
                ta, tb = a.taps.get(s), b.taps.get(s)
                if ta is None or tb is None or not torch.equal(ta.x_out, tb.x_in.to(ta.x_out.dtype)):
                    self.client.bans.ban(a.peer)
                    raise VerificationFailed(b.peer, f"input of step {s} differs from what {a.peer[-8:]} signed")
        for hop in hops:
            await self._check_hop(hop, step)

    async def _check_hop(self, hop: HopTaps, step: int) -> None:
        hist = hop.history(step)
        x_in = concat_inputs(hist)
        banned = set(self.client.bans.active())
        cands = self._replicas(hop.start, hop.end, {hop.peer} | banned)
        if not cands:
            self.stats["unverifiable"] = self.stats.get("unverifiable", 0) + 1
            return
        if hop.head:
            last = hist[-1]
            if last.token is None:
                return
            claimed: Any = last.token
            lo = 0
        else:
            claimed = concat_outputs(hist)
            lo = self._done.get(hop.session_id, 0)
            tol = tolerance(str(claimed.dtype).replace("torch.", ""), self.stats.get("noise", 0.0))

        def agree(x: Any, y: Any) -> bool:
            if hop.head:
                return x == y
            return relative_error(x[:, lo:], y[:, lo:]) <= tol

        ref1 = await self._reference(cands[0], hop, x_in, hist[-1].pos)
        if agree(claimed, ref1):
            self._done[hop.session_id] = x_in.shape[1]
            return
        self.stats["mismatches"] = self.stats.get("mismatches", 0) + 1
        ref2 = await self._reference(cands[1], hop, x_in, hist[-1].pos) if len(cands) > 1 else None
        who = odd_one_out(False, None if ref2 is None else agree(claimed, ref2),
                          None if ref2 is None else agree(ref1, ref2))
        if who == "reference":  # the first replica lied to us; the hop was right
            self.client.bans.ban(cands[0])
            self._done[hop.session_id] = x_in.shape[1]
            return
        if who is None:
            raise VerificationFailed(hop.peer, "disagrees with a replica and no third one settles it")
        self.stats.setdefault("detected", []).append(hop.peer)
        reported = False
        if not hop.head:
            try:
                ev = dict(evidence(hop, step), model=self.model)
                r = await self.client.host.rpc.call(cands[1], "/swarmlm/shard/1", "report", ev, timeout=60)
                reported = isinstance(r, dict) and r.get("verdict") == "fail"
            except Exception as exc:  # the verdict is a bonus: the client bans and fails over anyway
                self.stats.setdefault("report_errors", []).append(str(exc)[:200])
        self.stats["verdicts"] = self.stats.get("verdicts", 0) + int(reported)
        raise VerificationFailed(hop.peer, f"layers [{hop.start}, {hop.end}) disagree with two replicas", reported)


async def handle_report(svc: Any, reporter: str, args: Any) -> dict[str, Any]:
    """The ``report`` method of ``/swarmlm/shard/1`` on ``svc`` (a ShardService): check the accused's
    signatures, recompute its input history on our layers, and publish a signed verdict if it was wrong."""
    import trio

    from swarmlm.crypto.identity import verify_by_peer_id
    from swarmlm.models.errors import CacheBudgetExceeded
    from swarmlm.net.rpc import BAD_REQUEST, BUSY, UNAVAILABLE, RpcError
    from swarmlm.node.shard_service import MAX_STEP_TOKENS

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
    view = svc._view(start, end)
    tmp = "report-" + hashlib.blake2b(repr(args["steps"]).encode(), digest_size=8).hexdigest()

    def recompute() -> Any:
        cache = svc.cache.open(tmp, T, layout=view.cache_layout())
        try:
            with torch.no_grad():
                return view.forward(x_in, cache, 0, last_only=False)
        finally:
            svc.cache.close(tmp)

    try:
        ref = await trio.to_thread.run_sync(recompute, limiter=svc._compute)
    except CacheBudgetExceeded as exc:
        raise RpcError(BUSY, str(exc)) from None
    except Exception as exc:
        raise RpcError(BAD_REQUEST, f"report: cannot recompute: {exc}") from None
    err, tol = relative_error(x_out, ref), tolerance(sh.dtype_name)
    verdict = "fail" if err > tol else "pass"
    if verdict == "fail":
        state = svc.node.service("state") if svc.node is not None else None
        body = {"subject": accused, "verdict": "fail", "model": svc.model_id, "start": start, "end": end,
                "max_err": round(err, 6), "tol": tol, "reporter": reporter, "tokens": T,
                "reason": f"layers [{start}, {end}) off by {err:.3g} (tolerance {tol:.3g}) over {T} tokens"}
        if state is not None:
            state.add_record(VERDICT_KIND, body)
        log.warning("verdict: %s computed layers [%d, %d) wrongly (error %.3g > %.3g)", accused[-8:], start, end,
                    err, tol)
    return {"verdict": verdict, "max_err": err, "tol": tol}


def verdicts_from_state(state: Any) -> list[Any]:
    """The signed "fail" verdict records of the swarm state, as the reputation fold takes them."""
    from swarmlm.consensus.reputation import Verdict

    out = []
    for rec in state.records(kind=VERDICT_KIND):
        body = rec.body
        if isinstance(body, dict) and body.get("verdict") == "fail" and isinstance(body.get("subject"), str):
            out.append(Verdict(subject=body["subject"], time=float(rec.created), id=rec.key, reporter=rec.author))
    return out
