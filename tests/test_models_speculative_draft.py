"""Drafts from a small local model (``models/speculative_draft.py``): the draft model's own KV cache
rolled back past rejected drafts, greedy speculative decoding on builtin:tiny with builtin:tiny as
draft (every draft kept) and with another, smaller random model of the same vocabulary (tokens still
those of plain decoding), and the refusal of a draft model with another tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import save_file
from tokenizers import Tokenizer as TK

from swarmlm.models.generate import generate, load_chain
from swarmlm.models.registry import resolve
from swarmlm.models.sampling import SamplingParams
from swarmlm.models.speculative import speculative_generate
from swarmlm.models.speculative_draft import DraftModel, DraftModelError, load_draft_shard
from swarmlm.models.tiny import tiny_config, tiny_weights, write_tiny
from swarmlm.models.tokenizer import Tokenizer

PROMPT = [1, 5, 9, 13, 67, 67, 3, 4, 60, 69, 99, 5, 9, 13, 5, 9, 2, 7, 5, 9]


def write_draft(d: Path, layers: int = 2, extra_token: str | None = None) -> Path:
    """A random Llama with builtin:tiny's tokenizer and ``layers`` layers (other weights: another model)."""
    write_tiny(d)
    cfg = {**tiny_config(), "num_hidden_layers": layers}
    (d / "config.json").write_text(json.dumps(cfg))
    save_file(tiny_weights(cfg), str(d / "model.safetensors"), metadata={"format": "pt"})
    if extra_token:  # another tokenizer: one more token
        tk = TK.from_file(str(d / "tokenizer.json"))
        tk.add_special_tokens([extra_token])
        (d / "tokenizer.json").write_text(tk.to_str())
    return d


def target_tok() -> Tokenizer:
    return Tokenizer.from_dir(resolve("builtin:tiny"))


def test_draft_model_as_target_keeps_every_draft():
    shards = load_chain("builtin:tiny", 2)
    params = SamplingParams(max_new_tokens=24)
    plain = generate(shards, PROMPT, params, eos_ids=[]).token_ids
    draft = DraftModel(load_draft_shard("builtin:tiny", target_tok()), len(PROMPT) + 40)
    spec, stats = speculative_generate(shards, PROMPT, params, eos_ids=[], drafter=draft)
    assert spec == plain
    assert stats.proposed > 0 and stats.accepted == stats.proposed  # the same model: every draft kept
    assert stats.passes < len(plain) // 3


def test_other_draft_model_gives_the_plain_greedy_tokens(tmp_path):
    shards = load_chain("builtin:tiny", 1)
    params = SamplingParams(max_new_tokens=24)
    plain = generate(shards, PROMPT, params, eos_ids=[]).token_ids
    d = write_draft(tmp_path / "draft")
    draft = DraftModel(load_draft_shard(str(d), target_tok()), len(PROMPT) + 40)
    spec, stats = speculative_generate(shards, PROMPT, params, eos_ids=[], drafter=draft)
    assert spec == plain
    assert stats.accepted < stats.proposed  # another model: drafts were rejected (and rolled back)


def test_draft_cache_rolls_back_to_the_kept_prefix(tmp_path):
    shard = load_draft_shard(str(write_draft(tmp_path / "draft")), target_tok())
    used = DraftModel(shard, 64)
    first = used.draft(PROMPT, 4)
    assert len(first) == 4 and len(used.fed) == len(PROMPT) + 3
    kept = PROMPT + first[:1] + [(first[1] + 1) % 256]  # one draft kept, then another token
    again = used.draft(kept, 3)
    assert used.forwards == 4 + 3  # the shared prefix was not recomputed: one forward for the new tail
    fresh = DraftModel(shard, 64).draft(kept, 3)
    assert again == fresh  # the rejected drafts' cache entries did not leak into the new drafts


def test_draft_model_with_another_tokenizer_is_refused(tmp_path):
    d = write_draft(tmp_path / "other", extra_token="<|other|>")
    with pytest.raises(DraftModelError, match="another tokenizer") as e:
        load_draft_shard(str(d), target_tok())
    assert "\n" not in str(e.value)
