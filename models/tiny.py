"""``builtin:tiny``: a small Llama-family checkpoint with seeded random weights, for tests and testnets.

``write_tiny(out_dir)`` writes ``config.json``, ``model.safetensors``, ``tokenizer.json``,
``tokenizer_config.json`` (with a ChatML chat template) and ``generation_config.json``. Everything is
a pure function of :data:`TINY_VERSION` and :data:`TINY_SEED`: weights come from numpy's PCG64 (the same
bits on every platform), the tokenizer is byte-level BPE over the 256 byte symbols (no merges, no
training) plus ``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``. So every process on every machine
gets the same model, and text round-trips end to end (the output is gibberish, of course).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from swarmlm.models.config import ModelConfig
from swarmlm.models.loading import expected_shapes

TINY_VERSION = 2
TINY_SEED = 1234
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def tiny_config() -> dict:
    vocab = 256 + len(SPECIAL_TOKENS)
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab,
        "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 6, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "hidden_act": "silu", "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "rope_scaling": None, "max_position_embeddings": 2048,
        "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False,
        "bos_token_id": 256 + SPECIAL_TOKENS.index("<|im_start|>"),
        "eos_token_id": 256 + SPECIAL_TOKENS.index("<|im_end|>"),
        "torch_dtype": "float32", "swarmlm_builtin": f"tiny-v{TINY_VERSION}",
    }


def _printable_mask(vocab: int) -> np.ndarray:
    """Token ids of the byte-level symbols for printable ASCII, space and newline."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    mask = np.zeros(vocab, dtype=bool)
    for i, c in enumerate(alphabet):
        mask[i] = 33 <= ord(c) <= 126 or c in "\u0120\u010a"  # 'Ġ' is space, 'Ċ' newline
    return mask


def tiny_weights(cfg_dict: dict) -> dict[str, torch.Tensor]:
    cfg = ModelConfig.from_dict(cfg_dict)
    shapes = expected_shapes(cfg, 0, cfg.num_hidden_layers, True, True)
    rng = np.random.default_rng(TINY_SEED)
    out = {}
    for name in sorted(shapes):
        shape = shapes[name]
        z = rng.standard_normal(shape)
        if name.endswith("norm.weight"):
            w = 1.0 + 0.1 * z
        elif name == "model.embed_tokens.weight":
            w = z
        elif name == "lm_head.weight":
            w = z * (4.0 / np.sqrt(shape[-1]))  # peaked logits, so greedy argmax is robust to rounding
            w[~_printable_mask(shape[0])] *= 0.05  # mostly printable ASCII output
        else:
            w = z * (0.7 / np.sqrt(shape[-1]))
        out[name] = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))
    return out


def tiny_tokenizer_json() -> str:
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens(SPECIAL_TOKENS)
    return tk.to_str()


def write_tiny(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = tiny_config()
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    save_file(tiny_weights(cfg), str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "tokenizer.json").write_text(tiny_tokenizer_json())
    (out / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": None,
        "chat_template": CHAT_TEMPLATE, "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": cfg["max_position_embeddings"],
    }, indent=2))
    (out / "generation_config.json").write_text(json.dumps({"eos_token_id": cfg["eos_token_id"]}))
    return out
