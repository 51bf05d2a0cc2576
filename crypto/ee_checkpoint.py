"""Writing the EE variant of a checkpoint directory: ``encrypt_checkpoint(spec_or_dir, key_path, out_dir)``.

Input: an HF-layout directory (config.json, ``*.safetensors`` with or without
``model.safetensors.index.json``, tokenizer files) or a spec the models layer resolves
(``builtin:tiny``). Output: a normal checkpoint of the same layout -- same tensor names and shapes,
same file split -- that ``swarmlm.models.shard.load_shard`` reads unchanged, with:

* ``lm_head.weight`` added and ``tie_word_embeddings: false`` when rotation unties the head;
* every RMSNorm weight stored as ones (rotate mode) -- they are folded into the next linear layers;
* special-token ids in config.json / generation_config.json (``bos``, ``eos``, ``pad``) replaced by
  their *encrypted* ids, so a node stops at the encrypted EOS without being told anything else
  (this reveals those 2-3 of V mappings, which position statistics reveal anyway: docs/EE.md);
  ``hide_special_ids=True`` drops them instead and the client must send its stop ids or cancel;
* ``"swarmlm_ee": {"version": 1, "variant_id", "mode", "base_config_sha256"}`` in config.json
  (the variant id is an HMAC of the key: it reveals nothing about it, see ``swarmlm.crypto.ee``);
* the tokenizer files copied as they are (public for a public base model; pass
  ``include_tokenizer=False`` for a private vocabulary). A node must not detokenize EE ids: the
  ``swarmlm_ee`` entry tells it the ids are encrypted.

Tensors are processed file by file (peak memory about one safetensors file plus the norm weights).
The output is written to a temporary folder next to ``out_dir`` and renamed into place at the end.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from swarmlm.crypto.ee import EEError, EEKey, config_hash, variant_id
from swarmlm.crypto.ee_transform import EETransform
from swarmlm.models import registry

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja", "tokenizer.model", "vocab.json", "merges.txt")
SPECIAL_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")


@dataclass(frozen=True)
class EncryptResult:
    out_dir: Path
    variant_id: str
    mode: str
    tensors: int
    seconds: float


def resolve_checkpoint(spec_or_dir: str | Path) -> Path:
    """A checkpoint directory from a path or a model spec (resolved by ``swarmlm.models``)."""
    path = Path(spec_or_dir)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise EEError(f"{path} has no config.json: not a checkpoint directory")
        return path
    return Path(registry.resolve(str(spec_or_dir)))  # the models layer owns specs such as builtin:tiny


def _map_special(value: Any, perm: torch.Tensor) -> Any:
    if value is None:
        return None
    if isinstance(value, list):
        return [int(perm[int(v)]) for v in value]
    return int(perm[int(value)])


def ee_config(base: dict[str, Any], tr: EETransform, vid: str, hide_special_ids: bool) -> dict[str, Any]:
    """config.json of the EE checkpoint."""
    cfg = dict(base)
    if tr.unties_embeddings:
        cfg["tie_word_embeddings"] = False
    for k in SPECIAL_ID_KEYS:
        if k in cfg:
            cfg[k] = None if hide_special_ids else _map_special(cfg[k], tr.perm)
    cfg.pop("swarmlm_builtin", None)  # not the builtin any more: a node must not treat it as one
    cfg["swarmlm_ee"] = {"version": 1, "variant_id": vid, "mode": tr.mode,
                         "base_config_sha256": config_hash(base)}
    return cfg


def _index(model_dir: Path) -> dict[str, str]:
    """tensor name -> file name (from the index json, else from the safetensors headers)."""
    idx = model_dir / "model.safetensors.index.json"
    if idx.exists():
        return dict(json.loads(idx.read_text())["weight_map"])
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise EEError(f"{model_dir}: no *.safetensors files")
    out: dict[str, str] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as sf:
            for name in sf.keys():
                out[name] = f.name
    return out


def encrypt_checkpoint(spec_or_dir: str | Path, key_path: str | Path, out_dir: str | Path,
                       mode: str = "rotate", include_tokenizer: bool = True,
                       hide_special_ids: bool = False) -> EncryptResult:
    """Write the EE variant of a checkpoint under ``key_path`` to ``out_dir`` (which must not exist)."""
    t0 = time.perf_counter()
    key = EEKey.load(key_path)
    src = resolve_checkpoint(spec_or_dir)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise EEError(f"{out} exists and is not empty; choose a new --out directory")
    base = json.loads((src / "config.json").read_text())
    tr = EETransform(key, base, mode)
    vid = variant_id(key, base, mode)
    index = _index(src)
    norms: dict[str, torch.Tensor] = {}

    def get_other(name: str) -> torch.Tensor:
        if name not in norms:
            if name not in index:
                raise EEError(f"{src}: tensor {name} is missing")
            with safe_open(str(src / index[name]), framework="pt") as sf:
                norms[name] = sf.get_tensor(name)
        return norms[name]

    tmp = out.parent / f".{out.name}.ee-tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    by_file: dict[str, list[str]] = {}
    for name, fn in index.items():
        by_file.setdefault(fn, []).append(name)
    head_file = index.get("model.norm.weight", sorted(by_file)[-1])
    weight_map: dict[str, str] = {}
    meta = {"swarmlm_ee_variant": vid, "format": "pt"}
    n = 0
    for fn, names in sorted(by_file.items()):
        with safe_open(str(src / fn), framework="pt") as sf:
            local = {name: sf.get_tensor(name) for name in names}

        def get(name: str) -> torch.Tensor:
            return local[name] if name in local else get_other(name)

        enc = {name: tr.transform_tensor(name, get) for name in names}
        if fn == head_file and tr.unties_embeddings and "lm_head.weight" not in index:
            enc["lm_head.weight"] = tr.tied_lm_head(get)
        save_file(enc, str(tmp / fn), metadata=meta)
        weight_map.update({k: fn for k in enc})
        n += len(enc)
        del local, enc
    if (src / "model.safetensors.index.json").exists():
        (tmp / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"swarmlm_ee_variant": vid}, "weight_map": dict(sorted(weight_map.items()))}, indent=2))
    (tmp / "config.json").write_text(json.dumps(ee_config(base, tr, vid, hide_special_ids), indent=2))
    gen = src / "generation_config.json"
    if gen.exists():
        g = json.loads(gen.read_text())
        for k in SPECIAL_ID_KEYS:
            if k in g:
                g[k] = None if hide_special_ids else _map_special(g[k], tr.perm)
        (tmp / "generation_config.json").write_text(json.dumps(g, indent=2))
    if include_tokenizer:
        for f in TOKENIZER_FILES:
            if (src / f).exists():
                shutil.copy2(src / f, tmp / f)
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return EncryptResult(out, vid, mode, n, time.perf_counter() - t0)


def read_ee_info(model_dir: str | Path) -> dict[str, Any] | None:
    """The ``swarmlm_ee`` entry of a checkpoint's config.json, or None for a plaintext checkpoint."""
    try:
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    info = cfg.get("swarmlm_ee")
    return dict(info) if isinstance(info, dict) else None
