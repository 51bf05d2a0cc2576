"""The Llama-family model config, parsed strictly from a checkpoint's ``config.json``.

``ModelConfig.from_dict(d)`` / ``ModelConfig.from_dir(path)`` accept the HF configs of Llama 2/3,
Mistral, Qwen2/2.5 and SmolLM2 (``model_type`` in :data:`SUPPORTED_MODEL_TYPES`), in the classic
form (``rope_theta`` + ``rope_scaling``) and the transformers-5 form (``rope_parameters``), and
Gemma 3's text decoder (``gemma3_text``, ``arch="gemma3"``: q/k norms, a norm after attention and
after the MLP, GELU-tanh, a scaled embedding, local layers with their own RoPE base; sessions stay
within its sliding window, so local and global layers attend alike).
Anything we would not compute exactly raises :class:`UnsupportedModelError` naming the field.

``rope_inv_freq(cfg)`` returns the RoPE inverse frequencies and the attention scaling for the
supported ``rope_type`` values: default, linear, llama3, yarn.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from swarmlm.models.errors import CheckpointError, UnsupportedModelError

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "gemma3_text")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


@dataclass(frozen=True)
class ModelConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict[str, Any] | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool  # q/k/v bias (Qwen2 always; Llama when attention_bias=true, then also o_proj)
    o_bias: bool
    mlp_bias: bool
    sliding_window: int | None  # effective window; sessions longer than this are refused
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)
    arch: str = "llama"  # "llama" (the Llama family) or "gemma3" (see the module text)
    rope_local_theta: float | None = None  # gemma3: the RoPE base of the sliding-window layers ...
    local_layers: tuple[int, ...] = ()  # ... which are these
    embed_scale: float = 1.0  # gemma3: token embeddings are multiplied by sqrt(hidden_size)

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @property
    def q_dim(self) -> int:
        return self.num_attention_heads * self.head_dim

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> "ModelConfig":
        path = Path(model_dir) / "config.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise CheckpointError(f"{path}: missing (a checkpoint directory needs config.json)") from None
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: unreadable config: {exc}") from None
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config.json") -> "ModelConfig":
        def bad(msg: str) -> UnsupportedModelError:
            return UnsupportedModelError(f"{source}: {msg}")

        mt = d.get("model_type")
        if mt not in SUPPORTED_MODEL_TYPES:
            raise bad(f"model_type {mt!r} is not supported (supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
        try:
            hidden = int(d["hidden_size"])
            n_heads = int(d["num_attention_heads"])
            n_layers = int(d["num_hidden_layers"])
            vocab = int(d["vocab_size"])
            inter = int(d["intermediate_size"])
        except KeyError as exc:
            raise bad(f"required field {exc.args[0]!r} is missing") from None
        n_kv = int(d.get("num_key_value_heads") or n_heads)
        head_dim = int(d.get("head_dim") or hidden // n_heads)
        if n_heads % n_kv:
            raise bad(f"num_attention_heads={n_heads} is not a multiple of num_key_value_heads={n_kv}")
        if mt == "gemma3_text":
            return _gemma3(d, bad, vocab, hidden, inter, n_layers, n_heads, n_kv, head_dim)
        act = d.get("hidden_act", "silu")
        if act not in ("silu", "swish"):
            raise bad(f"hidden_act {act!r} is not supported (only silu / SwiGLU)")
        if d.get("pretraining_tp", 1) not in (1, None):
            raise bad("pretraining_tp != 1 is not supported")
        for key in ("attn_logit_softcapping", "final_logit_softcapping", "qk_layernorm", "use_qk_norm"):
            if d.get(key):
                raise bad(f"{key} is not supported")
        # RoPE: classic (rope_theta + rope_scaling) or transformers-5 (rope_parameters)
        rp = d.get("rope_parameters")
        if isinstance(rp, dict) and "rope_theta" in rp:
            theta = float(rp["rope_theta"])
            scaling = None if rp.get("rope_type", "default") == "default" else dict(rp)
        else:
            theta = float(d.get("rope_theta", 10000.0))
            scaling = dict(d["rope_scaling"]) if d.get("rope_scaling") else None
        if scaling is not None:
            rtype = scaling.get("rope_type", scaling.get("type"))
            if rtype == "default":
                scaling = None
            elif rtype not in SUPPORTED_ROPE_TYPES:
                raise bad(f"rope_scaling type {rtype!r} is not supported (supported: {', '.join(SUPPORTED_ROPE_TYPES)})")
            else:
                scaling["rope_type"] = rtype
                if "factor" not in scaling:
                    raise bad(f"rope_scaling {rtype!r} needs 'factor'")
        for src in (d, scaling or {}):
            if float(src.get("partial_rotary_factor", 1.0) or 1.0) != 1.0:
                raise bad("partial_rotary_factor != 1 is not supported")
        if mt == "qwen2":
            qkv_bias, o_bias = True, False
            sw = d.get("sliding_window") if d.get("use_sliding_window") else None
            if sw is not None and int(d.get("max_window_layers", n_layers)) < n_layers:
                raise bad("Qwen2 sliding window on only some layers is not supported")
        else:
            qkv_bias = o_bias = bool(d.get("attention_bias", False))
            sw = d.get("sliding_window")
        eos = d.get("eos_token_id")
        eos_ids = tuple(int(x) for x in (eos if isinstance(eos, list) else [eos] if eos is not None else []))
        return cls(
            model_type=mt, vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
            num_hidden_layers=n_layers, num_attention_heads=n_heads, num_key_value_heads=n_kv,
            head_dim=head_dim, rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)), rope_theta=theta,
            rope_scaling=scaling, max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)), attention_bias=qkv_bias,
            o_bias=o_bias, mlp_bias=bool(d.get("mlp_bias", False)),
            sliding_window=int(sw) if sw else None,
            bos_token_id=d.get("bos_token_id"), eos_token_ids=eos_ids,
        )


def _gemma3(d: dict[str, Any], bad: Any, vocab: int, hidden: int, inter: int, n_layers: int, n_heads: int,
            n_kv: int, head_dim: int) -> ModelConfig:
    act = d.get("hidden_activation") or d.get("hidden_act") or "gelu_pytorch_tanh"
    if act not in ("gelu_pytorch_tanh", "gelu_tanh"):
        raise bad(f"gemma3 hidden_activation {act!r} is not supported (only gelu_pytorch_tanh)")
    for key in ("attn_logit_softcapping", "final_logit_softcapping"):
        if d.get(key):
            raise bad(f"{key} is not supported")
    if int(d.get("query_pre_attn_scalar") or head_dim) != head_dim:
        raise bad("gemma3 query_pre_attn_scalar != head_dim is not supported")
    if d.get("attention_bias") or d.get("mlp_bias"):
        raise bad("gemma3 with biases is not supported")
    rp = d.get("rope_parameters")
    if isinstance(rp, dict) and "full_attention" in rp:
        full, local = rp.get("full_attention") or {}, rp.get("sliding_attention") or {}
    else:
        full = {"rope_type": "default", "rope_theta": d.get("rope_theta", 1_000_000.0)}
        if d.get("rope_scaling"):
            full = {**full, **d["rope_scaling"]}
        local = {"rope_type": "default", "rope_theta": d.get("rope_local_base_freq", 10_000.0)}
    for name, part in (("full_attention", full), ("sliding_attention", local)):
        if part.get("rope_type", part.get("type", "default")) != "default":
            raise bad(f"gemma3 {name} RoPE {part.get('rope_type')!r} is not supported (only default)")
    types = d.get("layer_types")
    if types is None:
        pattern = int(d.get("sliding_window_pattern") or 6)
        types = ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(n_layers)]
    if len(types) != n_layers or set(types) - {"full_attention", "sliding_attention"}:
        raise bad("gemma3 layer_types must name full_attention or sliding_attention for every layer")
    sw = d.get("sliding_window")
    eos = d.get("eos_token_id")
    eos_ids = tuple(int(x) for x in (eos if isinstance(eos, list) else [eos] if eos is not None else []))
    return ModelConfig(
        model_type="gemma3_text", vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
        num_hidden_layers=n_layers, num_attention_heads=n_heads, num_key_value_heads=n_kv, head_dim=head_dim,
        rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)), rope_theta=float(full.get("rope_theta", 1_000_000.0)),
        rope_scaling=None, max_position_embeddings=int(d.get("max_position_embeddings", 32768)),
        tie_word_embeddings=bool(d.get("tie_word_embeddings", True)), attention_bias=False, o_bias=False,
        mlp_bias=False, sliding_window=int(sw) if sw else None, bos_token_id=d.get("bos_token_id"),
        eos_token_ids=eos_ids, arch="gemma3", rope_local_theta=float(local.get("rope_theta", 10_000.0)),
        local_layers=tuple(i for i, t in enumerate(types) if t == "sliding_attention"),
        embed_scale=float(hidden) ** 0.5)


def rope_inv_freq(cfg: ModelConfig) -> tuple[torch.Tensor, float]:
    """(inv_freq [head_dim/2] fp32, attention_scaling) exactly as transformers computes them."""
    dim = cfg.head_dim
    base = cfg.rope_theta
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    s = cfg.rope_scaling
    if s is None:
        return inv_freq, 1.0
    rtype, factor = s["rope_type"], s["factor"]
    if rtype == "linear":
        return inv_freq / factor, 1.0
    if rtype == "llama3":
        low_ff, high_ff = s["low_freq_factor"], s["high_freq_factor"]
        old_ctx = s["original_max_position_embeddings"]
        low_wl, high_wl = old_ctx / low_ff, old_ctx / high_ff
        wavelen = 2 * math.pi / inv_freq
        f = torch.where(wavelen > low_wl, inv_freq / factor, inv_freq)
        smooth = (old_ctx / wavelen - low_ff) / (high_ff - low_ff)
        smoothed = (1 - smooth) * f / factor + smooth * f
        medium = ~(wavelen < high_wl) * ~(wavelen > low_wl)
        return torch.where(medium, smoothed, f), 1.0
    # yarn
    orig = s.get("original_max_position_embeddings") or cfg.max_position_embeddings
    if factor is None:
        factor = cfg.max_position_embeddings / orig

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    att = s.get("attention_factor")
    if att is None:
        m, m_all = s.get("mscale"), s.get("mscale_all_dim")
        att = float(mscale(factor, m) / mscale(factor, m_all)) if m and m_all else mscale(factor)
    beta_fast, beta_slow = s.get("beta_fast") or 32, s.get("beta_slow") or 1

    def corr_dim(rot: float) -> float:
        return (dim * math.log(orig / (rot * 2 * math.pi))) / (2 * math.log(base))

    low, high = corr_dim(beta_fast), corr_dim(beta_slow)
    if s.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    pos_freqs = base ** (torch.arange(0, dim, 2).float() / dim)
    extra = 1 - ramp
    inv = (1.0 / (factor * pos_freqs)) * (1 - extra) + (1.0 / pos_freqs) * extra
    return inv, float(att)
