"""The Llama-family decoder (Llama 2/3, Mistral, Qwen2/2.5, SmolLM2; Gemma 3) as layer shards, in plain torch.

A **shard** is the contiguous layer range ``[start, end)`` of a model; the first may also hold the
token embedding, the last the final norm and LM head. The whole model is the shard ``[0, n)`` with
both ends. Every layer is computed the way transformers does it (RMSNorm in fp32, RoPE tables in
fp32 cast to the compute dtype, grouped-query attention, SwiGLU), so logits match it to ~1e-5 in fp32.
Gemma 3 (``config.arch == "gemma3"``) adds four things to a layer, each where transformers has it:
RMSNorm of every q and k head before RoPE, a norm on the attention's output and on the MLP's output
before each residual add, GELU-tanh instead of SiLU; plus a scaled embedding and a second RoPE base
for its sliding-window layers. Its norms scale by ``1 + weight``: the 1 is added once at load.

API:
- ``load_shard(model_dir, start, end, dtype="fp32", embedding=None, head=None) -> Shard`` reads only
  this shard's tensors (``embedding`` defaults to ``start == 0``, ``head`` to ``end == n``; a head with
  tied embeddings also reads ``model.embed_tokens.weight``). fp32 weights stay on the file mapping
  (copy-on-write; pages load on first use), other dtypes are converted tensor by tensor.
- ``Shard``: ``.start .end .num_layers_total .has_embedding .has_head .config .dtype .dtype_name
  .num_params .nbytes``; ``cache_layout()``; ``new_session(max_length, batch_size=1)`` (a standalone
  session; nodes use :class:`swarmlm.models.kvcache.KVCacheManager` with ``cache_layout()``);
  ``view(start, end)``: a sub-range shard sharing the weights.
- ``Shard.forward(x, session, positions=None, last_only=False)``: ``x`` is LongTensor ids ``[B, T]``
  when the shard has the embedding, else hidden ``[B, T, hidden]`` in any float dtype. ``positions``
  is the first position (int) or a LongTensor of the contiguous positions (``[T]`` or ``[B, T]``);
  ``None`` appends at ``session.length``. Returns fp32 logits ``[B, T, V]`` (``[B, 1, V]`` with
  ``last_only``) when the shard has the head, else hidden ``[B, T, hidden]`` in the shard's dtype.
  Needs ``start <= session.length`` (no gaps) and sets ``session.length = start + T``: running from
  an earlier position (replay after failover, rebuild from 0 on a fresh or used session) overwrites.
- ``Shard.forward_batch([(session, x, positions), ...], last_only=False, hidden=False) -> list[Tensor]``
  (``hidden``: the last layer's output before the final norm even on the head shard): several
  sessions' steps in one forward, each with its own number of tokens (decodes of T=1 beside prefill
  chunks and multi-token steps): every entry's rows are packed into one ``[N, hidden]`` so the
  projections and MLP run once, attention runs per session against its own cache. ``last_only`` is
  one flag or one per entry. Results equal the unbatched ones up to float rounding (< 1e-5, same
  argmax in the tests). Sessions must be distinct.

All calls run under ``torch.inference_mode`` with the caller's ``torch.get_num_threads()``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from swarmlm.models.batched_decode import DecodeGroup, plan_groups
from swarmlm.models.config import ModelConfig, rope_inv_freq
from swarmlm.models.errors import CheckpointError, SessionError
from swarmlm.models.kvcache import CacheLayout, Session
from swarmlm.models.loading import DTYPE_NAMES, expected_shapes, layer_prefix, parse_dtype, read_tensors

@dataclass(eq=False)
class LayerWeights:
    """One decoder layer; q/k/v and gate/up are fused into single matmuls."""

    ln1: torch.Tensor
    wqkv: torch.Tensor
    bqkv: torch.Tensor | None
    wo: torch.Tensor
    bo: torch.Tensor | None
    ln2: torch.Tensor
    w_gate_up: torch.Tensor
    b_gate_up: torch.Tensor | None
    w_down: torch.Tensor
    b_down: torch.Tensor | None
    q_norm: torch.Tensor | None = None  # gemma3: per-head RMSNorm of q and k before RoPE
    k_norm: torch.Tensor | None = None
    ln_attn_out: torch.Tensor | None = None  # gemma3: norm of the attention's output before the residual add
    ln_mlp_out: torch.Tensor | None = None  # gemma3: norm of the MLP's output before the residual add


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' LlamaRMSNorm: normalize in fp32, cast back, then scale (fused kernel)."""
    return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear``, whatever the row count. (Computing 8-48 rows as ``w @ x.T`` was ~9% faster at
    exactly 16 rows on one machine, but on an AMD EPYC 1.5-2.6x slower at row counts that are not a
    multiple of 8, e.g. a decoding cohort of 15 after one user finished: docs/BENCHMARKS.md, serve.)"""
    return F.linear(x, w, b)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def _positions_start(positions: int | torch.Tensor | None, session: Session, T: int) -> int:
    if positions is None:
        return session.length
    if not isinstance(positions, torch.Tensor):
        return int(positions)
    if positions.dim() == 0:
        return int(positions)
    p = positions.reshape(-1, positions.shape[-1]) if positions.dim() > 1 else positions.view(1, -1)
    start = int(p[0, 0])
    want = torch.arange(start, start + T, dtype=p.dtype)
    if p.shape[-1] != T or not bool((p == want).all()):
        raise SessionError("positions must be one contiguous range start..start+T-1 for every row")
    return start


class Shard:
    """Layers ``[start, end)`` of a Llama-family model (see the module docstring)."""

    decode_matmul = False  # single-token attention as matmul/softmax/matmul (else the SDPA kernel)

    def __init__(self, config: ModelConfig, start: int, end: int, layers: list[LayerWeights],
                 dtype: torch.dtype, embed: torch.Tensor | None = None, norm: torch.Tensor | None = None,
                 lm_head: torch.Tensor | None = None, has_embedding: bool = False, has_head: bool = False,
                 model_dir: Path | None = None) -> None:
        self.config = config
        self.start, self.end = start, end
        self.num_layers_total = config.num_hidden_layers
        self.layers = layers
        self.dtype = dtype
        self.embed, self.norm, self.lm_head = embed, norm, lm_head
        self.has_embedding, self.has_head = has_embedding, has_head
        self.model_dir = model_dir
        inv_freq, self.attn_scaling = rope_inv_freq(config)
        self.inv_freq = inv_freq.float()
        self.inv_freq_local = None  # gemma3: the sliding-window layers' RoPE base
        if config.rope_local_theta is not None:
            self.inv_freq_local = rope_inv_freq(replace(config, rope_theta=config.rope_local_theta,
                                                        rope_scaling=None))[0].float()
        self._local = frozenset(config.local_layers)
        self.attn_scale = config.head_dim ** -0.5

    # ------------------------------------------------------------------ info
    @property
    def dtype_name(self) -> str:
        return DTYPE_NAMES[self.dtype]

    def _tensors(self) -> list[torch.Tensor]:
        ts = [t for lw in self.layers for t in vars(lw).values() if t is not None]
        seen = {id(t) for t in ts}
        for t in (self.embed, self.norm, self.lm_head):
            if t is not None and id(t) not in seen:
                ts.append(t)
                seen.add(id(t))
        return ts

    @property
    def num_params(self) -> int:
        return sum(t.numel() for t in self._tensors())

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._tensors())

    def cache_layout(self) -> CacheLayout:
        c = self.config
        return CacheLayout(self.end - self.start, c.num_key_value_heads, c.head_dim, self.dtype)

    def new_session(self, max_length: int, batch_size: int = 1, session_id: str = "local") -> Session:
        self._check_window(max_length)
        return Session(session_id, self.cache_layout(), max_length, batch_size)

    def view(self, start: int, end: int) -> "Shard":
        """A Shard computing only layers [start, end) of this one (shares the weights, no copy)."""
        if not self.start <= start < end <= self.end:
            raise SessionError(f"[{start}, {end}) is not inside [{self.start}, {self.end})")
        if (start, end) == (self.start, self.end):
            return self
        emb = self.has_embedding and start == 0
        head = self.has_head and end == self.num_layers_total
        return Shard(self.config, start, end, self.layers[start - self.start:end - self.start], self.dtype,
                     embed=self.embed if emb else None, norm=self.norm if head else None,
                     lm_head=self.lm_head if head else None, has_embedding=emb, has_head=head,
                     model_dir=self.model_dir)

    def _check_window(self, max_length: int) -> None:
        sw = self.config.sliding_window
        if sw is not None and max_length > sw:
            raise SessionError(f"max_length {max_length} exceeds the model's sliding window {sw} (not supported)")

    def __repr__(self) -> str:
        return (f"Shard([{self.start}, {self.end}) of {self.num_layers_total}, {self.dtype_name}, "
                f"embedding={self.has_embedding}, head={self.has_head})")

    # --------------------------------------------------------------- compute
    def forward(self, x: torch.Tensor, session: Session, positions: int | torch.Tensor | None = None,
                last_only: bool = False) -> torch.Tensor:
        return self.forward_batch([(session, x, positions)], last_only=last_only)[0]

    @torch.inference_mode()
    def forward_batch(self, entries: Sequence[tuple[Session, torch.Tensor, int | torch.Tensor | None]],
                      last_only: bool | Sequence[bool] = False, hidden: bool = False) -> list[torch.Tensor]:
        if not entries:
            return []
        cfg = self.config
        layout = self.cache_layout()
        lasts = [bool(last_only)] * len(entries) if isinstance(last_only, bool) else [bool(v) for v in last_only]
        if len(lasts) != len(entries):
            raise SessionError("forward_batch: one last_only flag per entry")
        if len({id(e[0]) for e in entries}) != len(entries):
            raise SessionError("forward_batch needs distinct sessions")
        starts, sizes, lens = [], [], []
        for sess, x, pos in entries:
            if sess.layout != layout:
                raise SessionError(f"session {sess.session_id} was opened for another shard layout")
            if x.dim() < 2 or x.shape[0] != sess.batch_size:
                raise SessionError(f"session {sess.session_id} has batch size {sess.batch_size}, input {tuple(x.shape)}")
            T = x.shape[1]
            start = _positions_start(pos, sess, T)
            sess.check_step(start, T)
            if cfg.sliding_window is not None and start + T > cfg.sliding_window:
                raise SessionError(f"position {start + T} is beyond the model's sliding window "
                                   f"{cfg.sliding_window} (not supported)")
            starts.append(start)
            sizes.append(x.shape[0])
            lens.append(T)
        # decodes of batch-1 sessions with similar contexts attend as groups (models/batched_decode.py):
        # their entries go first, group by group, so each group's rows are contiguous
        grouped = plan_groups([(i, starts[i] + 1) for i in range(len(entries))
                               if lens[i] == 1 and sizes[i] == 1]) if cfg.arch == "llama" else []
        order = [i for g in grouped for i in g]
        if order:
            taken = set(order)
            order += [i for i in range(len(entries)) if i not in taken]
            entries, starts, sizes, lens, lasts = ([seq[i] for i in order]
                                                   for seq in (entries, starts, sizes, lens, lasts))
        groups, n_grouped = [], 0
        for g in grouped:
            groups.append(DecodeGroup([e[0] for e in entries[n_grouped:n_grouped + len(g)]],
                                      starts[n_grouped:n_grouped + len(g)], n_grouped, self.inv_freq,
                                      self.attn_scaling, self.dtype))
            n_grouped += len(g)
        # every entry's rows ([B, T] flattened) packed into one [N, hidden]: projections and MLP run once
        if self.has_embedding:
            if any(e[1].dtype not in (torch.int64, torch.int32) for e in entries):
                raise SessionError("the first shard takes token ids (LongTensor [B, T])")
            flat = [e[1].reshape(-1) for e in entries]
            h = F.embedding(torch.cat(flat) if len(flat) > 1 else flat[0], self.embed)
            if cfg.embed_scale != 1.0:  # gemma3 scales in the compute dtype, as transformers does
                h = h * torch.tensor(cfg.embed_scale, dtype=h.dtype)
        else:
            if any(e[1].dim() != 3 or e[1].shape[-1] != cfg.hidden_size for e in entries):
                raise SessionError(f"this shard takes hidden states [B, T, {cfg.hidden_size}]")
            flat = [e[1].reshape(-1, cfg.hidden_size) for e in entries]
            h = (torch.cat(flat) if len(flat) > 1 else flat[0]).to(self.dtype)
        # RoPE tables per entry (fp32, then the compute dtype), and the attention masks
        n_rep = cfg.num_attention_heads // cfg.num_key_value_heads
        cos_l, sin_l, masks = [], [], []
        cos_loc: list = []
        sin_loc: list = []
        for j, (start, T) in enumerate(zip(starts, lens)):
            if j < n_grouped:  # a group member: the group holds its tables
                cos_l.append(None)
                sin_l.append(None)
                masks.append(None)
                continue
            t_idx = torch.arange(T)
            for inv, cs, sn in ((self.inv_freq, cos_l, sin_l), (self.inv_freq_local, cos_loc, sin_loc)):
                if inv is None:
                    continue
                freqs = (t_idx + start).float()[:, None] * inv[None, :]
                emb = torch.cat((freqs, freqs), dim=-1)
                cs.append((emb.cos() * self.attn_scaling).to(self.dtype)[:, None, :])  # [T, 1, hd]
                sn.append((emb.sin() * self.attn_scaling).to(self.dtype)[:, None, :])
            if T == 1:
                masks.append(None)
            else:  # query t (global start+t) sees keys 0..start+t; rows are (group, t)
                m = torch.arange(start + T)[None, :] <= (t_idx + start)[:, None]
                masks.append(m.repeat(n_rep, 1))
        offsets = [0]
        for b, T in zip(sizes, lens):
            offsets.append(offsets[-1] + b * T)
        for li, lw in enumerate(self.layers):
            local = self.start + li in self._local
            h = self._layer(li, lw, h, entries, starts, offsets, lens, cos_loc if local else cos_l,
                            sin_loc if local else sin_l, masks, groups)
        for grp in groups:
            grp.write_back()
        for (sess, _, _), start, T in zip(entries, starts, lens):
            sess.length = start + T
            sess.touch()
        outs = [h[offsets[i]:offsets[i + 1]].view(b, T, -1) for i, (b, T) in enumerate(zip(sizes, lens))]
        if not self.has_head or hidden:  # hidden: the last layer's output, before the final norm
            return _unorder(outs, order)
        outs = [o[:, -1:] if last else o for o, last in zip(outs, lasts)]
        rows = [o.shape[0] * o.shape[1] for o in outs]
        hh = torch.cat([o.reshape(-1, cfg.hidden_size) for o in outs]) if len(outs) > 1 else outs[0]
        logits = linear(rms_norm(hh, self.norm, cfg.rms_norm_eps), self.lm_head).float()
        if len(outs) == 1:
            return [logits.view(outs[0].shape[0], outs[0].shape[1], -1)]
        res, at = [], 0
        for o, n in zip(outs, rows):
            res.append(logits[at:at + n].view(o.shape[0], o.shape[1], -1))
            at += n
        return _unorder(res, order)

    def _layer(self, li: int, lw: LayerWeights, h: torch.Tensor, entries, starts, offsets, lens, cos_l, sin_l,
               masks, groups=()) -> torch.Tensor:
        cfg = self.config
        nh, nkv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        g = nh // nkv
        x = rms_norm(h, lw.ln1, cfg.rms_norm_eps)
        qkv = linear(x, lw.wqkv, lw.bqkv).contiguous()  # q/k/v heads as rows (SDPA's fast kernel needs that)
        outs = [grp.attend(li, qkv[grp.rows], nh, nkv, hd) for grp in groups]
        qk_dim = cfg.q_dim + cfg.kv_dim
        n_grouped = groups[-1].rows.stop if groups else 0  # decode groups' entries (and rows) come first
        for i, (sess, _, _) in enumerate(entries):
            if i < n_grouped:
                continue
            T = lens[i]
            part = qkv[offsets[i]:offsets[i + 1]] if len(entries) > 1 else qkv
            B = part.shape[0] // T
            # RoPE on q and k heads at once: [B, T, nh + nkv, hd]
            qk = part[..., :qk_dim].reshape(B, T, nh + nkv, hd)
            if lw.q_norm is not None and lw.k_norm is not None:  # gemma3
                qk = torch.cat((rms_norm(qk[:, :, :nh], lw.q_norm, cfg.rms_norm_eps),
                                rms_norm(qk[:, :, nh:], lw.k_norm, cfg.rms_norm_eps)), dim=2)
            cos, sin = cos_l[i], sin_l[i]
            qk = qk * cos + rotate_half(qk) * sin
            q = qk[:, :, :nh].transpose(1, 2)
            k = qk[:, :, nh:].transpose(1, 2)
            v = part[..., qk_dim:].reshape(B, T, nkv, hd).transpose(1, 2)
            s = starts[i]
            kc, vc = sess.k[li], sess.v[li]
            kc[:, :, s:s + T] = k
            vc[:, :, s:s + T] = v
            keys, vals = kc[:, :, :s + T], vc[:, :, :s + T]
            # grouped-query attention without copying the cache: query heads of one kv head side by side
            qg = q.reshape(B, nkv, g * T, hd)
            if T == 1 and self.decode_matmul:  # decode: plain matmuls beat the fused kernel for one row
                att = torch.matmul(qg, keys.transpose(-1, -2)) * self.attn_scale
                att = torch.softmax(att, dim=-1, dtype=torch.float32).to(qg.dtype)
                o = torch.matmul(att, vals)
            else:
                o = F.scaled_dot_product_attention(qg, keys, vals, attn_mask=masks[i])
            outs.append(o.view(B, nh, T, hd).transpose(1, 2).reshape(B * T, nh * hd))
        o = torch.cat(outs, 0) if len(outs) > 1 else outs[0]
        a = linear(o, lw.wo, lw.bo)
        h = h + (a if lw.ln_attn_out is None else rms_norm(a, lw.ln_attn_out, cfg.rms_norm_eps))
        x = rms_norm(h, lw.ln2, cfg.rms_norm_eps)
        gu = linear(x, lw.w_gate_up, lw.b_gate_up)
        gate, up = gu.chunk(2, dim=-1)
        act = F.silu(gate) if cfg.arch == "llama" else F.gelu(gate, approximate="tanh")
        m = linear(act * up, lw.w_down, lw.b_down)
        return h + (m if lw.ln_mlp_out is None else rms_norm(m, lw.ln_mlp_out, cfg.rms_norm_eps))


def _unorder(outs: list[torch.Tensor], order: list[int]) -> list[torch.Tensor]:
    """Results of entries computed in ``order`` (a permutation, or [] for none) back in the callers' order."""
    if not order:
        return outs
    res: list[torch.Tensor] = [outs[0]] * len(outs)
    for j, i in enumerate(order):
        res[i] = outs[j]
    return res


