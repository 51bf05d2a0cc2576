"""Node identity: an Ed25519 key pair, its libp2p peer id, and the key file on disk.

The peer id is computed exactly as libp2p does for Ed25519 keys (an identity multihash of the
protobuf-encoded public key, base58btc), so ``Identity.peer_id`` equals the id the libp2p host
announces. Nothing here touches the network.
"""

from __future__ import annotations

import functools
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import nacl.exceptions
import nacl.signing
from cryptography.hazmat.primitives import serialization

from swarmlm.errors import SwarmError
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

KEY_FILE_NAME = "identity.key"
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
# libp2p's PublicKey protobuf: field 1 (KeyType) = 1 (Ed25519), field 2 (Data) = 32 bytes.
_PB_ED25519_PREFIX = b"\x08\x01\x12\x20"


class IdentityError(SwarmError):
    """A key file that is missing, malformed or readable by others."""


def b58encode(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, r = divmod(n, 58)
        out.append(_B58[r])
    pad = len(data) - len(data.lstrip(b"\x00"))
    return "1" * pad + "".join(reversed(out))


def b58decode(text: str) -> bytes:
    n = 0
    for ch in text:
        idx = _B58.find(ch)
        if idx < 0:
            raise ValueError(f"invalid base58 character {ch!r}")
        n = n * 58 + idx
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    pad = len(text) - len(text.lstrip("1"))
    return b"\x00" * pad + body


def peer_id_from_public_key(public_key: bytes) -> str:
    """libp2p peer id (base58 identity multihash) of a raw 32-byte Ed25519 public key."""
    if len(public_key) != 32:
        raise ValueError("an Ed25519 public key has 32 bytes")
    encoded = _PB_ED25519_PREFIX + public_key
    return b58encode(bytes([0x00, len(encoded)]) + encoded)


def public_key_from_peer_id(peer_id: str) -> bytes:
    """Recover the Ed25519 public key embedded in a peer id (identity multihash), or raise ValueError."""
    raw = b58decode(peer_id)
    if len(raw) != 2 + 36 or raw[0] != 0x00 or raw[1] != 36 or raw[2:6] != _PB_ED25519_PREFIX:
        raise ValueError(f"not an Ed25519 peer id: {peer_id!r}")
    return raw[6:]


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True when ``signature`` is a valid Ed25519 signature of ``message`` by ``public_key``
    (libsodium: twice as fast as OpenSSL here -- a verified generation checks a signed tap per hop
    and step -- and it also refuses small-order keys and non-canonical signatures)."""
    try:
        _verify_key(public_key).verify(message, signature)
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        return False
    return True


@functools.lru_cache(maxsize=4096)
def _verify_key(raw: bytes) -> nacl.signing.VerifyKey:
    return nacl.signing.VerifyKey(raw)


@functools.lru_cache(maxsize=4096)
def _key_of_peer(peer_id: str) -> bytes | None:
    try:
        return public_key_from_peer_id(peer_id)
    except ValueError:
        return None


def verify_by_peer_id(peer_id: str, message: bytes, signature: bytes) -> bool:
    """Verify a signature by the key a peer id embeds (decoded keys are cached: state sync verifies a lot)."""
    key = _key_of_peer(peer_id) if isinstance(peer_id, str) and len(peer_id) < 128 else None
    return key is not None and verify(key, message, signature)


@dataclass(frozen=True)
class Identity:
    """An Ed25519 key pair. ``seed`` is the 32-byte private seed."""

    seed: bytes

    def __post_init__(self) -> None:
        if len(self.seed) != 32:
            raise IdentityError("an Ed25519 private key seed has 32 bytes")

    @classmethod
    def generate(cls) -> "Identity":
        return cls(os.urandom(32))

    @classmethod
    def from_seed(cls, seed: bytes) -> "Identity":
        return cls(bytes(seed))

    @functools.cached_property
    def _private(self) -> Ed25519PrivateKey:  # built once: a server signs a tap per verified step
        return Ed25519PrivateKey.from_private_bytes(self.seed)

    @property
    def public_key(self) -> bytes:
        return self._private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @property
    def peer_id(self) -> str:
        return peer_id_from_public_key(self.public_key)

    @functools.cached_property
    def _signer(self) -> nacl.signing.SigningKey:  # libsodium signs in 60% of OpenSSL's time (same signature)
        return nacl.signing.SigningKey(self.seed)

    def sign(self, message: bytes) -> bytes:
        return self._signer.sign(message).signature

    def __repr__(self) -> str:  # never print the seed
        return f"Identity(peer_id={self.peer_id})"


def check_private_file(path: Path, what: str = "key file") -> None:
    """Refuse a secret file that group or others can read: the user must fix its mode."""
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise IdentityError(
            f"{what} {path} is accessible by other users (mode {stat.S_IMODE(mode):04o}); "
            f"run `chmod 600 {path}` and start again"
        )


def write_private_file(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 from the start (no window where others could read it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def load_or_create(data_dir: Path) -> tuple[Identity, bool]:
    """The node's identity from ``data_dir/identity.key``; created (mode 0600) on first run.

    Returns (identity, created). Raises IdentityError for a key others can read or a bad file.
    """
    path = Path(data_dir) / KEY_FILE_NAME
    if not path.exists():
        ident = Identity.generate()
        write_private_file(path, ident.seed)
        return ident, True
    check_private_file(path, "identity key")
    seed = path.read_bytes()
    if len(seed) != 32:
        raise IdentityError(f"identity key {path} is corrupt ({len(seed)} bytes, expected 32)")
    return Identity(seed), False
