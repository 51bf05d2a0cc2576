"""Who may write a swarm-state document: document keys, their owners, and authorship of Yjs updates.

Every peer ("owner") has two documents and is the only one that writes them: its entry document
(key: the peer id) and its records document (key: ``records_key(peer id)`` = peer id + "#r";
``doc_owner`` maps either key back to the peer id). The Yjs client id of a document is derived
from its key and the owner's epoch (``client_id_for``), so authorship is checkable from the update
alone: ``check_author`` rejects an update carrying structs of any other client id. The other half
of the write-rights check -- the envelope's signer is ``doc_owner(key)`` -- is done by the sync
engine (``swarmlm.net.state.ingest``) before an update reaches the document.
"""

from __future__ import annotations

import hashlib

import pycrdt

from swarmlm.net.state.schema import InvalidUpdate

RECORDS_SUFFIX = "#r"  # never in a base58 peer id


def records_key(peer_id: str) -> str:
    """Key of a peer's records document."""
    return peer_id + RECORDS_SUFFIX


def doc_owner(key: str) -> str:
    """The peer id that owns the document ``key`` (entry or records document)."""
    return key[: -len(RECORDS_SUFFIX)] if key.endswith(RECORDS_SUFFIX) else key


def client_id_for(key: str, epoch: int) -> int:
    """The Yjs client id of document ``key`` in ``epoch``: 32 bits of SHA-256, deterministic."""
    return int.from_bytes(hashlib.sha256(f"swarmlm-yclient/{key}/{epoch}".encode()).digest()[:4], "big")


def decode_state_vector(sv: bytes) -> dict[int, int]:
    """Decode a Yjs (v1) state vector: varuint count, then (client, clock) varuint pairs."""
    pos = 0

    def varuint() -> int:
        nonlocal pos
        num, shift = 0, 0
        while True:
            if pos >= len(sv) or shift > 63:
                raise ValueError("truncated state vector")
            b = sv[pos]
            pos += 1
            num |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return num

    out = {}
    for _ in range(varuint()):
        client = varuint()
        out[client] = varuint()
    if pos != len(sv):
        raise ValueError("trailing bytes after state vector")
    return out




def check_author(update: bytes, client_id: int) -> None:
    """Raise InvalidUpdate unless every struct of ``update`` was made by ``client_id``."""
    try:
        clients = decode_state_vector(pycrdt.get_state(update))
    except Exception:
        raise InvalidUpdate("decode", "Yjs update does not decode") from None
    if any(c != client_id for c in clients):
        raise InvalidUpdate("foreign_client", "update carries structs of another client id")
