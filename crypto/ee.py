"""Equivariant encryption (EE): the secret key, what is derived from it, and the EE variant id.

An EE key is 32 random bytes kept by the client in a file of mode 0600
(``swarmlm key gen --out KEYFILE``). Everything secret about an EE checkpoint is derived from it
deterministically, so the same key and base model always give the same checkpoint:

* ``vocab_permutation(key, n)`` -- encrypted id = ``perm[plain id]`` (the only part the client
  needs at inference time; see ``swarmlm.crypto.ee_codec.EEClientCodec``);
* ``residual_rotation(key, d)`` -- a Haar-random orthogonal matrix of the hidden dimension, or
  ``residual_permutation`` for the cheaper "permute" mode;
* ``head_permutation`` / ``mlp_permutation`` per layer (see ``swarmlm.crypto.ee_transform``).

Derivation: a SHAKE-256 stream of ``"swarmlm-ee-v1" || label || key`` (an extendable-output hash,
so every label gives an independent, key-dependent stream). Permutations are the argsort of 63-bit
words of that stream; the rotation is the QR of a Gaussian matrix built from it (Box-Muller),
sign-fixed so it is Haar-distributed.

The EE variant id, announced by nodes that host the checkpoint, is
``"ee1-" + hex(HMAC-SHA256(key, "swarmlm-ee-variant-v1" || mode || base_config_hash))[:24]``.
HMAC is a pseudo-random function: the id reveals nothing about the key (nor the permutations),
but a client holding the key recomputes it and so detects a node serving another key's variant
before sending anything (``EEKeyMismatchError``). It does make requests to one variant linkable,
which hosting a variant implies anyway.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from swarmlm.crypto.identity import IdentityError, check_private_file, write_private_file
from swarmlm.errors import SwarmError

EE_KEY_BYTES = 32
KEY_FILE_HEADER = "swarmlm-ee-key-v1"
VARIANT_LINE = "variant "  # later lines: "variant <variant id> <base model>" (crypto.ee_keyfile)
MODES = ("rotate", "permute")
_DOMAIN = b"swarmlm-ee-v1\x00"


class EEError(SwarmError):
    """Equivariant encryption could not be applied or used; the message says what to do."""


class EEKeyError(EEError):
    """An EE key file that is missing, malformed or readable by other users."""


class EEKeyMismatchError(EEError):
    """The node serves an EE variant made with another key (or another base model / mode)."""


class EEGarbledOutputError(EEError):
    """Decoded output looks like random tokens: most likely the wrong key for this variant."""


@dataclass(frozen=True)
class EEKey:
    """A 32-byte EE secret. ``repr`` never shows it."""

    secret: bytes

    def __post_init__(self) -> None:
        if len(self.secret) != EE_KEY_BYTES:
            raise EEKeyError(f"an EE key has {EE_KEY_BYTES} bytes, got {len(self.secret)}")

    @classmethod
    def generate(cls) -> "EEKey":
        return cls(os.urandom(EE_KEY_BYTES))

    def save(self, path: str | Path) -> Path:
        """Write the key to a new file created with mode 0600; refuses to overwrite."""
        path = Path(path)
        if path.exists():
            raise EEKeyError(f"{path} exists; refusing to overwrite a key (choose another --out)")
        write_private_file(path, f"{KEY_FILE_HEADER}\n{self.secret.hex()}\n".encode())
        return path

    @classmethod
    def load(cls, path: str | Path) -> "EEKey":
        """Read a key file; refuses one that group or others can access (chmod 600 fixes it)."""
        path = Path(path)
        if not path.is_file():
            raise EEKeyError(f"EE key file {path} not found (make one: swarmlm key gen --out {path})")
        try:
            check_private_file(path, "EE key file")
        except IdentityError as exc:
            raise EEKeyError(str(exc)) from None
        lines = [line.strip() for line in path.read_bytes().decode("utf-8", "replace").splitlines() if line.strip()]
        lines = lines[:2] if all(line.startswith(VARIANT_LINE) for line in lines[2:]) else lines
        if len(lines) != 2 or lines[0] != KEY_FILE_HEADER:
            raise EEKeyError(f"{path} is not an EE key file (expected a '{KEY_FILE_HEADER}' header)")
        try:
            secret = bytes.fromhex(lines[1])
        except ValueError:
            raise EEKeyError(f"{path}: the key is not hexadecimal") from None
        if len(secret) != EE_KEY_BYTES:
            raise EEKeyError(f"{path}: the key has {len(secret)} bytes, expected {EE_KEY_BYTES}")
        return cls(secret)

    def stream(self, label: str, nbytes: int) -> bytes:
        """``nbytes`` of key-dependent pseudo-random bytes for ``label`` (SHAKE-256)."""
        return hashlib.shake_256(_DOMAIN + label.encode() + b"\x00" + self.secret).digest(nbytes)

    def mac(self, message: bytes) -> bytes:
        return hmac.new(self.secret, message, hashlib.sha256).digest()

    def __repr__(self) -> str:
        return f"EEKey(fingerprint={self.mac(b'swarmlm-ee-fingerprint').hex()[:8]})"


def config_hash(config: Mapping[str, Any]) -> str:
    """SHA-256 of the architecture fields of a HF config.json (sorted, compact JSON)."""
    keep = {k: config.get(k) for k in sorted(ARCH_KEYS) if k in config}
    return hashlib.sha256(json.dumps(keep, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


ARCH_KEYS = (
    "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_theta",
    "max_position_embeddings", "attention_bias", "mlp_bias", "hidden_act", "rope_parameters",
    "rope_scaling", "tie_word_embeddings",
)


def variant_id(key: EEKey, base_config: Mapping[str, Any], mode: str = "rotate") -> str:
    """The public id of the EE variant of ``base_config`` under ``key`` (reveals nothing about it)."""
    if mode not in MODES:
        raise EEError(f"unknown EE mode {mode!r}; choose one of {', '.join(MODES)}")
    msg = b"swarmlm-ee-variant-v1\x00" + mode.encode() + b"\x00" + config_hash(base_config).encode()
    return "ee1-" + key.mac(msg).hex()[:24]


def _words63(key: EEKey, label: str, n: int) -> torch.Tensor:
    raw = bytearray(key.stream(label, 8 * n))
    return torch.frombuffer(raw, dtype=torch.int64).clone() & ((1 << 63) - 1)


def keyed_permutation(key: EEKey, label: str, n: int) -> torch.Tensor:
    """A uniformly random permutation of ``range(n)`` (int64 tensor) derived from the key."""
    return torch.argsort(_words63(key, label, n), stable=True)


def vocab_permutation(key: EEKey, vocab_size: int) -> torch.Tensor:
    """``perm`` with encrypted id = ``perm[plain id]``; ``argsort(perm)`` maps back."""
    return keyed_permutation(key, f"vocab/{vocab_size}", vocab_size)


def residual_permutation(key: EEKey, hidden: int) -> torch.Tensor:
    """Permute mode: encrypted hidden state = ``h[..., p]``."""
    return keyed_permutation(key, f"residual-perm/{hidden}", hidden)


def residual_rotation(key: EEKey, hidden: int) -> torch.Tensor:
    """Rotate mode: a Haar-random orthogonal ``Q`` (float64); encrypted hidden state = ``h @ Q``."""
    n = hidden * hidden
    words = _words63(key, f"residual-rot/{hidden}", 2 * n)
    u = (words >> 10).to(torch.float64) * (1.0 / float(1 << 53))  # uniform [0, 1)
    u1, u2 = 1.0 - u[:n], u[n:]  # u1 in (0, 1]
    gauss = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)
    q, r = torch.linalg.qr(gauss.reshape(hidden, hidden))
    return q * torch.sign(torch.diagonal(r)).unsqueeze(0)


def head_permutation(key: EEKey, layer: int, n_heads: int, n_kv: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(query-head order, kv-head order) for one layer, respecting grouped-query attention.

    New kv slot ``s`` holds old kv head ``kv[s]``; new query slots ``s*g .. s*g+g-1`` hold a keyed
    shuffle of the old query heads of group ``kv[s]`` (``g = n_heads // n_kv``), so every query
    head still reads the kv head it was trained with.
    """
    if n_heads % n_kv:
        raise EEError(f"num_attention_heads {n_heads} is not a multiple of num_key_value_heads {n_kv}")
    g = n_heads // n_kv
    kv = keyed_permutation(key, f"layer{layer}/kv-heads", n_kv)
    q = [int(kv[s]) * g + int(t) for s in range(n_kv)
         for t in keyed_permutation(key, f"layer{layer}/q-heads/{s}", g)]
    return torch.tensor(q, dtype=torch.int64), kv


def mlp_permutation(key: EEKey, layer: int, intermediate: int) -> torch.Tensor:
    return keyed_permutation(key, f"layer{layer}/mlp", intermediate)
