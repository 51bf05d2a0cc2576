"""Reading only a shard's tensors from a checkpoint's safetensors files.

- ``DTYPES``: ``"fp32"``/``"bf16"``/``"fp16"`` (and torch names) -> ``torch.dtype``; ``parse_dtype``.
- ``tensor_index(model_dir)``: tensor name -> file, from ``model.safetensors.index.json`` or the
  headers of ``*.safetensors`` (headers only; nothing is loaded).
- ``expected_shapes(cfg, start, end, embedding, head)``: the HF tensor names and shapes a shard needs.
- ``read_tensors(model_dir, shapes, dtype)``: opens each file with ``safe_open`` and reads just those
  tensors, converted to ``dtype``. Same-dtype tensors stay zero-copy on the file mapping (pages come in
  when first used); converted ones are read one mapping at a time, so peak memory is the result plus
  one tensor, not the whole file. Missing tensors, shape mismatches and corrupt/truncated files raise
  :class:`CheckpointError` naming the file and tensor.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open

from swarmlm.models.config import ModelConfig
from swarmlm.models.errors import CheckpointError

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32, "float32": torch.float32,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16,
}
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPE_NAMES:
            raise CheckpointError(f"unsupported dtype {dtype} (use fp32, bf16 or fp16)")
        return dtype
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise CheckpointError(f"unsupported dtype {dtype!r} (use fp32, bf16 or fp16)") from None


def layer_prefix(i: int) -> str:
    return f"model.layers.{i}."


def expected_shapes(cfg: ModelConfig, start: int, end: int, embedding: bool, head: bool) -> dict[str, tuple[int, ...]]:
    """HF tensor names -> shapes for layers [start, end) plus the ends this shard holds."""
    H, I, V = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    out: dict[str, tuple[int, ...]] = {}
    if embedding or (head and cfg.tie_word_embeddings):
        out["model.embed_tokens.weight"] = (V, H)
    for i in range(start, end):
        p = layer_prefix(i)
        out[p + "self_attn.q_proj.weight"] = (cfg.q_dim, H)
        out[p + "self_attn.k_proj.weight"] = (cfg.kv_dim, H)
        out[p + "self_attn.v_proj.weight"] = (cfg.kv_dim, H)
        out[p + "self_attn.o_proj.weight"] = (H, cfg.q_dim)
        if cfg.attention_bias:
            out[p + "self_attn.q_proj.bias"] = (cfg.q_dim,)
            out[p + "self_attn.k_proj.bias"] = (cfg.kv_dim,)
            out[p + "self_attn.v_proj.bias"] = (cfg.kv_dim,)
        if cfg.o_bias:
            out[p + "self_attn.o_proj.bias"] = (H,)
        out[p + "mlp.gate_proj.weight"] = (I, H)
        out[p + "mlp.up_proj.weight"] = (I, H)
        out[p + "mlp.down_proj.weight"] = (H, I)
        if cfg.mlp_bias:
            out[p + "mlp.gate_proj.bias"] = (I,)
            out[p + "mlp.up_proj.bias"] = (I,)
            out[p + "mlp.down_proj.bias"] = (H,)
        out[p + "input_layernorm.weight"] = (H,)
        out[p + "post_attention_layernorm.weight"] = (H,)
        if cfg.arch == "gemma3":  # q/k norms per head, and norms before and after the MLP
            out[p + "self_attn.q_norm.weight"] = (cfg.head_dim,)
            out[p + "self_attn.k_norm.weight"] = (cfg.head_dim,)
            out[p + "pre_feedforward_layernorm.weight"] = (H,)
            out[p + "post_feedforward_layernorm.weight"] = (H,)
    if head:
        out["model.norm.weight"] = (H,)
        if not cfg.tie_word_embeddings:
            out["lm_head.weight"] = (V, H)
    return out


def tensor_index(model_dir: str | Path) -> dict[str, Path]:
    """Map every tensor name to its safetensors file (reads headers only)."""
    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        try:
            wm = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{index}: unreadable index: {exc}") from None
        return {name: model_dir / fn for name, fn in wm.items()}
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{model_dir}: no *.safetensors files")
    out: dict[str, Path] = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as sf:
                for name in sf.keys():
                    out[name] = f
        except Exception as exc:  # safetensors raises its own SafetensorError / OSError
            raise CheckpointError(f"{f}: corrupt or unreadable safetensors file: {exc}") from None
    return out


def _check_size(path: Path) -> None:
    """Refuse a truncated file: the header's data offsets must fit in the file."""
    try:
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: corrupt safetensors header: {exc}") from None
    need = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + need > os.path.getsize(path):
        raise CheckpointError(f"{path}: truncated safetensors file ({os.path.getsize(path)} bytes, "
                              f"header needs {8 + n + need})")


def read_tensors(model_dir: str | Path, shapes: dict[str, tuple[int, ...]], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Read exactly the named tensors, check their shapes, convert to ``dtype``."""
    index = tensor_index(model_dir)
    missing = [n for n in shapes if n not in index]
    if missing:
        more = f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""
        raise CheckpointError(f"{model_dir}: missing tensors {', '.join(missing[:3])}{more}")
    by_file: dict[Path, list[str]] = {}
    for name in shapes:
        by_file.setdefault(index[name], []).append(name)
    out: dict[str, torch.Tensor] = {}
    for path, names in by_file.items():
        if not path.exists():
            raise CheckpointError(f"{path}: missing safetensors file")
        _check_size(path)
        try:
            sf = safe_open(str(path), framework="pt")
            for name in names:
                t = sf.get_tensor(name)  # zero-copy from the file mapping
                if tuple(t.shape) != tuple(shapes[name]):
                    raise CheckpointError(f"{path}: tensor {name} has shape {tuple(t.shape)}, "
                                          f"config expects {tuple(shapes[name])}")
                if not t.is_floating_point():
                    raise CheckpointError(f"{path}: tensor {name} has non-float dtype {t.dtype}")
                if t.dtype != dtype:
                    out[name] = t.to(dtype)
                    del t
                    # reopen: otherwise every converted tensor's source pages stay mapped and resident,
                    # and peak memory is the whole file plus the converted copy
                    sf = safe_open(str(path), framework="pt")
                else:
                    out[name] = t
            del sf
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(f"{path}: corrupt safetensors file: {exc}") from None
    return out
