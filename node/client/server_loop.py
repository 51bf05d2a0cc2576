"""The server token loop (the client's side): the servers feed each token to the next step themselves.

With ``ClientOptions.server_loop`` (and verification and encryption off), a generation opens its
route with a ``wire.LoopSpec``: the first hop learns which peer is the route's head, the head learns
the first hop and its session id. After the prompt's answer the head sends every sampled token
straight to the first hop as the next step's input while answering the client with it, so a token
costs one trip per hop instead of hops + 1 (``node/server/token_loop.py``).

With ``ClientOptions.speculative`` too, the head drafts: the client gives it the text so far as ids
(``LoopSpec.context``) and ``draft_k``; each loop step is then a verify pass of the last token and up to
k prompt-lookup drafts (every hop rolls back the rejected ones), and the head answers the client the
tokens it kept (``loop_answer``: the accepted drafts, then its own token), the very tokens of plain
decoding, greedy or seeded.

``run_server_loop(gen, sess, first)`` replaces a generation's token-by-token loop: it takes each
answer in step order (``gen._take``: text, EOS, stop strings, the length), acks it to the head (the
head runs at most ``window`` answers ahead of the acks), and on the end of the generation sends
``loop_stop``; leaving the session then closes every hop's stream, which ends the servers' loop.
A hop that fails, a broken relay or loop stream, or no answer within the step timeout raises
``HopFailed``: the generation fails over as before, replays the tokens it has on the new route
(identical tokens: sampling is seeded per position) and starts a new server loop there.
"""

from __future__ import annotations

from typing import Any

import trio

from swarmlm.models.speculative import SpecStats
from swarmlm.node.client.session import HopFailed, PipelineSession, StepResult
from swarmlm.node.wire_loop import MAX_LOOP_CONTEXT, MAX_LOOP_DRAFT, MAX_LOOP_EOS, LoopSpec, loop_ack, loop_stop

LOOP_WINDOW = 8  # answers the head may send beyond the client's acks


def loop_spec(eos_ids: Any, draft_k: int = 0, context: list[int] | None = None,
              window: int = LOOP_WINDOW) -> LoopSpec:
    """The head's loop settings for a generation whose tokenizer ends on ``eos_ids``; ``draft_k`` > 0:
    the head drafts by prompt lookup in ``context`` (the prompt and the tokens so far)."""
    k = max(0, min(draft_k, MAX_LOOP_DRAFT))
    return LoopSpec(eos=sorted(int(t) for t in eos_ids)[:MAX_LOOP_EOS], window=window, draft_k=k,
                    context=list(context or [])[-MAX_LOOP_CONTEXT:] if k else [])


class LoopStats:
    """The drafting head's verify passes as the client saw them (``summary.speculative``)."""

    def __init__(self) -> None:
        self.stats = SpecStats()

    def summary(self) -> dict[str, Any]:
        s = self.stats
        return {"passes": s.passes, "proposed": s.proposed, "accepted": s.accepted,
                "acceptance": round(s.acceptance, 4), "server_loop": True,
                "tokens_per_pass": round((s.accepted + s.passes) / s.passes, 3) if s.passes else 0.0}

    def close(self) -> None:
        """Nothing to release: the head holds the drafts (``Speculation.close`` frees a draft model)."""


async def run_server_loop(gen: Any, sess: PipelineSession, first: StepResult) -> None:
    """Drive ``gen`` (a ``PipelineGeneration``) on ``sess`` (opened with a loop) until it ends;
    ``first`` is the head's answer to the client's last step (the prompt, or the replay's last token)."""
    head = len(sess.hops) - 1
    step, res, proposed = sess.last_step, first, None
    while await _take_all(gen, res, proposed):
        await sess.send_to(head, loop_ack(step))
        step += 1
        res, proposed = await next_answer(sess, step)
    try:
        await sess.send_to(head, loop_stop())
    except HopFailed:  # the generation is complete: a head gone by now changes nothing
        pass


async def _take_all(gen: Any, res: StepResult, proposed: int | None) -> bool:
    """Take the answer's token (or a verify pass's kept tokens); False once the generation ended."""
    if res.tokens is None:
        return await gen._take(res)
    if proposed is not None:
        gen.spec = gen.spec or LoopStats()
        st = gen.spec.stats
        st.passes, st.proposed, st.accepted = st.passes + 1, st.proposed + proposed, st.accepted + len(res.tokens) - 1
    for i, t in enumerate(res.tokens):
        if not await gen._take(StepResult(t, None, res.timings if i == 0 else [])):
            return False
    return True


async def next_answer(sess: PipelineSession, step: int) -> tuple[StepResult, int | None]:
    """The head's answer to loop step ``step`` (and, for a verify pass, how many tokens it had drafted);
    raises ``HopFailed`` naming the hop to fail over from."""
    head = len(sess.hops) - 1
    with trio.move_on_after(sess.step_timeout_s):
        while True:
            i, msg = await sess.receive()
            peer = sess.hops[i].peer_id
            if not isinstance(msg, dict):
                raise HopFailed(peer, "sent a malformed answer")
            s = msg.get("step")
            if s == -1 and isinstance(msg.get("relay_failed"), str):
                raise HopFailed(msg["relay_failed"], f"relay from {peer[-8:]} broke: {msg.get('error')}",
                                busy=msg.get("busy") is True, transient=True)
            if s == -1 and msg.get("loop_failed") is not None:  # the head's loop ended: fail over, no ban
                raise HopFailed(sess.hops[0].peer_id, f"the token loop on {peer[-8:]} ended: {msg.get('error')}",
                                transient=True)
            if "x" in msg and i < head:  # a relay broke and the server handed us its output
                raise HopFailed(sess.hops[i + 1].peer_id, f"relay from {peer[-8:]} broke", transient=True)
            if type(s) is int and s < step:
                continue  # a late answer to an earlier step
            timings = msg.get("timings") if isinstance(msg.get("timings"), list) else []
            kept, proposed = msg.get("kept"), msg.get("proposed")
            if i == head and s == step and type(msg.get("token")) is int:
                return StepResult(msg["token"], None, timings), None
            if (i == head and s == step and isinstance(kept, list) and type(proposed) is int
                    and 0 < len(kept) <= min(proposed, MAX_LOOP_DRAFT) + 1 and all(type(t) is int for t in kept)):
                return StepResult(None, None, timings, kept), proposed
            raise HopFailed(peer, "answered out of order or malformed in the token loop")
    raise HopFailed(await sess.suspect(step), f"no answer within {sess.step_timeout_s:.0f} s")
