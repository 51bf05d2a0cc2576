"""Model specs, builtin:tiny determinism, concurrent-safe cache building, `swarmlm model` commands."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from swarmlm.models.errors import UnknownModelError
from swarmlm.models.registry import list_models, materialize, model_info, resolve
from swarmlm.node.front.cli import main as cli_main


def _digest(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir()) if p.is_file()}


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SWARMLM_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_resolve_specs(cache, tmp_path):
    p = resolve("builtin:tiny")
    assert p.is_relative_to(cache) and {"config.json", "model.safetensors", "tokenizer.json",
                                        "tokenizer_config.json"} <= {f.name for f in p.iterdir()}
    assert resolve(str(p)) == p  # a checkpoint directory resolves to itself
    with pytest.raises(UnknownModelError, match="builtin:nope"):
        resolve("builtin:nope")
    with pytest.raises(UnknownModelError, match="checkpoint"):
        resolve(str(tmp_path / "missing"))


_CHILD = ("import sys; from swarmlm.models.registry import resolve; "
          "sys.stdout.write(str(resolve('builtin:tiny')))")


def test_tiny_is_identical_across_processes_and_concurrent_builds(cache, tmp_path):
    env = dict(os.environ, SWARMLM_CACHE_DIR=str(cache))
    procs = [subprocess.Popen([sys.executable, "-c", _CHILD], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    paths = {o[0].decode() for o in outs}
    assert len(paths) == 1
    built = Path(paths.pop())
    assert not [p for p in built.parent.iterdir() if ".tmp-" in p.name]  # temp dirs cleaned up
    env2 = dict(os.environ, SWARMLM_CACHE_DIR=str(tmp_path / "other"))
    other = subprocess.run([sys.executable, "-c", _CHILD], env=env2, capture_output=True, check=True, timeout=120)
    assert _digest(built) == _digest(Path(other.stdout.decode()))


def test_materialize_is_atomic_on_failure(tmp_path):
    final = tmp_path / "m" / "x"

    def broken(tmp: Path) -> None:
        (tmp / "config.json").write_text("{}")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        materialize(final, broken)
    assert not final.exists() and not [p for p in final.parent.iterdir() if ".tmp-" in p.name]
    materialize(final, lambda tmp: (tmp / "config.json").write_text("{}"))
    assert (final / "config.json").exists()
    assert final.stat().st_mode & 0o055 and (final / "config.json").stat().st_mode & 0o044  # readable by others
    materialize(final, broken)  # already complete: not rebuilt


def test_list_and_info(cache):
    entries = {e.spec: e for e in list_models()}
    assert set(entries) == {"builtin:tiny", "builtin:smollm2-135m", "builtin:gemma3-270m"}
    assert not entries["builtin:tiny"].cached
    info = model_info("builtin:tiny", dtype="bf16", shards=3)
    assert info.num_layers == 6 and [(s["start"], s["end"]) for s in info.shards] == [(0, 2), (2, 4), (4, 6)]
    assert info.total_bytes == 2 * info.num_params
    assert sum(s["params"] for s in info.shards) == info.num_params  # untied: no double counting
    assert info.kv_bytes_per_token == 2 * 6 * 2 * 16 * 2
    assert {e.spec: e for e in list_models()}["builtin:tiny"].cached


def test_cli_model_commands(cache, capsys):
    assert cli_main(["model", "info", "builtin:tiny", "--shards", "2", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["num_layers"] == 6 and len(info["shards"]) == 2
    assert cli_main(["model", "info", "builtin:tiny"]) == 0
    assert "shard [  0,   6)" in capsys.readouterr().out
    assert cli_main(["model", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["spec"] for r in rows} == {"builtin:tiny", "builtin:smollm2-135m", "builtin:gemma3-270m"}
    assert cli_main(["model", "convert", "builtin:tiny"]) == 0
    assert capsys.readouterr().out.strip() == str(resolve("builtin:tiny"))
    assert cli_main(["model", "info", "builtin:bogus"]) == 1
    assert "unknown builtin" in capsys.readouterr().err
