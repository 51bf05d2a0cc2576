"""Decode steps of many sessions in one attention call: the batched-decode path of ``Shard.forward_batch``.

A decode step (one new position of a batch-1 session) attends over that session's own cache. Run per
session, a batch of 16 decodes costs 16 small attention calls per layer plus, for each, the RoPE, the
cache writes and the slicing around them: on one CPU thread that Python-side work is a large part of the
batch beyond the (batched) projections and MLP. Here the decode steps of sessions with similar context
lengths form a **group**:

- ``plan_groups(items)``: ``items`` are ``(entry index, context length after the step)``; the groups
  (two or more members, shortest context first) in which padding every member to the group's longest
  context costs at most ``PAD_FACTOR`` x the real key positions plus ``PAD_SLACK``. Lone decodes stay
  on the per-session path. A member's cache need not hold the group's longest context: its stacked
  copy is zero-padded beyond its own ``max_length`` (sessions opened for prompt + new tokens reach
  the end of their caches in the last steps, and prompts differ in length: requiring room split every
  group then and made the last steps of a decoding cohort run one session at a time).
- ``DecodeGroup(sessions, positions, row0, inv_freq, attn_scaling, dtype)``: the RoPE tables of all
  members at once and the key mask; ``attend(li, part, nh, nkv, hd)`` takes the group's rows of the
  fused q/k/v projection of layer ``li`` (``[S, (nh + 2 nkv) hd]``), stacks the members' cached keys
  and values up to the longest context (zeros where a member's cache ends before it), puts the new
  key/value at each member's position into that stacked copy, and runs one masked
  scaled-dot-product attention (grouped-query heads side by side, no repeated keys); returns
  ``[S, nh * hd]``. ``write_back()`` stores the new keys/values of every layer into each member's
  cache in one copy per session (call it once after the last layer).

Masked (padding) keys weigh exactly zero, so results equal the per-session computation up to float
summation order (same argmax; ``tests/test_models_batched_decode.py``).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from swarmlm.models.kvcache import Session

PAD_FACTOR = 2  # padded key positions of a group <= PAD_FACTOR x its real ones + PAD_SLACK
PAD_SLACK = 256


def plan_groups(items: Sequence[tuple[int, int]]) -> list[list[int]]:
    """Entry indices grouped for one padded attention call each (see the module docstring)."""
    groups: list[list[int]] = []
    cur: list[int] = []
    total = 0
    for idx, length in sorted(items, key=lambda t: (t[1], t[0])):
        # ``length`` is the group's longest context so far (sorted): the padded size if it joins
        if cur and (len(cur) + 1) * length > PAD_FACTOR * (total + length) + PAD_SLACK:
            if len(cur) > 1:
                groups.append(cur)
            cur, total = [], 0
        cur.append(idx)
        total += length
    if len(cur) > 1:
        groups.append(cur)
    return groups


def _rotate_half(x: torch.Tensor) -> torch.Tensor:  # as models/shard.py rotate_half
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def _stack(parts: list[torch.Tensor], length: int) -> torch.Tensor:
    """``parts`` ([nkv, <= length, hd] each) stacked to [S, nkv, length, hd], zeros after a short one."""
    if all(p.shape[1] == length for p in parts):
        return torch.stack(parts)
    out = parts[0].new_zeros((len(parts), parts[0].shape[0], length, parts[0].shape[2]))
    for i, p in enumerate(parts):
        out[i, :, :p.shape[1]] = p
    return out


class DecodeGroup:
    """The decode steps of ``sessions`` (batch 1 each) at ``positions``, rows ``row0..row0+S`` of the
    packed batch."""

    def __init__(self, sessions: list[Session], positions: list[int], row0: int, inv_freq: torch.Tensor,
                 attn_scaling: float, dtype: torch.dtype) -> None:
        self.sessions = sessions
        self.positions = positions
        self.rows = slice(row0, row0 + len(sessions))
        self.pos = torch.tensor(positions, dtype=torch.long)
        self.length = max(positions) + 1
        freqs = self.pos.float()[:, None] * inv_freq[None, :]  # the same fp32 tables as the per-session path
        emb = torch.cat((freqs, freqs), dim=-1)
        self.cos = (emb.cos() * attn_scaling).to(dtype)[:, None, :]  # [S, 1, hd]
        self.sin = (emb.sin() * attn_scaling).to(dtype)[:, None, :]
        self.mask = (torch.arange(self.length)[None, :] <= self.pos[:, None])[:, None, None, :]  # [S, 1, 1, L]
        self.arange = torch.arange(len(sessions))
        self.new_k: list[torch.Tensor] = []
        self.new_v: list[torch.Tensor] = []

    def attend(self, li: int, part: torch.Tensor, nh: int, nkv: int, hd: int) -> torch.Tensor:
        S, L = len(self.sessions), self.length
        qk_dim = (nh + nkv) * hd
        qk = part[:, :qk_dim].reshape(S, nh + nkv, hd)
        qk = qk * self.cos + _rotate_half(qk) * self.sin
        q = qk[:, :nh].reshape(S, nkv, nh // nkv, hd)  # query heads of one kv head side by side
        k = qk[:, nh:]
        v = part[:, qk_dim:].reshape(S, nkv, hd)
        keys = _stack([s.k[li, 0, :, :L] for s in self.sessions], L)  # a copy: [S, nkv, L, hd]
        vals = _stack([s.v[li, 0, :, :L] for s in self.sessions], L)
        keys[self.arange, :, self.pos] = k
        vals[self.arange, :, self.pos] = v
        self.new_k.append(k)
        self.new_v.append(v)
        o = F.scaled_dot_product_attention(q, keys, vals, attn_mask=self.mask)
        return o.reshape(S, nh * hd)

    def write_back(self) -> None:
        """Every layer's new key/value into each member's cache (one copy per session and tensor)."""
        ks, vs = torch.stack(self.new_k), torch.stack(self.new_v)  # [layers, S, nkv, hd]
        for i, (s, p) in enumerate(zip(self.sessions, self.positions)):
            s.k[:, 0, :, p] = ks[:, i]
            s.v[:, 0, :, p] = vs[:, i]
        self.new_k, self.new_v = [], []
