"""EE key handling: key files (0600, refusal of readable ones, malformed files), variant ids, and the
wrong-key checks of ``EEClientCodec`` (variant mismatch before sending, garbled-output detection)."""

from __future__ import annotations

import os

import pytest
import torch

from swarmlm.crypto.ee import EEKey, EEKeyError, EEKeyMismatchError, EEGarbledOutputError, variant_id
from swarmlm.crypto.ee_codec import EEClientCodec
from swarmlm.errors import SwarmError

CFG = {"model_type": "llama", "vocab_size": 1000, "hidden_size": 64, "intermediate_size": 96,
       "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}


def test_key_file_is_private_and_roundtrips(tmp_path) -> None:
    path = EEKey.generate().save(tmp_path / "k")
    assert os.stat(path).st_mode & 0o777 == 0o600
    key = EEKey.load(path)
    assert key == EEKey.load(path)
    assert key.secret.hex() not in repr(key)
    with pytest.raises(EEKeyError, match="refusing to overwrite"):
        key.save(path)


def test_readable_key_file_is_refused(tmp_path) -> None:
    path = EEKey.generate().save(tmp_path / "k")
    os.chmod(path, 0o644)
    with pytest.raises(EEKeyError, match="chmod 600"):
        EEKey.load(path)


@pytest.mark.parametrize("content", [b"", b"hello\n", b"swarmlm-ee-key-v1\nzz\n", b"swarmlm-ee-key-v1\nabcd\n"])
def test_malformed_key_file_is_reported(tmp_path, content: bytes) -> None:
    path = tmp_path / "k"
    path.write_bytes(content)
    os.chmod(path, 0o600)
    with pytest.raises(EEKeyError):
        EEKey.load(path)


def test_missing_key_file_says_how_to_make_one(tmp_path) -> None:
    with pytest.raises(EEKeyError, match="swarmlm key gen"):
        EEKey.load(tmp_path / "nope")


def test_variant_id_depends_on_key_model_and_mode_only() -> None:
    k1, k2 = EEKey(bytes(32)), EEKey(bytes([1] * 32))
    v = variant_id(k1, CFG)
    assert v == variant_id(k1, dict(CFG)) and v.startswith("ee1-")
    assert v != variant_id(k2, CFG)
    assert v != variant_id(k1, CFG, "permute")
    assert v != variant_id(k1, {**CFG, "hidden_size": 128})
    assert k1.secret.hex()[:8] not in v


def test_wrong_key_is_refused_before_sending() -> None:
    right = EEClientCodec.for_model(EEKey(bytes(32)), CFG)
    wrong = EEClientCodec.for_model(EEKey(bytes([7] * 32)), CFG)
    right.check_variant(right.variant_id)
    with pytest.raises(EEKeyMismatchError, match="nothing was sent") as exc:
        wrong.check_variant(right.variant_id)
    assert isinstance(exc.value, SwarmError)  # the CLI prints it as one line, no traceback
    with pytest.raises(EEKeyMismatchError):
        right.check_variant(None)  # a plaintext model announces no variant


def test_codec_roundtrips_ids_logits_and_bias() -> None:
    codec = EEClientCodec(EEKey(bytes(32)), 1000)
    ids = [0, 5, 999, 5]
    enc = codec.encrypt_ids(ids)
    assert enc != ids and codec.decrypt_ids(enc) == ids
    assert codec.decrypt_ids(codec.encrypt_ids(7)) == 7
    t = torch.tensor([[3, 4]])
    assert torch.equal(codec.decrypt_ids(codec.encrypt_ids(t)), t)
    logits = torch.randn(2, 1000)
    enc_logits = codec.encrypt_logits(logits)
    assert torch.equal(codec.decrypt_logits(enc_logits), logits)
    assert int(enc_logits[0].argmax()) == codec.encrypt_ids(int(logits[0].argmax()))  # sampling invariant
    assert codec.encrypt_logit_bias({5: -1.0}) == {enc[1]: -1.0}
    assert codec.stop_ids([999]) == [enc[2]]
    with pytest.raises(SwarmError, match="out of range"):
        codec.encrypt_ids([1000])


def test_garbled_output_is_detected_and_reported() -> None:
    right, wrong = EEClientCodec(EEKey(bytes(32)), 1000), EEClientCodec(EEKey(bytes([9] * 32)), 1000)
    natural = [3, 10, 45, 3, 7, 120, 10, 2, 66, 9, 31, 5]  # BPE-like: frequent tokens have low ids
    assert right.check_output(natural).garbled is False
    scrambled = wrong.decrypt_ids(right.encrypt_ids(natural))  # the node's output read with another key
    rep = wrong.garble_report(scrambled)
    assert rep.garbled is True
    with pytest.raises(EEGarbledOutputError, match="check --ee-key"):
        wrong.check_output(scrambled)
    assert right.garble_report([900, 901]).garbled is None  # too few distinct tokens to say
    right.check_prompt_nll(3.0)
    with pytest.raises(EEGarbledOutputError):
        right.check_prompt_nll(14.0)
