"""What clients and servers of the swarm say to each other: protocol ids and message shapes.

Both sides import this module and nothing of each other (``node/client`` never imports
``node/server``). It holds no I/O and no policy, only names, shapes and their checks:

* ``/swarmlm/shard/1`` (``SHARD_PROTOCOL``): ``SessionOpen`` opens a KV-cache session on a layer
  range; ``StepItem`` feeds it one input; the server answers with ``token_answer`` /
  ``logits_answer`` (the hop holding the LM head), forwards ``hidden_answer`` to the next server
  (or back to the client when the relay broke), tells the client ``relay_failed_notice`` when the
  next server went away, and, for verified sessions, sends a signed ``tap_message`` per step
  (``tap_digest`` is what it signs; ``tap_batch`` of them in one ``taps_message``, all held back on
  ``TAP_FLUSH``). ``step_seed`` makes sampling identical on any server. A server
  that is full answers ``busy`` with a retry hint in its text (``busy_message`` / ``retry_after``). A
  ``check`` stream is a reference session for verification: ``SessionOpen`` arguments, then
  ``CheckItem``s (inputs plus the token claims of the hop being checked); the answer
  (``check_answer``) carries the outputs of every position, or for the head a token and a gap per claim.
  The server token loop's messages are in ``node/wire_loop.py``.
* ``/swarmlm/consensus/1`` (``CONSENSUS_PROTOCOL``): ``task_text`` / ``parse_task`` are the canonical
  task a round is about (its hash goes into the signed spec); ``MAX_K`` candidates per round.
* ``VERDICT_KIND``: the swarm-state record kind of a shard-verification verdict.
* ``ee_model_id``: the id under which an equivariant-encryption variant is served (``ee:<variant id>``).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from typing import Any

import torch

from swarmlm.errors import SwarmError

SHARD_PROTOCOL = "/swarmlm/shard/1"
CHECK_METHOD = "check"  # a reference session on SHARD_PROTOCOL (verification)
CONSENSUS_PROTOCOL = "/swarmlm/consensus/1"
VERDICT_KIND = "verdict"

MAX_STEP_TOKENS = 4096  # input positions of one step
MAX_SESSION_ID = 128
MAX_LENGTH = 1 << 20  # a session's max_length
MAX_TIMINGS = 64  # per-hop timing rows a step carries
WIRE_DTYPES = (None, "fp16", "bf16")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "config.json", "generation_config.json",
                   "special_tokens_map.json", "chat_template.jinja")

MAX_K = 12  # candidates per consensus round (a record over 16 KiB goes to the state as a detail blob)
TASK_VERSION = 1
MAX_TASK_TOKENS = 8192
MAX_NEW_TOKENS = 1024


EE_PREFIX = "ee:"


def ee_model_id(variant: str) -> str:
    return f"{EE_PREFIX}{variant}"


class WireError(SwarmError, ValueError):
    """A message that does not have the shape its protocol says; the server answers bad_request."""


# -- /swarmlm/shard/1 ---------------------------------------------------------------------------------

def step_seed(seed: int, position: int) -> int:
    """The sampling seed for the token at ``position``: the same on any server, after any failover."""
    h = hashlib.blake2b(f"{seed}:{position}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") >> 1


@dataclass
class SessionOpen:
    """The arguments of a ``session`` call: layers ``[start, end)`` of ``model`` for ``max_length``
    positions; ``prev``/``next`` name the neighbouring servers (``next_session``: the session id the
    client opened there); ``sampling`` only for the hop holding the LM head."""

    session_id: str
    model: str
    start: int
    end: int
    max_length: int
    prev: str | None = None
    next: str | None = None
    next_session: str | None = None
    sampling: dict | None = None
    logits: bool = False  # answer logits instead of a sampled token
    tap: bool = False  # send a signed tap of every step (verification)
    tap_batch: int = 1  # send the taps of this many steps in one message (and on ``TAP_FLUSH``)
    wire: str | None = None  # "fp16"/"bf16": hidden states are down-cast before they travel
    route: list | None = None  # the whole route, [[peer id, start, end], ...]: the health pages show it
    loop: dict | None = None  # the server token loop (first hop and head only): ``wire_loop.LoopSpec``

    def to_args(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def parse(cls, args: Any) -> "SessionOpen":
        if not isinstance(args, dict):
            raise WireError("session: expected a map of arguments")
        try:
            sid, model = args["session_id"], args.get("model")
            start, end, max_length = int(args["start"]), int(args["end"]), int(args["max_length"])
        except (KeyError, TypeError, ValueError) as exc:
            raise WireError(f"session: missing or bad argument {exc}") from None
        if not isinstance(sid, str) or not 0 < len(sid) <= MAX_SESSION_ID:
            raise WireError(f"session: session_id must be a string of 1..{MAX_SESSION_ID} characters")
        if not isinstance(model, str):
            raise WireError("session: model must be a string")
        if not 0 <= start < end:
            raise WireError(f"session: bad layer range [{start}, {end})")
        if not 0 < max_length <= MAX_LENGTH:
            raise WireError(f"max_length {max_length} out of range")
        for key in ("prev", "next", "next_session"):
            if args.get(key) is not None and not isinstance(args.get(key), str):
                raise WireError(f"session: {key} must be a string or absent")
        sampling = args.get("sampling")
        if sampling is not None and not isinstance(sampling, dict):
            raise WireError("sampling must be a map")
        wire = args.get("wire")
        if wire not in WIRE_DTYPES:
            raise WireError("wire must be fp16, bf16 or absent")
        return cls(sid, model, start, end, max_length, args.get("prev"), args.get("next"), args.get("next_session"),
                   sampling, bool(args.get("logits")), bool(args.get("tap")), _tap_batch(args.get("tap_batch", 1)),
                   wire, _route(args.get("route")), _loop(args.get("loop")))


MAX_TAP_BATCH = 16  # 2 tensors per tap: a batch stays well within a frame's tensor limit
TAP_FLUSH = {"flush_taps": True}  # a client item: send the taps held back so far (before a session ends)


def _loop(raw: Any) -> dict | None:
    """A session's token-loop part (checked by ``wire_loop.LoopSpec.parse`` where it is used)."""
    if raw is not None and not isinstance(raw, dict):
        raise WireError("session: loop must be a map")
    return raw


