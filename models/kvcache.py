"""KV-cache sessions and the per-node cache manager with a token budget.

- ``CacheLayout(num_layers, num_kv_heads, head_dim, dtype)``: the shape one shard's cache has;
  ``Shard.cache_layout()`` gives it. ``bytes_per_token`` is what one cached position costs.
- ``Session``: one inference session's cache on one shard, preallocated for ``max_length`` positions
  (``k``/``v``: ``[layers, batch, kv_heads, max_length, head_dim]``). ``length`` is how many positions
  are valid. ``Shard.forward`` writes positions ``start..start+T-1`` (``start <= length``) and sets
  ``length = start + T``: running again from an earlier position overwrites cleanly (replay after
  failover, or a fresh rebuild from 0). ``truncate(pos)`` rolls back explicitly.
- ``KVCacheManager(layout, budget_tokens, idle_timeout_s)``: ``open(session_id, max_length)`` reserves
  ``max_length * batch_size`` tokens or raises :class:`CacheBudgetExceeded`; ``get``, ``close``,
  ``expire_idle(now)``; ``used_tokens`` / ``free_tokens``. Closing drops the cache tensors (memory is
  returned to the allocator). Thread-safe.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from swarmlm.models.errors import CacheBudgetExceeded, SessionError


@dataclass(frozen=True)
class CacheLayout:
    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype

    @property
    def bytes_per_token(self) -> int:
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * itemsize


@dataclass(eq=False)
class Session:
    """One session's preallocated KV cache on one shard."""

    session_id: str
    layout: CacheLayout
    max_length: int
    batch_size: int = 1
    length: int = 0
    last_used: float = field(default_factory=time.monotonic)
    k: torch.Tensor | None = None
    v: torch.Tensor | None = None
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)

    def __post_init__(self) -> None:
        if self.max_length <= 0 or self.batch_size <= 0:
            raise SessionError(f"session {self.session_id}: max_length and batch_size must be positive")
        if self.k is None:
            lay = self.layout
            shape = (lay.num_layers, self.batch_size, lay.num_kv_heads, self.max_length, lay.head_dim)
            self.k = torch.zeros(shape, dtype=lay.dtype)
            self.v = torch.zeros(shape, dtype=lay.dtype)

    @property
    def tokens(self) -> int:
        """Tokens this session reserves against the budget."""
        return self.max_length * self.batch_size

    @property
    def closed(self) -> bool:
        return self.k is None

    @property
    def nbytes(self) -> int:
        return 0 if self.k is None else 2 * self.k.numel() * self.k.element_size()

    def truncate(self, position: int) -> None:
        """Forget every position >= ``position`` (rollback)."""
        if not 0 <= position <= self.length:
            raise SessionError(f"session {self.session_id}: cannot truncate to {position} (length {self.length})")
        self.length = position

    def touch(self, now: float | None = None) -> None:
        self.last_used = self.clock() if now is None else now

    def check_step(self, start: int, n: int) -> None:
        """Validate writing ``n`` positions from ``start`` (no gaps, within max_length)."""
        if self.k is None:
            raise SessionError(f"session {self.session_id} is closed")
        if start < 0 or start > self.length:
            raise SessionError(f"session {self.session_id}: position {start} leaves a gap (cached length {self.length})")
        if start + n > self.max_length:
            raise SessionError(f"session {self.session_id}: positions up to {start + n} exceed max_length {self.max_length}")

    def free(self) -> None:
        self.k = None
        self.v = None
        self.length = 0


class KVCacheManager:
    """All sessions of one shard on this node, within a budget of cached tokens."""

    def __init__(self, layout: CacheLayout, budget_tokens: int, idle_timeout_s: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if budget_tokens <= 0:
            raise ValueError("budget_tokens must be positive")
        self.layout = layout
        self.budget_tokens = int(budget_tokens)
        self.idle_timeout_s = float(idle_timeout_s)
        self._clock = clock
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    @property
    def used_tokens(self) -> int:
        with self._lock:
            return sum(s.tokens for s in self._sessions.values())

    @property
    def free_tokens(self) -> int:
        return self.budget_tokens - self.used_tokens

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return sum(s.nbytes for s in self._sessions.values())

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._sessions

    def session_ids(self) -> list[str]:
        with self._lock:
            return list(self._sessions)

    def open(self, session_id: str, max_length: int, batch_size: int = 1,
             layout: CacheLayout | None = None) -> Session:
        """Reserve and preallocate a session; raises CacheBudgetExceeded when it does not fit.

        ``layout`` overrides the manager's (a session on a sub-range of the hosted layers)."""
        need = int(max_length) * int(batch_size)
        with self._lock:
            if session_id in self._sessions:
                raise SessionError(f"session {session_id} is already open")
            used = sum(s.tokens for s in self._sessions.values())
            free = self.budget_tokens - used
            if need > free:
                raise CacheBudgetExceeded(
                    f"KV cache budget exceeded: session {session_id} needs {need} tokens, "
                    f"{free} of {self.budget_tokens} free; route to another node", requested=need, free=free)
            sess = Session(session_id, layout or self.layout, int(max_length), int(batch_size),
                           last_used=self._clock(), clock=self._clock)
            self._sessions[session_id] = sess
            return sess

    def get(self, session_id: str, touch: bool = True) -> Session:
        with self._lock:
            sess = self._sessions.get(session_id)
            if sess is None:
                raise SessionError(f"unknown or expired session {session_id}")
            if touch:
                sess.touch(self._clock())
            return sess

    def close(self, session_id: str) -> bool:
        """Drop a session and its cache memory; False when it was not open."""
        with self._lock:
            sess = self._sessions.pop(session_id, None)
        if sess is None:
            return False
        sess.free()
        return True

    def expire_idle(self, now: float | None = None) -> list[str]:
        """Close sessions idle for longer than ``idle_timeout_s``; returns their ids."""
        now = self._clock() if now is None else now
        with self._lock:
            dead = [sid for sid, s in self._sessions.items() if now - s.last_used > self.idle_timeout_s]
            sessions = [self._sessions.pop(sid) for sid in dead]
        for s in sessions:
            s.free()
        return dead

    def close_all(self) -> None:
        with self._lock:
            sessions = list(self._sessions.values())
            self._sessions.clear()
        for s in sessions:
            s.free()
