"""`swarmlm key gen --out KEYFILE`: make an equivariant-encryption key; and `model encrypt`'s parser.

``register(subparsers)`` adds the ``key`` group (``key gen``, ``key info``). ``add_model_encrypt(msub)``
adds ``model encrypt SPEC --key KEYFILE --out DIR [--mode rotate|permute]`` to the ``model`` group's
subparsers (call it from ``swarmlm.node.front.cli_model.register``). Handlers import torch lazily.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def cmd_key_gen(ns: argparse.Namespace) -> int:
    from swarmlm.crypto.ee import EEKey  # lazy: keeps `swarmlm --help` free of torch and libp2p

    path = EEKey.generate().save(ns.out)
    print(f"wrote EE key {path} (mode 0600); keep it private: it decrypts every prompt sent with it",
          file=sys.stderr)
    return 0


def cmd_key_info(ns: argparse.Namespace) -> int:
    from swarmlm.crypto.ee import EEKey, variant_id  # lazy: keeps `swarmlm --help` free of torch and libp2p

    key = EEKey.load(ns.key)
    out: dict[str, str] = {"key": str(ns.key), "fingerprint": repr(key)}
    if ns.model:
        from swarmlm.crypto.ee_checkpoint import resolve_checkpoint  # lazy: keeps `swarmlm --help` free of torch and libp2p

        cfg = json.loads((resolve_checkpoint(ns.model) / "config.json").read_text())
        out["variant_id"] = variant_id(key, cfg, ns.mode)
    print(json.dumps(out, indent=2))
    return 0


def cmd_model_encrypt(ns: argparse.Namespace) -> int:
    from swarmlm.crypto.ee_checkpoint import encrypt_checkpoint  # lazy: keeps `swarmlm --help` free of torch and libp2p
    from swarmlm.crypto.ee_keyfile import record_variant  # lazy: imports torch

    res = encrypt_checkpoint(ns.spec, ns.key, ns.out, mode=ns.mode, include_tokenizer=not ns.no_tokenizer,
                             hide_special_ids=ns.hide_special_ids)
    base = ns.spec if ns.spec.startswith("builtin:") else str(Path(ns.spec).expanduser().resolve())
    record_variant(ns.key, res.variant_id, base)  # so `ask --ee-key KEYFILE` knows the base model
    print(json.dumps({"out": str(res.out_dir), "variant_id": res.variant_id, "mode": res.mode,
                      "tensors": res.tensors, "seconds": round(res.seconds, 2)}))
    return 0


def add_model_encrypt(msub: argparse._SubParsersAction) -> None:
    p = msub.add_parser("encrypt", help="write the equivariant-encryption variant of a checkpoint")
    p.add_argument("spec", help="builtin:tiny, builtin:smollm2-135m or a checkpoint directory")
    p.add_argument("--key", required=True, help="EE key file (from `swarmlm key gen`)")
    p.add_argument("--out", required=True, help="new output checkpoint directory")
    p.add_argument("--mode", default="rotate", choices=["rotate", "permute"],
                   help="residual transform: random rotation (default) or a plain permutation (weaker)")
    p.add_argument("--no-tokenizer", action="store_true", help="do not copy the tokenizer files")
    p.add_argument("--hide-special-ids", action="store_true",
                   help="leave BOS/EOS ids out of the config (clients then send encrypted stop ids)")
    p.set_defaults(func=cmd_model_encrypt)


def register(subparsers: argparse._SubParsersAction) -> None:
    key = subparsers.add_parser("key", help="equivariant-encryption keys: gen, info")
    ksub = key.add_subparsers(dest="key_command", metavar="SUBCOMMAND")
    key.set_defaults(func=lambda ns: (key.print_help(), 2)[1])
    p = ksub.add_parser("gen", help="make a new EE key file (mode 0600)")
    p.add_argument("--out", required=True, help="key file to create (refuses to overwrite)")
    p.set_defaults(func=cmd_key_gen)
    p = ksub.add_parser("info", help="a key's fingerprint and, with --model, the EE variant id it makes")
    p.add_argument("key", help="EE key file")
    p.add_argument("--model", help="base model spec or directory")
    p.add_argument("--mode", default="rotate", choices=["rotate", "permute"])
    p.set_defaults(func=cmd_key_info)
