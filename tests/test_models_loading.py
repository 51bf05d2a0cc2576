"""Shard loading: only the shard's tensors, dtypes, and clear errors for bad checkpoints/configs."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from swarmlm.models import loading
from swarmlm.models.config import ModelConfig
from swarmlm.models.errors import CheckpointError, UnsupportedModelError
from swarmlm.models.registry import resolve, shard_bytes
from swarmlm.models.shard import load_shard



@pytest.fixture()
def tiny_copy(tmp_path):
    dst = tmp_path / "tiny"
    shutil.copytree(resolve("builtin:tiny"), dst)
    return dst


def test_reads_only_the_shards_tensors(monkeypatch, tiny_copy):
    seen: list[str] = []
    real = loading.read_tensors

    def spy(model_dir, shapes, dtype):
        out = real(model_dir, shapes, dtype)
        seen.extend(out)
        return out

    monkeypatch.setattr("swarmlm.models.shard.read_tensors", spy)
    mid = load_shard(tiny_copy, 2, 4)
    assert not mid.has_embedding and not mid.has_head
    assert seen and all(n.startswith(("model.layers.2.", "model.layers.3.")) for n in seen)
    seen.clear()
    last = load_shard(tiny_copy, 4, 6)
    assert last.has_head and "lm_head.weight" in seen and "model.embed_tokens.weight" not in seen
    assert not any(n.startswith("model.layers.0.") for n in seen)
    seen.clear()
    cfg = json.loads((tiny_copy / "config.json").read_text())
    (tiny_copy / "config.json").write_text(json.dumps({**cfg, "tie_word_embeddings": True}))
    tied = load_shard(tiny_copy, 4, 6)
    assert "model.embed_tokens.weight" in seen and "lm_head.weight" not in seen  # tied head reads the embedding
    assert tied.lm_head is not None and tied.embed is None
    whole = load_shard(tiny_copy, 0, 6)
    assert whole.lm_head is whole.embed  # one tensor, counted once
    (tiny_copy / "config.json").write_text(json.dumps(cfg))
    cfg = ModelConfig.from_dir(tiny_copy)
    for sh in (mid, last, load_shard(tiny_copy, 0, 2)):
        assert (sh.num_params, sh.nbytes) == shard_bytes(cfg, sh.start, sh.end, "fp32")


@pytest.mark.parametrize("dtype,torch_dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16),
                                               ("fp16", torch.float16)])
def test_dtypes(tiny_copy, dtype, torch_dtype):
    sh = load_shard(tiny_copy, 0, 6, dtype)
    assert sh.dtype == torch_dtype and sh.embed.dtype == torch_dtype and sh.dtype_name == dtype
    assert sh.nbytes == shard_bytes(sh.config, 0, 6, dtype)[1]


def test_bad_dtype_and_range(tiny_copy):
    with pytest.raises(CheckpointError, match="dtype"):
        load_shard(tiny_copy, 0, 6, "int8")
    with pytest.raises(CheckpointError, match="range"):
        load_shard(tiny_copy, 4, 9)
    with pytest.raises(CheckpointError, match="first shard"):
        load_shard(tiny_copy, 2, 4, embedding=True)


def test_truncated_file(tiny_copy):
    f = tiny_copy / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match="truncated"):
        load_shard(tiny_copy, 0, 6)


def test_corrupt_header(tiny_copy):
    f = tiny_copy / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[8:40] = b"\xff" * 32
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_shard(tiny_copy, 0, 6)


def test_missing_tensor_and_shape_mismatch(tiny_copy):
    f = tiny_copy / "model.safetensors"
    tensors = load_file(str(f))
    del tensors["model.layers.3.mlp.up_proj.weight"]
    save_file(tensors, str(f))
    load_shard(tiny_copy, 0, 3)  # layers 0..2 do not need it
    with pytest.raises(CheckpointError, match="missing tensors model.layers.3.mlp.up_proj.weight"):
        load_shard(tiny_copy, 3, 6)
    tensors["model.layers.3.mlp.up_proj.weight"] = torch.zeros(7, 64)
    save_file(tensors, str(f))
    with pytest.raises(CheckpointError, match="shape"):
        load_shard(tiny_copy, 2, 4)


def test_missing_files(tmp_path, tiny_copy):
    with pytest.raises(CheckpointError, match="config.json"):
        load_shard(tmp_path, 0, 1)
    (tiny_copy / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no \\*.safetensors"):
        load_shard(tiny_copy, 0, 6)


def test_sharded_checkpoint_with_index(tiny_copy):
    tensors = load_file(str(tiny_copy / "model.safetensors"))
    (tiny_copy / "model.safetensors").unlink()
    names = sorted(tensors)
    parts = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
             "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for fn, ns in parts.items():
        save_file({n: tensors[n] for n in ns}, str(tiny_copy / fn))
    wm = {n: fn for fn, ns in parts.items() for n in ns}
    (tiny_copy / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    sh = load_shard(tiny_copy, 0, 6)
    assert torch.equal(sh.embed, tensors["model.embed_tokens.weight"])


BASE = {"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
        "num_hidden_layers": 2, "num_attention_heads": 2}


@pytest.mark.parametrize("patch,needle", [
    ({"model_type": "gemma"}, "model_type 'gemma'"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "rope_scaling type 'dynamic'"),
    ({"rope_scaling": {"rope_type": "longrope", "factor": 2.0}}, "longrope"),
    ({"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
    ({"num_key_value_heads": 3}, "multiple"),
    ({"pretraining_tp": 2}, "pretraining_tp"),
    ({"hidden_size": None}, ""),
])
def test_unsupported_configs_are_clear_errors(patch, needle):
    d = {**BASE, **patch}
    if d["hidden_size"] is None:
        del d["hidden_size"]
        needle = "hidden_size"
    with pytest.raises(UnsupportedModelError, match=needle):
        ModelConfig.from_dict(d)


def test_config_forms():
    classic = ModelConfig.from_dict({**BASE, "rope_theta": 5e5, "rope_scaling": {"type": "linear", "factor": 4}})
    v5 = ModelConfig.from_dict({**BASE, "rope_parameters": {"rope_theta": 5e5, "rope_type": "linear", "factor": 4}})
    assert classic.rope_theta == v5.rope_theta == 5e5
    assert classic.rope_scaling["rope_type"] == v5.rope_scaling["rope_type"] == "linear"
    q = ModelConfig.from_dict({**BASE, "model_type": "qwen2", "sliding_window": 4096, "use_sliding_window": False})
    assert q.attention_bias and not q.o_bias and q.sliding_window is None
    m = ModelConfig.from_dict({**BASE, "model_type": "mistral", "sliding_window": 4096, "eos_token_id": [1, 2]})
    assert m.sliding_window == 4096 and m.eos_token_ids == (1, 2) and m.head_dim == 4
