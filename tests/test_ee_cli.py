"""`swarmlm key gen` and the `model encrypt` parser (wired here on a private argparse tree)."""

from __future__ import annotations

import argparse
import json
import os

import pytest

from swarmlm.crypto.ee import EEKey, EEKeyError
from swarmlm.crypto.ee_keyfile import recorded_variants
from swarmlm.node.front import cli_key


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers()
    cli_key.register(sub)
    model = sub.add_parser("model")
    cli_key.add_model_encrypt(model.add_subparsers())
    return p


def test_key_gen_writes_a_private_key_and_refuses_overwrite(tmp_path) -> None:
    out = tmp_path / "keys" / "ee.key"
    ns = _parser().parse_args(["key", "gen", "--out", str(out)])
    assert ns.func(ns) == 0
    assert os.stat(out).st_mode & 0o777 == 0o600
    EEKey.load(out)
    with pytest.raises(EEKeyError):
        ns.func(ns)


def test_model_encrypt_and_key_info_agree(tmp_path, capsys) -> None:
    pytest.importorskip("swarmlm.models.registry")
    key = EEKey.generate().save(tmp_path / "k")
    ns = _parser().parse_args(["model", "encrypt", "builtin:tiny", "--key", str(key), "--out", str(tmp_path / "ee")])
    assert ns.func(ns) == 0
    made = json.loads(capsys.readouterr().out)
    cfg = json.loads((tmp_path / "ee" / "config.json").read_text())
    assert cfg["swarmlm_ee"]["variant_id"] == made["variant_id"]
    assert recorded_variants(key) == {made["variant_id"]: "builtin:tiny"}  # `ask --ee-key` finds the base model
    assert cfg["tie_word_embeddings"] is False  # rotation unties the head of builtin:tiny
    ns = _parser().parse_args(["key", "info", str(key), "--model", "builtin:tiny"])
    assert ns.func(ns) == 0
    assert json.loads(capsys.readouterr().out)["variant_id"] == made["variant_id"]