def _tap_batch(raw: Any) -> int:
    if type(raw) is not int or not 1 <= raw <= MAX_TAP_BATCH:
        raise WireError(f"session: tap_batch must be an integer in 1..{MAX_TAP_BATCH}")
    return raw


MAX_ROUTE_HOPS = 64


def _route(raw: Any) -> list | None:
    """A session's announced route: None, or up to 64 [peer id, start, end] with 0 <= start < end."""
    if raw is None:
        return None
    if not isinstance(raw, list) or len(raw) > MAX_ROUTE_HOPS:
        raise WireError(f"session: route must be a list of at most {MAX_ROUTE_HOPS} hops")
    out = []
    for hop in raw:
        if not (isinstance(hop, list) and len(hop) == 3 and isinstance(hop[0], str) and 0 < len(hop[0]) <= 64
                and all(type(x) is int and 0 <= x <= MAX_LENGTH for x in hop[1:]) and hop[1] < hop[2]):
            raise WireError("session: route hops are [peer id, start, end]")
        out.append([hop[0], hop[1], hop[2]])
    return out


@dataclass
class StepItem:
    """One input of a session: ``x`` ([1, T] ids, or [1, T, H] hidden states) at position ``pos``;
    ``want``: the client waits for this step's answer; ``timings``: per-hop rows so far.
    Speculative decoding: ``verify`` asks the head hop for its token at every position of ``x`` (a
    verify pass of k+1 positions, answered by ``tokens_answer``); ``rollback`` (== ``pos``) tells every
    hop to drop its cached positions from ``pos`` on (the rejected drafts) before computing."""

    step: int
    pos: int
    x: Any
    want: bool = True
    timings: list | None = None
    verify: bool = False
    rollback: int | None = None

    def to_msg(self) -> dict[str, Any]:
        msg = {"step": self.step, "pos": self.pos, "x": self.x, "want": self.want}
        if self.timings:
            msg["timings"] = self.timings
        if self.verify:
            msg["verify"] = True
        if self.rollback is not None:
            msg["rollback"] = self.rollback
        return msg

    @classmethod
    def parse(cls, item: Any) -> "StepItem":
        if not isinstance(item, dict):
            raise WireError("step: expected a map")
        step, pos, x = item.get("step"), item.get("pos"), item.get("x")
        if not isinstance(step, int) or not isinstance(pos, int) or not isinstance(x, torch.Tensor):
            raise WireError("step: needs int step, int pos and tensor x")
        if x.dim() < 2 or x.shape[0] != 1 or not 0 < x.shape[1] <= MAX_STEP_TOKENS:
            raise WireError(f"step: bad input shape {tuple(x.shape)}")
        timings = item.get("timings") or []
        if not isinstance(timings, list) or len(timings) > MAX_TIMINGS:
            raise WireError("step: bad timings")
        rollback = item.get("rollback")
        if rollback is not None and rollback != pos:
            raise WireError("step: rollback must equal pos (drop the cached positions from pos on)")
        return cls(step, pos, x, bool(item.get("want", True)), timings, item.get("verify") is True, rollback)


