"""Verified shards, the client's side: every hop of a route re-run on a replica and compared.

A generation with verification (``ClientOptions.check_fraction > 0``, the default) opens its route
sessions with taps: each hop sends the client a signed copy of every step's input and output (the
head: its input and sampled token). ``Verifier`` runs beside the token loop, as a background task of
the route session, so checks cost the answer no latency:

- **when**: a *round* is due after a step if any hop of the route has no standing with this client
  (``node/client/standing.py``: a new identity is checked on every step until it has earned it),
  otherwise with probability ``check_fraction``; and at the end of the generation when a hop has no
  standing or ``verify_final`` asks for it.
- **what**: a round covers every position since the previous one, for every hop at once. A hop's
  new inputs go to its reference session (``node/client/reference.py``: one ``check`` stream on
  another replica, extended each round, so checks batch steps and reuse the replica's KV cache;
  when the route session ends it goes back to the client's pool, ``reference_pool.py``, and a later
  round that draws the same replica takes the stream back, rewound to position 0).
  A middle hop's outputs are compared position by position (``relative_error`` within
  ``tolerance``); the head's token at *every* step since the last round (``sample_gap``: greedy
  or seeded sampling, the seed per position); and what hop i signed as output must be, bit for
  bit, what hop i+1 signed as input.
- **a check never costs the answer**: a replica that is unreachable, dead, busy, over budget or slow
  is replaced by the next one; with none left the hop is *unverifiable* for that round (the
  summary reports it) and the generation goes on.
- **mismatch**: the accused's own signed taps go to a third replica's ``report``
  (``node/server/verify.py``: tie-break and verdict). "fail": the hop is banned, forfeits its
  standing and the generation fails over from its last settled token (``VerificationFailed``);
  "pass": the first reference lied and is avoided. No third replica: the hop is banned locally and
  the generation fails over.
- **what counts as verified**: ``on_round(P, confirmed)`` tells the generation up to which
  position every hop was compared; only tokens sampled from those positions count as verified.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import trio

from swarmlm.node.client.reference import ReferenceSession, ReferenceUnavailable
from swarmlm.node.client.reference_pool import pool_key
from swarmlm.node.client.session import HopFailed
from swarmlm.node.dial import DOWN
from swarmlm.node.verification import (HopTaps, evidence, gaps_agree, head_evidence,
                                       relative_error, tolerance)
from swarmlm.node.wire import SHARD_PROTOCOL

log = logging.getLogger("swarmlm.verify")

TAP_BATCH = 8  # steps of taps a spot-checked hop sends per message (a hop checked on every step: 1)


class VerificationFailed(Exception):
    """A hop of the route was caught (or could not be cleared); the client fails over around it."""

    def __init__(self, peer: str, reason: str, verdict: bool = False) -> None:
        super().__init__(f"{peer}: {reason}")
        self.peer, self.reason, self.verdict = peer, reason, verdict


def bump(stats: dict[str, Any], key: str, n: int = 1) -> None:
    stats[key] = stats.get(key, 0) + n


@dataclass
class HopCheck:
    """One hop of the current route session, as the verifier follows it."""

    taps: HopTaps
    done: int = 0  # positions every check so far confirmed
    ref: ReferenceSession | None = None
    avoid: set[str] = field(default_factory=set)  # replicas that failed as references of this hop


class Verifier:
    """One generation's verification (see the module docstring). ``client`` is the
    PipelineGenerator (servers, bans, standing, rpc); ``on_round(P, confirmed)`` is called after
    each round: positions ``< P`` were checked, ``confirmed`` if every hop was compared."""

    def __init__(self, client: Any, model: str, sampling: dict | None, max_length: int, fraction: float,
                 final: bool, on_round: Callable[[int, bool], None]) -> None:
        self.client, self.model, self.sampling, self.max_length = client, model, sampling, max_length
        self.fraction, self.final, self.on_round = fraction, final, on_round
        self.stats: dict[str, Any] = client.verify_stats
        self.failure: VerificationFailed | HopFailed | None = None
        self.hops: list[HopCheck] = []
        self.sess: Any = None
        self._cancel: Callable[[], None] = lambda: None
        self._due = self._checked = self._latest = -1
        self._closing = False
        self._wake = trio.Event()
        self._done = trio.Event()
        self.kept: dict[int, int] = {}  # speculative verify passes: step -> rows kept (see ``keep``)

    # -- what the token loop calls ----------------------------------------------------------------------
    def new_probation(self) -> bool:
        """Whether a hop of the route has not earned standing yet: then every step is checked."""
        c = self.client
        return c.options.standing_steps > 0 and any(not c.standing.established(h.taps.peer) for h in self.hops)

    def tap_batches(self, peers: list[str]) -> list[int]:
        """Taps per message for each hop of a new route session: ``TAP_BATCH`` for a hop only
        spot-checked (established, ``fraction < 1``), so its taps cost a message per batch, not per
        step; 1 for a hop checked on every step. The hop cannot tell which steps get checked either way."""
        c, new = self.client, self.new_probation_of
        return [1 if self.fraction >= 1.0 or new(p) else TAP_BATCH for p in peers]

    def new_probation_of(self, peer: str) -> bool:
        return self.client.options.standing_steps > 0 and not self.client.standing.established(peer)

    def keep(self, step: int, rows: int) -> None:
        """Step ``step`` was a speculative verify pass of which the first ``rows`` positions were kept
        (the last token and the accepted drafts; the next pass overwrites the rest). Checks cover
        those rows only: attention is causal, so they are exactly what a plain run computes, and each
        hop's checked history stays one contiguous run of positions."""
        self.kept[step] = rows

    def _rows(self, t: Any) -> int:
        return min(self.kept.get(t.step, t.x_in.shape[1]), t.x_in.shape[1])

    def _inputs(self, taps: list[Any]) -> Any:
        return torch.cat([t.x_in[:, :self._rows(t)] for t in taps], dim=1)

    def _claims(self, hist: list[Any], lo: int) -> list[tuple[int, int, int]]:
        """The head's tokens: one per step (sampled at its last row, seeded by its ``pos``), or, for a
        verify pass, one per kept row (row i seeded by ``pos + i``, as ``sample_tokens`` draws them)."""
        out: list[tuple[int, int, int]] = []
        for t in hist:
            if isinstance(t.token, list):
                out += [(t.pos + i - lo, t.pos + i, int(t.token[i])) for i in range(self._rows(t))]
            elif t.token is not None:
                out.append((t.pos + t.x_in.shape[1] - 1 - lo, t.pos, t.token))
        return out

    def answered(self, step: int) -> None:
        """Step ``step`` of the session was answered (its taps are complete): maybe a round is due."""
        self._latest = step
        if self.new_probation() or self.client.rng.random() < self.fraction:
            self._due = step
            self._wake.set()  # only then: a step no round is drawn at wakes nothing

    async def settle(self) -> None:
        """The route session ends: a final round if one is due, then wait until the rounds are done."""
        if self._latest > self._checked and (self.final or self.new_probation()):
            self._due = self._latest
        if self._due > self._checked:  # a round waits for taps held back: ask for them (see docs/RELIABILITY.md)
            await self.sess.flush_taps()
        self._closing = True
        self._wake.set()
        await self._done.wait()

    async def run(self, sess: Any, cancel: Callable[[], None], *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Follow route session ``sess`` until ``settle``; on a caught hop set ``failure`` and ``cancel()``."""
        self.sess, self._cancel, self.failure = sess, cancel, None
        self.hops = [HopCheck(t) for t in sess.taps]
        self.kept = {}  # step numbers are per route session
        self._due = self._checked = self._latest = -1
        self._closing, self._done = False, trio.Event()
        task_status.started()
        try:
            while True:
                if self._due > self._checked:
                    await self._round(self._due)
                    continue
                if self._closing:
                    break
                self._wake = trio.Event()
                await self._wake.wait()
        except (VerificationFailed, HopFailed) as exc:  # HopFailed: a hop sent a bad tap, or none in time
            self.failure = exc
            self._cancel()
        finally:
            with trio.CancelScope(shield=True):  # each close is bounded (``ReferenceSession.aclose``)
                refs = [h.ref for h in self.hops if h.ref is not None]
                for h in self.hops:
                    h.ref = None
                await self._release(refs)
            self._done.set()

    async def _release(self, refs: list[ReferenceSession]) -> None:
        """Healthy references go back to the client's pool for later rounds (``reference_pool.py``);
        the rest, and any the pool lets go, are closed concurrently."""
        pool, close = getattr(self.client, "references", None), []
        for ref in refs:
            close += pool.put(ref) if pool is not None else [ref]
        if close:
            async with trio.open_nursery() as nursery:
                for ref in close:
                    nursery.start_soon(ref.aclose)

    # -- a round ----------------------------------------------------------------------------------
    async def _round(self, upto: int) -> None:
        async with trio.open_nursery() as nursery:  # references open while the (batched) taps are on their way
            for h in self.hops:
                if h.ref is None:
                    nursery.start_soon(self._warm, h)
            await self.sess.taps_through(upto)  # taps arrive beside the token loop, which never waits for them
        if self._due > upto and all(h.taps.complete(self._due) for h in self.hops):
            upto = self._due  # rounds drawn while we waited for the taps: one round covers them all
        taps0 = self.hops[0].taps.taps[upto]
        end = taps0.pos + self._rows(taps0)
        results: list[str] = []
        failures: list[VerificationFailed] = []
        signed, broken = trio.Event(), []

        async def one(h: HopCheck) -> None:
            try:
                results.append(await self._check_hop(h, upto, end, signed))
            except VerificationFailed as exc:
                failures.append(exc)
            except Exception:  # a bug must not cost the answer: log it, count the hop as unverifiable
                log.exception("checking %s failed", h.taps.peer[-8:])
                results.append("unverifiable")

        async with trio.open_nursery() as nursery:
            for h in self.hops:
                nursery.start_soon(one, h)
            await trio.sleep(0)  # the checks go out first: signatures and links are checked while they compute
            try:  # the taps this round reads (a bad signature: HopFailed, failover)
                self.sess.check_signatures(upto)
                self._check_links(self._checked + 1, upto)
            except (HopFailed, VerificationFailed) as exc:
                broken.append(exc)
                nursery.cancel_scope.cancel()
            signed.set()  # no answer is compared before this
        if broken:
            raise broken[0]
        if failures:
            raise failures[0]
        self._checked = upto
        bump(self.stats, "rounds")
        self.on_round(end, all(r == "ok" for r in results))

    def _check_links(self, first: int, upto: int) -> None:
        """What hop i signed as output is, bit for bit, what hop i+1 signed as input; the first hop
        signed what we fed it, the head the tokens it answered."""
        first_hop, head = self.hops[0].taps, self.hops[-1].taps
        for s in range(first, upto + 1):
            fed = self.sess.sent.get(s)
            if fed is not None and not torch.equal(first_hop.taps[s].x_in, fed):
                self.client.bans.ban(first_hop.peer)
                raise VerificationFailed(first_hop.peer, f"signed another input of step {s} than the one it was sent")
            if s in self.sess.answered and head.taps[s].token != self.sess.answered[s]:
                self.client.bans.ban(head.peer)
                raise VerificationFailed(head.peer, f"answered a token at step {s} other than the one it signed")
        for a, b in zip(self.hops, self.hops[1:]):
            for s in range(first, upto + 1):
                ta, tb = a.taps.taps.get(s), b.taps.taps.get(s)
                if ta is None or tb is None or not torch.equal(ta.x_out, tb.x_in.to(ta.x_out.dtype)):
                    self.client.bans.ban(a.taps.peer)
                    raise VerificationFailed(b.taps.peer, f"input of step {s} differs from what "
                                                          f"{a.taps.peer[-8:]} signed")

    async def _check_hop(self, h: HopCheck, upto: int, end: int, signed: trio.Event | None = None) -> str:
        if h.done >= end:
            return "ok"
        hist = [t for t in h.taps.history(upto) if t.pos >= h.done]
        x_new, lo = self._inputs(hist), h.done
        claims = self._claims(hist, lo)
        pool = getattr(self.client, "references", None)  # with a pool, the stream outlives the round
        while True:
            ref = await self._reference(h)
            if ref is None:
                bump(self.stats, "unverifiable")
                return "unverifiable"
            try:
                ans = await ref.run(x_new, lo, claims if h.taps.head else [],
                                    last=pool is None and self._closing and upto >= self._latest)
            except ReferenceUnavailable as exc:
                await self._drop_reference(h, exc)
                continue
            if signed is not None:
                await signed.wait()  # the taps compared are the hop's own (``_round``)
            bump(self.stats, "checks")
            if self._agree(h, hist, ans):
                h.done = end
                self.client.standing.credit(h.taps.peer, len(hist))
                return "ok"
            return await self._tie_break(h, upto, end, ref)

    def _agree(self, h: HopCheck, hist: list[Any], ans: dict[str, Any]) -> bool:
        dtypes = [str(t.x_in.dtype) for t in hist if t.x_in.is_floating_point()]
        if h.taps.head:
            tol = max([tolerance("fp32")] + [tolerance(d) for d in dtypes])
            return gaps_agree([float(g) for g in ans["gaps"]], tol)
        claimed, ref = torch.cat([t.x_out[:, :self._rows(t)] for t in hist], dim=1), ans["out"]
        tol = max(tolerance(str(claimed.dtype)), tolerance(str(ref.dtype)))
        return relative_error(claimed, ref) <= tol

    # -- replicas ---------------------------------------------------------------------------------
    async def _warm(self, h: HopCheck) -> None:
        try:
            await self._reference(h)  # none answering is found again, and counted, by the check itself
        except Exception:  # a bug must not cost the answer
            log.exception("opening a reference for %s failed", h.taps.peer[-8:])

    def _replicas(self, h: HopCheck, exclude: set[str]) -> list[str]:
        c = self.client
        skip = {h.taps.peer} | h.avoid | exclude | set(c.bans.active()) | DOWN.down_in(c.state)
        peers = sorted({s.peer_id for s in c.servers(self.model)
                        if s.start <= h.taps.start and h.taps.end <= s.end and s.peer_id not in skip})
        c.rng.shuffle(peers)
        return peers

    async def _reference(self, h: HopCheck) -> ReferenceSession | None:
        """The hop's open reference session, fed up to ``h.done``; a new one on the next replica
        when there is none (it is fed the history first); None when no replica answers."""
        if h.ref is not None and h.ref.length == h.done:
            return h.ref
        if h.ref is not None:
            await h.ref.aclose()
            h.ref = None
        c = self.client
        pool = getattr(c, "references", None)
        for peer in self._replicas(h, set()):
            if pool is not None:  # the replica drawn holds an idle stream of ours for these layers: reuse it
                ref, stale = pool.take(peer, pool_key(h.taps.start, h.taps.end, h.taps.head, self.sampling),
                                       self.max_length)
                await self._release(stale)
                if ref is not None:
                    h.ref = ref
                    try:
                        await self._feed_history(h, ref)
                        bump(self.stats, "references_reused")
                        return ref
                    except ReferenceUnavailable as exc:
                        await self._drop_reference(h, exc)  # a stale stream: a fresh one on the same replica
            ref = h.ref = ReferenceSession(c.host.rpc, peer, self.model, h.taps.start, h.taps.end, self.max_length,
                                           self.sampling, h.taps.head, timeout_s=c.options.check_timeout_s)
            try:  # (held in h.ref from here on: closed whatever happens)
                if not await c.ensure_connected(peer):
                    raise ReferenceUnavailable(peer, "unreachable")
                await ref.open()
                bump(self.stats, "references_opened")
                await self._feed_history(h, ref)
            except ReferenceUnavailable as exc:
                await self._drop_reference(h, exc)
                continue
            return ref
        return None

    async def _feed_history(self, h: HopCheck, ref: ReferenceSession) -> None:
        """A fresh (or rewound) reference: its cache is built from the history checked so far."""
        if h.done > 0:
            old = [t for t in h.taps.history(max(h.taps.taps)) if t.pos < h.done]
            await ref.run(self._inputs(old), 0, [])

    async def _drop_reference(self, h: HopCheck, exc: ReferenceUnavailable) -> None:
        if h.ref is not None and h.ref.reused and h.ref.peer == exc.peer:
            # a pooled stream the replica ended meanwhile: the replica itself may still answer a fresh one
            log.info("reused reference for [%d, %d): %s; opening a fresh one", h.taps.start, h.taps.end, exc)
            bump(self.stats, "references_stale")
            await h.ref.aclose()
            h.ref = None
            return
        log.info("reference for [%d, %d): %s; asking another replica", h.taps.start, h.taps.end, exc)
        bump(self.stats, "reference_busy" if exc.busy else "reference_errors")
        h.avoid.add(exc.peer)
        if h.ref is not None:
            await h.ref.aclose()
            h.ref = None

    async def _tie_break(self, h: HopCheck, upto: int, end: int, ref: ReferenceSession) -> str:
        """The hop and its reference disagree: a third replica re-checks the hop's signed taps."""
        c, hop = self.client, h.taps
        bump(self.stats, "mismatches")
        ev = head_evidence(hop, upto, self.sampling) if hop.head else evidence(hop, upto)
        ev["model"] = self.model
        for peer in self._replicas(h, {ref.peer}):
            try:
                if not await c.ensure_connected(peer):
                    continue
                r = await c.host.rpc.call(peer, SHARD_PROTOCOL, "report", ev, timeout=60)
            except Exception as exc:  # dead, busy, refused: ask the next one
                self.stats.setdefault("report_errors", []).append(f"{peer[-8:]}: {exc}"[:200])
                continue
            verdict = r.get("verdict") if isinstance(r, dict) else None
            if verdict == "fail":
                self.stats.setdefault("detected", []).append(hop.peer)
                self.stats.setdefault("detected_steps", []).append(upto)  # the session step caught at
                bump(self.stats, "verdicts")
                await self._second_verdict(ref.peer, ev)
                c.standing.forfeit(hop.peer)
                raise VerificationFailed(hop.peer, f"layers [{hop.start}, {hop.end}) disagree with two replicas", True)
            if verdict == "pass":  # our reference was the one that lied
                log.warning("reference %s disagreed with %s and a third replica: avoiding it", ref.peer[-8:],
                            hop.peer[-8:])
                self.stats.setdefault("lying_references", []).append(ref.peer)
                c.bans.ban(ref.peer)
                c.standing.forfeit(ref.peer)
                await self._drop_reference(h, ReferenceUnavailable(ref.peer, "disagreed with two replicas"))
                h.done = end
                return "ok"
        self.stats.setdefault("disputed", []).append(hop.peer)
        raise VerificationFailed(hop.peer, "disagrees with a replica and no third one settles it")

    async def _second_verdict(self, peer: str, ev: dict[str, Any]) -> None:
        """The reference that agreed with the third replica re-checks the evidence too: verdicts
        count by their authors' standing (``consensus/verdicts.py``), so two independent ones go
        further than one. Best effort: the client bans and fails over anyway."""
        try:
            if await self.client.ensure_connected(peer):
                r = await self.client.host.rpc.call(peer, SHARD_PROTOCOL, "report", ev, timeout=60)
                if isinstance(r, dict) and r.get("verdict") == "fail":
                    bump(self.stats, "verdicts")
        except Exception as exc:  # dead, busy, refused: the first verdict stands alone
            self.stats.setdefault("report_errors", []).append(f"{peer[-8:]}: {exc}"[:200])
