"""The server token loop's messages (``/swarmlm/shard/1``, beside ``node/wire.py``, which it does not import).

The client opens a route with ``SessionOpen.loop`` = ``LoopSpec.to_args()``: the first hop learns the
route's head (the one peer whose ``loop`` stream it accepts), the head learns the first hop and its
session. The head sends each sampled token to the first hop on a ``loop`` stream (``loop_token``; with
``draft_k`` its drafts after it, a verify pass) while answering the client (``wire.token_answer``, or
``loop_answer`` for a verify pass); the client acks each answer (``loop_ack``) and ends the loop with
``loop_stop`` (and by closing its streams); a head whose loop stream broke tells the client
(``loop_failed_notice``). Servers: ``node/server/token_loop.py``; client: ``node/client/server_loop.py``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from swarmlm.errors import SwarmError

MAX_ID = 128  # peer ids and session ids (wire.MAX_SESSION_ID)
MAX_POS = 1 << 20  # positions (wire.MAX_LENGTH)


class LoopWireError(SwarmError, ValueError):
    """A token-loop message that does not have its shape; the server answers bad_request."""


MAX_LOOP_EOS = 16
MAX_LOOP_WINDOW = 64
MAX_LOOP_DRAFT = 15  # a speculative loop pass is at most 16 positions (a short step of the scheduler)
MAX_LOOP_CONTEXT = 4096  # the recent token ids a drafting head is given


@dataclass
class LoopSpec:
    """The server token loop of a session (``SessionOpen.loop``; ``node/server/token_loop.py``).

    On the first hop, ``head`` is the one peer whose loop tokens it accepts, from its session
    ``head_session`` only (the head of the route the client set up: a session id is known only to the
    client and that server, so no other client can point a head at this session). On the head, ``first``/``first_session`` say where each sampled token goes as the
    next step's input; ``eos`` ids end the loop; the head runs at most ``window`` answers ahead of the
    client's acks (``loop_ack``). A one-hop session carries both halves. ``draft_k`` > 0: the head
    drafts up to that many tokens by prompt lookup in ``context`` (the prompt and the tokens so far,
    the most recent ``MAX_LOOP_CONTEXT``) and the loop's steps are verify passes."""

    head: str | None = None
    head_session: str | None = None
    first: str | None = None
    first_session: str | None = None
    eos: list[int] = field(default_factory=list)
    window: int = 8
    draft_k: int = 0
    context: list[int] = field(default_factory=list)

    def to_args(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def parse(cls, raw: Any) -> "LoopSpec | None":
        if raw is None:
            return None
        if not isinstance(raw, dict):
            raise LoopWireError("session: loop must be a map")
        peers = [raw.get(k) for k in ("head", "head_session", "first", "first_session")]
        if not all(p is None or (isinstance(p, str) and 0 < len(p) <= MAX_ID) for p in peers):
            raise LoopWireError("session: loop head/head_session/first/first_session must be short strings")
        if (peers[0] is None) != (peers[1] is None) or (peers[2] is None) != (peers[3] is None) or peers == [None] * 4:
            raise LoopWireError("session: a loop names its head and the head's session, or its first hop and that "
                                "hop's session")
        eos, window = raw.get("eos") or [], raw.get("window", 8)
        if not (isinstance(eos, list) and len(eos) <= MAX_LOOP_EOS and all(type(t) is int and t >= 0 for t in eos)):
            raise LoopWireError(f"session: loop eos must be at most {MAX_LOOP_EOS} token ids")
        if type(window) is not int or not 2 <= window <= MAX_LOOP_WINDOW:
            raise LoopWireError(f"session: loop window must be 2..{MAX_LOOP_WINDOW}")
        draft_k, context = raw.get("draft_k", 0), raw.get("context") or []
        if type(draft_k) is not int or not 0 <= draft_k <= MAX_LOOP_DRAFT:
            raise LoopWireError(f"session: loop draft_k must be 0..{MAX_LOOP_DRAFT}")
        if not (isinstance(context, list) and len(context) <= MAX_LOOP_CONTEXT
                and all(type(t) is int and t >= 0 for t in context)):
            raise LoopWireError(f"session: loop context must be at most {MAX_LOOP_CONTEXT} token ids")
        return cls(peers[0], peers[1], peers[2], peers[3], list(eos), window, draft_k, list(context))


def loop_token(step: int, pos: int, tokens: list[int], verify: bool = False) -> dict[str, Any]:
    """Head -> first hop (``loop`` stream): step ``step``'s input at ``pos``: the sampled token, and with
    ``verify`` the head's drafts after it (a speculative verify pass: every hop rolls back to ``pos``)."""
    return {"step": step, "pos": pos, "tokens": tokens, "verify": verify}


def parse_loop_token(item: Any) -> tuple[int, int, list[int], bool]:
    toks = item.get("tokens") if isinstance(item, dict) else None
    if not (isinstance(item, dict) and type(item.get("step")) is int and type(item.get("pos")) is int
            and 0 <= item["pos"] < MAX_POS and isinstance(toks, list) and 0 < len(toks) <= MAX_LOOP_DRAFT + 1
            and all(type(t) is int and t >= 0 for t in toks) and type(item.get("verify")) is bool
            and len(item) == 4 and (item["verify"] or len(toks) == 1)):
        raise LoopWireError("loop: items are {step, pos, tokens, verify}: ints, 1..16 token ids (one unless verify)")
    return item["step"], item["pos"], toks, item["verify"]


def loop_answer(step: int, kept: list[int], proposed: int, timings: list) -> dict[str, Any]:
    """Head -> client, a speculative loop's verify pass: the tokens it kept (the accepted drafts, then
    its own token), and how many it had drafted."""
    return {"step": step, "kept": kept, "proposed": proposed, "timings": timings}


def loop_ack(step: int) -> dict[str, Any]:
    """Client -> head: it has taken the answers up to ``step`` (the head may run ``window`` beyond)."""
    return {"loop_ack": step}


def loop_stop() -> dict[str, Any]:
    """Client -> head: the generation ended (a stop string, or cancelled); sample no further."""
    return {"loop_stop": True}


def loop_failed_notice(first: str, error: str) -> dict[str, Any]:
    """Head -> client: its loop ended without the client's stop (the loop stream to the first hop
    broke, no acks, the deadline): the client fails over."""
    return {"step": -1, "loop_failed": first, "error": error}
