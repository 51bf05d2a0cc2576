"""Which base model each EE variant made with a key is of, recorded in the key file itself.

An encrypted variant is served under ``ee:<variant id>``, an id that says nothing about the key or
the base model. To ask it, a client needs the base model's tokenizer and config; without being told
which one, it used to send plaintext ids to the variant and print gibberish. ``swarmlm model encrypt
SPEC --key KEYFILE`` therefore appends ``variant <variant id> <SPEC>`` to KEYFILE (after the header
and the secret), and a client holding the key maps a served variant back to its base model with
``recorded_variants``. The file keeps mode 0600 and is replaced atomically.
"""

from __future__ import annotations

import os
from pathlib import Path

from swarmlm.crypto.ee import VARIANT_LINE, EEKey, EEKeyError
from swarmlm.crypto.identity import write_private_file


def recorded_variants(key_path: str | Path) -> dict[str, str]:
    """variant id -> base model spec, as recorded in the key file (empty for a plain key file)."""
    EEKey.load(key_path)  # the same checks as for the key itself (mode 0600, format)
    out: dict[str, str] = {}
    for line in Path(key_path).read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith(VARIANT_LINE):
            parts = line[len(VARIANT_LINE):].strip().split(" ", 1)
            if len(parts) == 2 and parts[0] and parts[1].strip():
                out[parts[0]] = parts[1].strip()
    return out


def record_variant(key_path: str | Path, variant: str, base_model: str) -> None:
    """Record that ``variant`` (an id such as ``ee1-...``) is of ``base_model`` in the key file."""
    if not variant or " " in variant or "\n" in base_model or not base_model.strip():
        raise EEKeyError(f"cannot record variant {variant!r} of base model {base_model!r}")
    path = Path(key_path)
    known = recorded_variants(path)
    if known.get(variant) == base_model:
        return
    known[variant] = base_model
    head = path.read_text(encoding="utf-8").splitlines()[:2]
    text = "\n".join(head + [f"{VARIANT_LINE}{v} {b}" for v, b in sorted(known.items())]) + "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    write_private_file(tmp, text.encode())
    os.replace(tmp, path)