def _plus_one(w: torch.Tensor) -> torch.Tensor:
    """Gemma's RMSNorm scales by ``1 + weight`` (computed in fp32, as transformers does)."""
    return (w.float() + 1.0).to(w.dtype)


def load_shard(model_dir: str | Path, start: int = 0, end: int | None = None, dtype: str | torch.dtype = "fp32",
               embedding: bool | None = None, head: bool | None = None) -> Shard:
    """Load layers ``[start, end)`` of the checkpoint in ``model_dir`` (only those tensors)."""
    model_dir = Path(model_dir)
    cfg = ModelConfig.from_dir(model_dir)
    n = cfg.num_hidden_layers
    end = n if end is None else end
    if not 0 <= start < end <= n:
        raise CheckpointError(f"bad layer range [{start}, {end}) for a model with {n} layers")
    embedding = start == 0 if embedding is None else embedding
    head = end == n if head is None else head
    if (embedding and start != 0) or (head and end != n):
        raise CheckpointError("only the first shard can hold the embedding and only the last the head")
    dt = parse_dtype(dtype)
    t = read_tensors(model_dir, expected_shapes(cfg, start, end, embedding, head), dt)
    layers = []
    for i in range(start, end):
        p = layer_prefix(i)
        a, m = p + "self_attn.", p + "mlp."

        def cat(*names: str) -> torch.Tensor:
            return torch.cat([t.pop(nm) for nm in names], 0).contiguous()

        bqkv = cat(a + "q_proj.bias", a + "k_proj.bias", a + "v_proj.bias") if cfg.attention_bias else None
        bgu = cat(m + "gate_proj.bias", m + "up_proj.bias") if cfg.mlp_bias else None
        gemma = cfg.arch == "gemma3"
        norm = (lambda name: _plus_one(t.pop(name))) if gemma else t.pop
        layers.append(LayerWeights(
            ln1=norm(p + "input_layernorm.weight"),
            wqkv=cat(a + "q_proj.weight", a + "k_proj.weight", a + "v_proj.weight"), bqkv=bqkv,
            wo=t.pop(a + "o_proj.weight"), bo=t.pop(a + "o_proj.bias") if cfg.o_bias else None,
            ln2=norm(p + ("pre_feedforward_layernorm.weight" if gemma else "post_attention_layernorm.weight")),
            w_gate_up=cat(m + "gate_proj.weight", m + "up_proj.weight"), b_gate_up=bgu,
            w_down=t.pop(m + "down_proj.weight"), b_down=t.pop(m + "down_proj.bias") if cfg.mlp_bias else None,
            q_norm=norm(a + "q_norm.weight") if gemma else None, k_norm=norm(a + "k_norm.weight") if gemma else None,
            ln_attn_out=norm(p + "post_attention_layernorm.weight") if gemma else None,
            ln_mlp_out=norm(p + "post_feedforward_layernorm.weight") if gemma else None,
        ))
    emb = t.get("model.embed_tokens.weight")
    lm_head = (emb if cfg.tie_word_embeddings else t.get("lm_head.weight")) if head else None
    final = t.get("model.norm.weight")
    if final is not None and cfg.arch == "gemma3":
        final = _plus_one(final)
    return Shard(cfg, start, end, layers, dt, embed=emb if embedding else None, norm=final,
                 lm_head=lm_head, has_embedding=embedding, has_head=head, model_dir=model_dir)
