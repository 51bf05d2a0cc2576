"""The docs run: every block of README.md, docs/OPERATIONS.md and docs/HTTP_API.md marked
``<!-- doctest -->`` is executed against one live local testnet of ``builtin:tiny`` nodes.

The testnet is the one README.md's own ``swarmlm testnet up`` block starts (in a temporary directory,
so ``swarmlm testnet addr`` finds it), and README.md's ``swarmlm testnet down`` block stops it last.
Each block must exit 0 and print what its mark expects. ``swarmlm`` and ``python`` in a block are
this checkout run by this test's interpreter (so an installed copy elsewhere is never what runs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from swarmlm.testnet.local import down

from docblocks import ROOT, Block, marked_blocks, substitute

RUN_DOCS = [ROOT / "README.md", ROOT / "docs" / "OPERATIONS.md", ROOT / "docs" / "HTTP_API.md"]
BLOCKS = [b for d in RUN_DOCS for b in marked_blocks(d)]
UP = [b for b in BLOCKS if "swarmlm testnet up" in b.code]
DOWN = [b for b in BLOCKS if "swarmlm testnet down" in b.code]
MIDDLE = [b for b in BLOCKS if b not in UP + DOWN]


def _shims(bin_dir: Path) -> None:
    bin_dir.mkdir()
    for name, args in (("swarmlm", "-m swarmlm.node.front.cli"), ("python", ""), ("python3", "")):
        (bin_dir / name).write_text(f'#!/bin/sh\nexec "{sys.executable}" {args} "$@"\n')
        (bin_dir / name).chmod(0o755)


def run_block(block: Block, cwd: Path, swarm: dict | None = None, timeout: float = 240) -> str:
    code = block.code if swarm is None else substitute(block.code, swarm["http"], swarm["addr"])
    if block.lang == "python":
        cmd = [sys.executable, "-c", code]
    else:
        cmd = ["bash", "-c", "set -euo pipefail\n" + code]
    env = dict(os.environ, PATH=f"{cwd / 'bin'}{os.pathsep}{os.environ['PATH']}", TOKEN="")
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    out = r.stdout + r.stderr
    where = f"{block.doc}:{block.line} ({block.lang})"
    assert r.returncode == 0, f"{where} exited {r.returncode}:\n{code}\n--- output:\n{out[-3000:]}"
    for text in block.expect:
        assert text in out, f"{where}: output lacks {text!r}:\n{out[-3000:]}"
    assert "Traceback" not in out, f"{where}: a traceback reached the user:\n{out[-3000:]}"
    return out


@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    """README.md's testnet, started by its own `testnet up` block."""
    cwd = tmp_path_factory.mktemp("docs")
    _shims(cwd / "bin")
    try:
        run_block(UP[0], cwd, timeout=400)
        ready = json.loads((cwd / ".testnet" / "node0" / "ready.json").read_text())
        yield {"cwd": cwd, "addr": ready["addrs"][0], "http": ready["http"]}
    finally:
        down(cwd / ".testnet")  # whatever the down block did


def test_the_run_docs_mark_blocks_to_run():
    assert len(UP) == 1 and len(DOWN) == 1, "README.md must hold one `testnet up` and one `testnet down` block"
    assert {b.doc for b in MIDDLE} == {d.name for d in RUN_DOCS}
    assert all(b.expect for b in BLOCKS), "every block says what its output must show"


@pytest.mark.parametrize("block", MIDDLE, ids=lambda b: f"{b.doc}:{b.line}")
def test_docs_block_runs(swarm, block):
    run_block(block, swarm["cwd"], swarm)


def test_docs_testnet_down_block_runs_last(swarm):
    run_block(DOWN[0], swarm["cwd"], swarm)
    assert not (swarm["cwd"] / ".testnet" / "testnet.json").exists()