_RETRY_HINT = re.compile(r"retry in (\d{1,6}(?:\.\d{1,3})?) s")
MAX_RETRY_HINT_S = 60.0


def busy_message(reason: str, retry_s: float) -> str:
    """The text of a ``busy`` answer: why, and when a retry may find room (``retry_after`` reads it)."""
    return f"{reason}; retry in {min(MAX_RETRY_HINT_S, max(0.1, retry_s)):.1f} s"


def retry_after(message: str) -> float | None:
    """The retry hint of a ``busy`` answer (seconds, at most ``MAX_RETRY_HINT_S``), or None."""
    m = _RETRY_HINT.search(message or "")
    return min(MAX_RETRY_HINT_S, float(m.group(1))) if m else None


def token_answer(step: int, token: int, timings: list) -> dict[str, Any]:
    return {"step": step, "token": token, "timings": timings}


def tokens_answer(step: int, tokens: list[int], timings: list) -> dict[str, Any]:
    """The head's answer to a verify pass: its token at every position of the step."""
    return {"step": step, "tokens": tokens, "timings": timings}


def logits_answer(step: int, logits: Any, timings: list) -> dict[str, Any]:
    return {"step": step, "logits": logits, "timings": timings}


def hidden_answer(item: StepItem, out: Any, timings: list, relay_failed: str | None = None) -> dict[str, Any]:
    """A middle hop's output, for the next server (or for the client when ``relay_failed`` names it)."""
    msg = {"step": item.step, "pos": item.pos, "x": out, "want": item.want, "timings": timings}
    if item.verify:
        msg["verify"] = True
    if item.rollback is not None:
        msg["rollback"] = item.rollback
    if relay_failed:
        msg["relay_failed"] = relay_failed
    return msg


def relay_failed_notice(next_peer: str, error: str, busy: bool) -> dict[str, Any]:
    """The server's relay stream to ``next_peer`` ended: the client fails over around it."""
    return {"step": -1, "relay_failed": next_peer, "error": error, "busy": busy}


def tensor_bytes(x: Any) -> bytes:
    if x is None:
        return b""
    t = x.detach().contiguous().cpu()
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def sampling_bytes(sampling: dict | None) -> bytes:
    """The canonical form of a head session's sampling parameters (what its taps sign with the token)."""
    return json.dumps(sampling, sort_keys=True, separators=(",", ":")).encode() if sampling is not None else b""


def tap_digest(session_id: str, step: int, pos: int, x_in: Any, x_out: Any, token: int | None,
               sampling: dict | None = None) -> bytes:
    """What a server signs for one tapped step: its input, its output (or token), where and when; the
    head also signs its sampling parameters, so a third party can re-check its tokens."""
    h = hashlib.blake2b(digest_size=32, person=b"swarmlm-tap-v1")
    h.update(f"{session_id}|{step}|{pos}|{token}|".encode())
    if sampling is not None:
        h.update(b"sampling|" + sampling_bytes(sampling) + b"|")
    for t in (x_in, x_out):
        h.update(str(None if t is None else (str(t.dtype), tuple(t.shape))).encode())
        h.update(tensor_bytes(t))
    return h.digest()


