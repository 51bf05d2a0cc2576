"""KV-cache sessions: token budget, explicit close, idle expiry, freed memory, rollback, misuse errors."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from swarmlm.errors import SwarmError
from swarmlm.models.errors import CacheBudgetExceeded, SessionError
from swarmlm.models.generate import load_chain
from swarmlm.models.kvcache import CacheLayout, KVCacheManager



class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


LAYOUT = CacheLayout(num_layers=3, num_kv_heads=2, head_dim=8, dtype=torch.float32)


def test_budget_refuses_then_accepts_after_close():
    m = KVCacheManager(LAYOUT, budget_tokens=100)
    a = m.open("a", 60)
    assert a.k.shape == (3, 1, 2, 60, 8) and m.used_tokens == 60 and m.free_tokens == 40
    with pytest.raises(CacheBudgetExceeded) as ei:
        m.open("b", 41)
    assert isinstance(ei.value, SwarmError) and ei.value.requested == 41 and ei.value.free == 40
    assert "budget" in str(ei.value)
    m.open("b", 20, batch_size=2)  # 40 tokens: fits exactly
    assert m.free_tokens == 0 and len(m) == 2
    assert m.close("a") and not m.close("a")
    assert m.used_tokens == 40
    m.open("c", 60)
    with pytest.raises(SessionError):
        m.open("c", 1)  # same id twice


def test_close_frees_cache_memory():
    m = KVCacheManager(LAYOUT, budget_tokens=1000)
    s = m.open("x", 500)
    assert m.used_bytes == 2 * 3 * 2 * 500 * 8 * 4 == LAYOUT.bytes_per_token * 500
    k_ref, v_ref = weakref.ref(s.k), weakref.ref(s.v)
    m.close("x")
    gc.collect()
    assert k_ref() is None and v_ref() is None  # the tensors (and their storage) are gone
    assert s.closed and m.used_bytes == 0 and m.used_tokens == 0
    with pytest.raises(SessionError):
        m.get("x")
    with pytest.raises(SessionError):
        s.check_step(0, 1)


def test_idle_sessions_expire():
    clock = Clock()
    m = KVCacheManager(LAYOUT, budget_tokens=100, idle_timeout_s=30, clock=clock)
    m.open("old", 10)
    clock.t += 20
    m.open("new", 10)
    clock.t += 15
    assert m.expire_idle() == ["old"]
    assert "old" not in m and "new" in m and m.used_tokens == 10
    clock.t += 10
    m.get("new")  # touching keeps it alive
    clock.t += 25
    assert m.expire_idle(clock.t) == []
    assert m.expire_idle(clock.t + 31) == ["new"]
    assert m.used_tokens == 0
    (shard,) = load_chain("builtin:tiny")
    m2 = KVCacheManager(shard.cache_layout(), budget_tokens=100, idle_timeout_s=30, clock=clock)
    s = m2.open("s", 10)
    clock.t += 25
    shard.forward(torch.tensor([[1, 2]]), s, 0)  # a forward step counts as activity
    clock.t += 25
    assert m2.expire_idle() == [] and s.last_used == clock.t - 25


def test_positions_gaps_limits_and_truncate():
    (shard,) = load_chain("builtin:tiny")
    m = KVCacheManager(shard.cache_layout(), budget_tokens=64)
    s = m.open("s", 8)
    shard.forward(torch.tensor([[1, 2, 3]]), s, 0)
    assert s.length == 3
    with pytest.raises(SessionError, match="gap"):
        shard.forward(torch.tensor([[4]]), s, 5)
    with pytest.raises(SessionError, match="max_length"):
        shard.forward(torch.tensor([[4] * 6]), s, 3)
    with pytest.raises(SessionError, match="contiguous"):
        shard.forward(torch.tensor([[4, 5]]), s, torch.tensor([3, 5]))
    s.truncate(1)
    assert s.length == 1
    with pytest.raises(SessionError):
        s.truncate(2)
    shard.forward(torch.tensor([[2, 3]]), s)
    assert s.length == 3
    with pytest.raises(SessionError, match="distinct"):
        shard.forward_batch([(s, torch.tensor([[1]]), 3), (s, torch.tensor([[1]]), 3)])
    other = KVCacheManager(CacheLayout(2, 2, 8, torch.float32), budget_tokens=8).open("o", 8)
    with pytest.raises(SessionError, match="layout"):
        shard.forward(torch.tensor([[1]]), other, 0)


def test_tiny_session_budget_in_a_real_shard():
    (shard,) = load_chain("builtin:tiny", dtype="bf16")
    m = KVCacheManager(shard.cache_layout(), budget_tokens=16)
    s = m.open("a", 16)
    assert s.k.dtype == torch.bfloat16
    out = shard.forward(torch.tensor([[5, 6, 7]]), s, 0)
    assert out.shape == (1, 3, shard.config.vocab_size)
    with pytest.raises(CacheBudgetExceeded):
        m.open("b", 1)
    m.close_all()
    assert m.free_tokens == 16
