"""The EE weight transform of a Llama-family checkpoint (HF tensor names), tensor by tensor.

With row-vector hidden states ``h`` (what every HF linear layer computes as ``h @ W.T``):

* vocabulary: ``E'[j] = E[inv[j]]`` and ``lm_head'[j] = lm_head[inv[j]]`` with ``inv = argsort(perm)``,
  so the model fed ``perm[x]`` returns logits whose column ``perm[y]`` is the plaintext column ``y``;
* residual stream, mode "rotate": ``h' = h @ Q`` (``Q`` orthogonal). RMSNorm(h Q) = RMSNorm(h) Q
  once its weight ``g`` is folded into the layers it feeds (``W' = W diag(g) Q``, norm weight := 1);
  layers writing into the residual get ``W' = Q.T W`` (and ``b' = b Q``); ``E' = E Q``. This is the
  computational invariance of SliceGPT / QuaRot. A tied LM head becomes untied (``diag(g_final)``);
* residual stream, mode "permute": ``h' = h[:, p]``; norm weights are permuted instead of folded,
  so tied embeddings stay tied (cheaper, but see docs/EE.md: its weights are trivially matched);
* attention heads per layer: kv heads shuffled, query heads shuffled inside their GQA group
  (``swarmlm.crypto.ee.head_permutation``); whole heads move, so RoPE pairs stay intact;
* MLP intermediate dimension per layer: rows of gate/up and columns of down permuted.

The transformed model computes exactly the plaintext function up to float rounding, with the
same shapes and names: a normal checkpoint that loaders and shards use unchanged. Supported:
``model_type`` llama, mistral, qwen2 (q/k/v/o and MLP biases included).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from swarmlm.crypto.ee import (
    EEError, EEKey, MODES, head_permutation, mlp_permutation, residual_permutation,
    residual_rotation, vocab_permutation,
)

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class Geometry:
    """The shape facts of a Llama-family config.json that the transform needs."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    tie_word_embeddings: bool

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "Geometry":
        mt = cfg.get("model_type", "llama")
        if mt not in SUPPORTED_MODEL_TYPES:
            raise EEError(f"EE supports model_type {', '.join(SUPPORTED_MODEL_TYPES)}; this model is {mt!r}")
        heads = int(cfg["num_attention_heads"])
        hidden = int(cfg["hidden_size"])
        return cls(
            vocab_size=int(cfg["vocab_size"]), hidden_size=hidden,
            intermediate_size=int(cfg["intermediate_size"]), num_layers=int(cfg["num_hidden_layers"]),
            num_heads=heads, num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or hidden // heads),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        )


Getter = Callable[[str], torch.Tensor]


class EETransform:
    """Derives every secret of one (key, config, mode) once and maps tensors to their EE form."""

    def __init__(self, key: EEKey, config: Mapping[str, Any], mode: str = "rotate") -> None:
        if mode not in MODES:
            raise EEError(f"unknown EE mode {mode!r}; choose one of {', '.join(MODES)}")
        self.key, self.mode, self.geo = key, mode, Geometry.from_config(config)
        self.perm = vocab_permutation(key, self.geo.vocab_size)
        self.inv = torch.argsort(self.perm)
        d = self.geo.hidden_size
        self.q = residual_rotation(key, d) if mode == "rotate" else None
        self.p = residual_permutation(key, d) if mode == "permute" else None
        self._layer_cache: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    @property
    def unties_embeddings(self) -> bool:
        """Rotate mode folds the final norm into the LM head, so a tied head gets its own tensor."""
        return self.mode == "rotate" and self.geo.tie_word_embeddings

    def layer_perms(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if i not in self._layer_cache:
            g = self.geo
            qh, kvh = head_permutation(self.key, i, g.num_heads, g.num_kv_heads)
            self._layer_cache[i] = (qh, kvh, mlp_permutation(self.key, i, g.intermediate_size))
        return self._layer_cache[i]

    # -- residual-stream helpers (float64 in, float64 out) ------------------------------------
    def _consumer(self, w: torch.Tensor, norm: torch.Tensor | None) -> torch.Tensor:
        """A linear layer reading the (normed) residual: columns are hidden dims."""
        if self.mode == "rotate":
            if norm is not None:
                w = w * norm.to(torch.float64).unsqueeze(0)
            return w @ self.q
        return w[:, self.p]

    def _producer(self, w: torch.Tensor) -> torch.Tensor:
        """A weight (rows = hidden dims) or bias (1-D) written into the residual stream."""
        if self.mode == "rotate":
            return w @ self.q if w.dim() == 1 else self.q.T @ w
        return w[self.p]

    def _norm(self, g: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(g) if self.mode == "rotate" else g[self.p]

    # -- the transform ----------------------------------------------------------------------
    def transform_tensor(self, name: str, get: Getter) -> torch.Tensor:
        """The EE form of tensor ``name``; ``get(other)`` fetches tensors it depends on (norms)."""
        t = get(name)
        dtype = t.dtype
        x = t.to(torch.float64)
        g = self.geo
        if name == "model.embed_tokens.weight":
            out = self._consumer(x[self.inv], None)
        elif name == "lm_head.weight":
            out = self._consumer(x[self.inv], get("model.norm.weight"))
        elif name == "model.norm.weight":
            out = self._norm(x)
        else:
            m = _LAYER.match(name)
            if not m:
                if "rotary_emb" in name:
                    return t
                raise EEError(f"EE does not know how to transform tensor {name!r}")
            out = self._layer_tensor(int(m.group(1)), m.group(2), x, get)
        return out.to(dtype).contiguous()

    def _layer_tensor(self, i: int, sub: str, x: torch.Tensor, get: Getter) -> torch.Tensor:
        g = self.geo
        qh, kvh, mlp = self.layer_perms(i)
        pre = f"model.layers.{i}."
        if sub in ("input_layernorm.weight", "post_attention_layernorm.weight"):
            return self._norm(x)
        if sub == "self_attn.rotary_emb.inv_freq":
            return x
        proj, _, kind = sub.rpartition(".")
        if proj in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
            heads, order = (g.num_heads, qh) if proj == "self_attn.q_proj" else (g.num_kv_heads, kvh)
            x = x.reshape(heads, g.head_dim, -1)[order].reshape(heads * g.head_dim, *x.shape[1:])
            if kind == "bias":
                return x
            return self._consumer(x, get(pre + "input_layernorm.weight"))
        if proj == "self_attn.o_proj":
            if kind == "bias":
                return self._producer(x)
            x = x.reshape(x.shape[0], g.num_heads, g.head_dim)[:, qh].reshape(x.shape[0], -1)
            return self._producer(x)
        if proj in ("mlp.gate_proj", "mlp.up_proj"):
            x = x[mlp]
            if kind == "bias":
                return x
            return self._consumer(x, get(pre + "post_attention_layernorm.weight"))
        if proj == "mlp.down_proj":
            return self._producer(x if kind == "bias" else x[:, mlp])
        raise EEError(f"EE does not know how to transform tensor {pre + sub!r}")

    def transform_state_dict(self, sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every tensor of ``sd`` in EE form, plus ``lm_head.weight`` when rotation unties it."""
        out = {name: self.transform_tensor(name, sd.__getitem__) for name in sd}
        if self.unties_embeddings and "model.embed_tokens.weight" in sd and "lm_head.weight" not in sd:
            out["lm_head.weight"] = self.tied_lm_head(sd.__getitem__)
        return out

    def tied_lm_head(self, get: Getter) -> torch.Tensor:
        """The EE LM head of a tied checkpoint (from the embedding table and the final norm)."""
        emb = get("model.embed_tokens.weight")
        return self.transform_tensor("lm_head.weight", lambda n: emb if n == "lm_head.weight" else get(n))

    # -- hidden states (for tests and attack measurements) ---------------------------------
    def encrypt_hidden(self, h: torch.Tensor) -> torch.Tensor:
        """What an EE node sees in place of the plaintext residual-stream state ``h``."""
        if self.mode == "rotate":
            return (h.to(torch.float64) @ self.q).to(h.dtype)
        return h[..., self.p]

    def decrypt_hidden(self, h: torch.Tensor) -> torch.Tensor:
        if self.mode == "rotate":
            return (h.to(torch.float64) @ self.q.T).to(h.dtype)
        return h[..., torch.argsort(self.p)]
