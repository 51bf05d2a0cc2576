"""Verified shards, the client's side: spot checks of what the servers of a route compute.

At a sampled step ``SpotChecker.check`` re-runs each hop's input history on a second replica of the
same layers (``reference_output``: one prefill in a fresh session) and compares; on a mismatch a
third replica breaks the tie, the odd one out is banned and reported with its own signed taps as
evidence to the tie-breaker (``node/server/verify.py``), which publishes a signed verdict. The pure
parts are in ``node/verification.py``; see docs/RELIABILITY.md.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

import torch
import trio

from swarmlm.node.verification import (HopTaps, concat_inputs, concat_outputs, evidence, odd_one_out, relative_error,
                                       tolerance)
from swarmlm.node.wire import SHARD_PROTOCOL, SessionOpen

log = logging.getLogger("swarmlm.verify")


async def reference_output(rpc: Any, peer: str, model: str, start: int, end: int, x_hist: Any,
                           sampling: dict | None = None, last_pos: int | None = None, timeout_s: float = 30.0) -> Any:
    """Run ``x_hist`` through layers [start, end) of ``peer`` in a fresh session: the hidden states for
    every position (non-head), or the token sampled at the last step (head; ``last_pos`` is where that
    step started, so the sampler seed is the one the route used)."""
    T = x_hist.shape[1]
    args = SessionOpen(secrets.token_hex(16), model, start, end, T, sampling=sampling).to_args()
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
        self.checks = self.unverifiable = 0  # this generation's (the summary reports them)
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
        self.checks += 1
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
            self.unverifiable += 1
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
        if not hop.head:  # both replicas that agreed re-check the evidence: two independent verdicts
            ev = dict(evidence(hop, step), model=self.model)
            for witness in (cands[1], cands[0]):
                try:
                    r = await self.client.host.rpc.call(witness, SHARD_PROTOCOL, "report", ev, timeout=60)
                    reported = reported or isinstance(r, dict) and r.get("verdict") == "fail"
                except Exception as exc:  # the verdict is a bonus: the client bans and fails over anyway
                    self.stats.setdefault("report_errors", []).append(str(exc)[:200])
        self.stats["verdicts"] = self.stats.get("verdicts", 0) + int(reported)
        raise VerificationFailed(hop.peer, f"layers [{hop.start}, {hop.end}) disagree with two replicas", reported)
