"""The client's reference sessions: a hop's inputs re-run on a replica of its layers, kept open.

``ReferenceSession`` holds one ``check`` stream (``node/server/check.py``) to one replica for one
hop of a route session. Each check sends only the positions since the previous one
(``run(x, pos, claims)``): the replica keeps its KV cache, so checks batch the steps between them
and never re-prefill the whole history. Any failure of the replica -- unreachable, dead, ``busy``
or over its cache budget, too slow, a broken or malformed answer -- is a ``ReferenceUnavailable``:
the verifier (``node/client/verify.py``) asks the next replica, and a check never costs the answer.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

import torch
import trio

from swarmlm.node.client.reference_pool import pool_key
from swarmlm.node.wire import CHECK_METHOD, SHARD_PROTOCOL, CheckItem, SessionOpen

log = logging.getLogger("swarmlm.verify")


class ReferenceUnavailable(Exception):
    """A replica asked for a reference could not give one; ``busy`` when it shed load."""

    def __init__(self, peer: str, reason: str, busy: bool = False) -> None:
        super().__init__(f"reference {peer[-8:]}: {reason}")
        self.peer, self.reason, self.busy = peer, reason, busy


class ReferenceSession:
    """One open ``check`` stream to ``peer`` for layers ``[start, end)``; ``length``: positions fed."""

    def __init__(self, rpc: Any, peer: str, model: str, start: int, end: int, max_length: int,
                 sampling: dict | None, head: bool, timeout_s: float = 10.0) -> None:
        self.rpc, self.peer, self.model, self.start, self.end = rpc, peer, model, start, end
        self.max_length, self.sampling, self.head, self.timeout_s = max_length, sampling, head, timeout_s
        self.length = 0
        self._ended = False  # the last check was sent with the end of the stream
        self._cm: Any = None
        self._call: Any = None
        self._step = 0
        self._broken = False  # a run failed: the stream is not reused (``ReferencePool``)
        self.reused = False  # taken from the pool and not answered since: a failure means a stale stream
        self.key = pool_key(start, end, head, sampling)

    @property
    def reusable(self) -> bool:
        """Open, not ended and never failed: it may serve another round (``ReferencePool``)."""
        return self._call is not None and not self._ended and not self._broken

    def rewind(self) -> None:
        """The next check starts again at position 0 (a new generation): the replica overwrites its
        cache from there, so a reused stream computes exactly what a fresh one would."""
        self.length, self.reused = 0, True

    async def open(self) -> None:
        args = SessionOpen(secrets.token_hex(16), self.model, self.start, self.end, self.max_length,
                           sampling=self.sampling if self.head else None).to_args()
        cm = self.rpc.stream(self.peer, SHARD_PROTOCOL, CHECK_METHOD, args, timeout=3600)
        try:
            with trio.fail_after(self.timeout_s):
                self._call = await cm.__aenter__()
        except Exception as exc:  # RpcError, OSError, the timeout...: whatever a dead peer raises
            raise ReferenceUnavailable(self.peer, f"cannot open: {type(exc).__name__}: {exc}",
                                       getattr(exc, "code", "") == "busy") from None
        self._cm = cm

    async def run(self, x: Any, pos: int, claims: list[tuple[int, int, int]], last: bool = False) -> dict[str, Any]:
        """Feed ``x`` at ``pos`` (== ``length``); the replica's answer: ``{"out": [1, T, H]}`` or, for
        the head, ``{"tokens": [...], "gaps": [...]}`` (one per claim). ``last``: no check follows (the
        stream's end goes with it, so closing costs no extra round trip)."""
        if self._call is None or self._ended or pos != self.length:
            raise ReferenceUnavailable(self.peer, f"fed up to {self.length}, asked at {pos}")
        step, self._step = self._step, self._step + 1
        self._broken = True  # until the answer is in and well formed
        try:
            with trio.fail_after(self.timeout_s):
                await self._call.send(CheckItem(step, pos, x, claims).to_msg())
                if last:
                    self._ended = True
                    await self._call.end()
                msg = await self._call.recv()
        except StopAsyncIteration:
            raise ReferenceUnavailable(self.peer, "ended the session early") from None
        except trio.TooSlowError:
            raise ReferenceUnavailable(self.peer, f"no answer within {self.timeout_s:.0f} s") from None
        except Exception as exc:  # RpcError (busy, unavailable...), a broken stream
            raise ReferenceUnavailable(self.peer, f"{type(exc).__name__}: {exc}",
                                       getattr(exc, "code", "") == "busy") from None
        T = x.shape[1]
        ok = isinstance(msg, dict) and msg.get("step") == step and (
            (self.head and isinstance(msg.get("tokens"), list) and isinstance(msg.get("gaps"), list)
             and len(msg["tokens"]) == len(msg["gaps"]) == len(claims)
             and all(isinstance(g, (int, float)) for g in msg["gaps"]))
            or (not self.head and isinstance(msg.get("out"), torch.Tensor) and msg["out"].dim() == 3
                and msg["out"].shape[:2] == (1, T)))
        if not ok:
            raise ReferenceUnavailable(self.peer, "sent a malformed answer")
        self.length, self._broken, self.reused = pos + T, False, False
        return msg

    async def aclose(self) -> None:
        """End the stream (the replica frees the cache); bounded, safe to call when cancelled."""
        cm, call, self._cm, self._call = self._cm, self._call, None, None
        if cm is None:
            return
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            try:
                if not self._ended and not call.done:  # a call the replica already ended (an error
                    await call.end()  # frame) takes no end: it would reach the pooled stream's next call
                async for _ in call:
                    pass
                await cm.__aexit__(None, None, None)
                return
            except Exception:
                pass
        with trio.CancelScope(shield=True), trio.move_on_after(1):
            try:
                await cm.__aexit__(ReferenceUnavailable, None, None)  # resets the stream
            except Exception:
                pass