def tap_message(step: int, pos: int, x_in: Any, x_out: Any, token: int | None, sig: bytes) -> dict[str, Any]:
    return {"step": step, "tap": True, "pos": pos, "in": x_in, "out": x_out, "token": token, "sig": sig}


def taps_message(taps: list[dict[str, Any]]) -> dict[str, Any]:
    """Several steps' ``tap_message``s in one message (``SessionOpen.tap_batch``)."""
    return taps[0] if len(taps) == 1 else {"tap": True, "taps": taps}


@dataclass
class CheckItem:
    """One input of a reference session (``check``): ``x`` at ``pos`` like a ``StepItem``; for the
    head, ``claims`` are ``[offset, seed_pos, token]``: the token the checked hop sampled from the
    logits at ``pos + offset`` with the seed of ``seed_pos`` (``step_seed``)."""

    step: int
    pos: int
    x: Any
    claims: list[tuple[int, int, int]]

    def to_msg(self) -> dict[str, Any]:
        return {"step": self.step, "pos": self.pos, "x": self.x, "claims": [list(c) for c in self.claims]}

    @classmethod
    def parse(cls, item: Any) -> "CheckItem":
        s = StepItem.parse(item)
        claims = item.get("claims") or []
        T = s.x.shape[1]
        if not isinstance(claims, list) or len(claims) > T:
            raise WireError("check: claims must be a list of at most one per position")
        out = []
        for c in claims:
            if not (isinstance(c, list) and len(c) == 3 and all(isinstance(v, int) for v in c)
                    and 0 <= c[0] < T and 0 <= c[1] <= s.pos + c[0] and c[2] >= 0):
                raise WireError("check: a claim is [offset, seed_pos, token] within the input")
            out.append((c[0], c[1], c[2]))
        return cls(s.step, s.pos, s.x, out)


def check_answer(step: int, out: Any = None, tokens: list[int] | None = None,
                 gaps: list[float] | None = None) -> dict[str, Any]:
    """A reference's answer: the outputs of every position (a middle hop), or per claim its own token
    and how far the claimed token is from what it samples (the head; ``verification.sample_gap``)."""
    if out is not None:
        return {"step": step, "out": out}
    return {"step": step, "tokens": list(tokens or []), "gaps": list(gaps or [])}


# -- /swarmlm/consensus/1 -----------------------------------------------------------------------------

def task_text(model: str, prompt: str | None, messages: list[dict[str, str]] | None, max_new_tokens: int,
              stop: list[str]) -> str:
    """The canonical text of a round's task (its SHA-256 goes into the signed spec)."""
    body: dict[str, Any] = {"v": TASK_VERSION, "model": model, "max_new_tokens": int(max_new_tokens),
                            "stop": list(stop)}
    if messages is not None:
        body["messages"] = [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]
    elif prompt is not None:
        body["prompt"] = prompt
    else:
        raise WireError("a consensus task needs a prompt or messages")
    return json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def parse_task(text: str) -> dict[str, Any]:
    """Check and parse a task text; raises WireError."""
    try:
        t = json.loads(text)
    except ValueError:
        raise WireError("the round's task is not JSON") from None
    ok = (isinstance(t, dict) and t.get("v") == TASK_VERSION and isinstance(t.get("model"), str)
          and isinstance(t.get("max_new_tokens"), int) and 0 < t["max_new_tokens"] <= MAX_NEW_TOKENS
          and isinstance(t.get("stop"), list) and all(isinstance(s, str) and s for s in t["stop"])
          and (isinstance(t.get("prompt"), str) or (isinstance(t.get("messages"), list) and all(
              isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
              for m in t["messages"]))))
    if not ok:
        raise WireError("the round's task is malformed")
    return t
