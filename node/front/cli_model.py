"""`swarmlm model ...`: list the built-in models, convert a GGUF, show sizes per shard.

``register(subparsers)`` adds the ``model`` group; ``add_model_commands(model_sub)`` adds its
``list``/``convert``/``info`` subcommands to the group's subparsers. To extend the group (e.g. with
``model encrypt``), write an ``add_...(msub)`` function and call it from ``register`` next to
``add_model_commands``; the latest group's subparsers are also kept in ``MODEL_SUBPARSERS``.
Handlers import torch and the models layer lazily.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from swarmlm.node.front.cli_key import add_model_encrypt

MODEL_SUBPARSERS: argparse._SubParsersAction | None = None


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def cmd_list(ns: argparse.Namespace) -> int:
    from swarmlm.models.registry import list_models  # lazy: keeps `swarmlm --help` free of torch and libp2p

    rows = list_models()
    if ns.json:
        print(json.dumps([vars(r) for r in rows]))
        return 0
    for r in rows:
        state = f"cached at {r.path}" if r.cached else "not cached yet (built on first use)"
        print(f"{r.spec:<24} {r.description}\n{'':<24} {state}")
    return 0


def cmd_convert(ns: argparse.Namespace) -> int:
    from swarmlm.models.registry import SMOLLM2, materialize, resolve  # lazy: keeps `swarmlm --help` free of torch and libp2p

    if ns.gguf:
        from swarmlm.models.convert import convert_gguf  # lazy: keeps `swarmlm --help` free of torch and libp2p

        if not ns.out:
            print("swarmlm: error: --out DIR is needed with --gguf", file=sys.stderr)
            return 2
        path = materialize(Path(ns.out).expanduser().resolve(), lambda tmp: convert_gguf(ns.gguf, tmp))
    else:
        path = resolve(ns.spec or SMOLLM2)
    print(path)
    return 0


def cmd_info(ns: argparse.Namespace) -> int:
    from swarmlm.models.registry import model_info  # lazy: keeps `swarmlm --help` free of torch and libp2p

    info = model_info(ns.spec, dtype=ns.dtype, shards=ns.shards)
    if ns.json:
        print(json.dumps(asdict(info)))
        return 0
    print(f"{info.spec}  ({info.model_type}, {info.path})")
    print(f"  layers {info.num_layers}, hidden {info.hidden_size}, vocab {info.vocab_size}, "
          f"tied embeddings {info.tie_word_embeddings}")
    print(f"  params {info.num_params:,}  = {_fmt_bytes(info.total_bytes)} in {info.dtype}")
    print(f"  per layer {_fmt_bytes(info.layer_bytes)}, embedding {_fmt_bytes(info.embedding_bytes)}, "
          f"head {_fmt_bytes(info.head_bytes)}"
          f"{' (tied: the last shard also holds the embedding)' if info.tie_word_embeddings else ''}, KV cache {_fmt_bytes(info.kv_bytes_per_token)}/token")
    for s in info.shards:
        print(f"  shard [{s['start']:>3}, {s['end']:>3}): {s['params']:>12,} params  {_fmt_bytes(s['bytes']):>10}"
              f"  KV {_fmt_bytes(s['kv_bytes_per_token'])}/token")
    return 0


def add_model_commands(msub: argparse._SubParsersAction) -> None:
    p = msub.add_parser("list", help="built-in models and whether they are cached")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)

    p = msub.add_parser("convert", help="convert a GGUF into the local cache (default: builtin:smollm2-135m)")
    p.add_argument("spec", nargs="?", default=None, help="builtin spec to build (default builtin:smollm2-135m)")
    p.add_argument("--gguf", help="convert this GGUF file instead")
    p.add_argument("--out", help="output checkpoint directory (with --gguf)")
    p.set_defaults(func=cmd_convert)

    p = msub.add_parser("info", help="layers, params and bytes per shard of a model")
    p.add_argument("spec", help="builtin:tiny, builtin:smollm2-135m or a checkpoint directory")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--shards", type=int, default=1, help="split evenly into this many shards")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)


def register(subparsers: argparse._SubParsersAction) -> None:
    model = subparsers.add_parser("model", help="model checkpoints: list, convert, info")
    msub = model.add_subparsers(dest="model_command", metavar="SUBCOMMAND")
    model.set_defaults(func=lambda ns: (model.print_help(), 2)[1])
    global MODEL_SUBPARSERS
    MODEL_SUBPARSERS = msub
    add_model_commands(msub)
    add_model_encrypt(msub)
