"""The server token loop (the client's side): the servers feed each token to the next step themselves.

With ``ClientOptions.server_loop`` (and verification and encryption off), a generation opens its
route with a ``wire.LoopSpec``: the first hop learns which peer is the route's head, the head learns
the first hop and its session id. After the prompt's answer the head sends every sampled token
straight to the first hop as the next step's input while answering the client with it, so a token
costs one trip per hop instead of hops + 1 (``node/server/token_loop.py``).

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

from swarmlm.node.client.session import HopFailed, PipelineSession, StepResult
from swarmlm.node.wire import LoopSpec, loop_ack, loop_stop

LOOP_WINDOW = 8  # answers the head may send beyond the client's acks


def loop_spec(eos_ids: Any, window: int = LOOP_WINDOW) -> LoopSpec:
    """The head's loop settings for a generation whose tokenizer ends on ``eos_ids``."""
    return LoopSpec(eos=sorted(int(t) for t in eos_ids)[:16], window=window)


async def run_server_loop(gen: Any, sess: PipelineSession, first: StepResult) -> None:
    """Drive ``gen`` (a ``PipelineGeneration``) on ``sess`` (opened with a loop) until it ends;
    ``first`` is the head's answer to the client's last step (the prompt, or the replay's last token)."""
    head = len(sess.hops) - 1
    step, res = sess.last_step, first
    while await gen._take(res):
        await sess.send_to(head, loop_ack(step))
        step += 1
        res = await next_answer(sess, step)
    try:
        await sess.send_to(head, loop_stop())
    except HopFailed:  # the generation is complete: a head gone by now changes nothing
        pass


async def next_answer(sess: PipelineSession, step: int) -> StepResult:
    """The head's answer to loop step ``step``; raises ``HopFailed`` naming the hop to fail over from."""
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
            if s == -1 and msg.get("loop_failed") is not None:
                raise HopFailed(sess.hops[0].peer_id, f"the loop stream from {peer[-8:]} broke: {msg.get('error')}",
                                transient=True)
            if "x" in msg and i < head:  # a relay broke and the server handed us its output
                raise HopFailed(sess.hops[i + 1].peer_id, f"relay from {peer[-8:]} broke", transient=True)
            if type(s) is int and s < step:
                continue  # a late answer to an earlier step
            if i != head or s != step or type(msg.get("token")) is not int:
                raise HopFailed(peer, "answered out of order or malformed in the token loop")
            timings = msg.get("timings")
            return StepResult(msg["token"], None, timings if isinstance(timings, list) else [])
    raise HopFailed(await sess.suspect(step), f"no answer within {sess.step_timeout_s:.0f} s")
