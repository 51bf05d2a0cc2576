"""Reading the docs as tests: the command blocks marked to run, and every `swarmlm` command line named.

A fenced block runs when the line before its opening fence is ``<!-- doctest -->``, or
``<!-- doctest: expect TEXT | TEXT2 -->`` (the combined output must contain each TEXT). ``sh`` /
unlabelled blocks run with bash (``set -euo pipefail``: every command must exit 0), ``python``
blocks with the test's Python. Before running, the placeholders the docs use for a real swarm are
replaced by the live testnet's values (``substitute``): ``127.0.0.1:8080`` by node 0's HTTP address,
a ``/ip4/.../p2p/12D3KooW...`` address by node 0's, ``builtin:smollm2-135m`` by ``builtin:tiny``.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARK = re.compile(r"^<!--\s*doctest(?::\s*(.*?))?\s*-->\s*$")
FENCE = re.compile(r"^(\s*)```(\w*)\s*$")
ADDR_PLACEHOLDER = re.compile(r"/ip4/[0-9.]+/tcp/\d+/p2p/12D3KooW(?:\.\.\.|…)")


@dataclass
class Block:
    doc: str
    line: int
    lang: str
    code: str
    expect: list[str]


def marked_blocks(path: Path) -> list[Block]:
    lines = path.read_text().splitlines()
    out: list[Block] = []
    for i, line in enumerate(lines):
        m = MARK.match(line)
        if not m:
            continue
        fence = FENCE.match(lines[i + 1]) if i + 1 < len(lines) else None
        if fence is None:
            raise AssertionError(f"{path.name}:{i + 1}: a doctest mark must stand right before a ``` fence")
        body = []
        for j in range(i + 2, len(lines)):
            if lines[j].strip() == "```":
                break
            body.append(lines[j])
        expect = [e.strip().removeprefix("expect").strip() for e in (m.group(1) or "").split("|") if e.strip()]
        out.append(Block(path.name, i + 1, fence.group(2) or "sh", "\n".join(body) + "\n", expect))
    return out


def substitute(code: str, http: str, addr: str, model: str = "builtin:tiny") -> str:
    code = ADDR_PLACEHOLDER.sub(addr, code)
    return code.replace("127.0.0.1:8080", http).replace("builtin:smollm2-135m", model)


def code_spans(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of every code line: fenced or indented blocks, and inline `code`.
    Python blocks are left out (``from swarmlm import Client`` is no command line)."""
    out: list[tuple[int, str]] = []
    fence: str | None = None  # the open fence's language
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if m := FENCE.match(line):
            fence = None if fence is not None else m.group(2) or "sh"
            continue
        if fence == "python":
            continue
        if fence is not None or line.startswith("    "):
            out.append((n, line))
        else:
            out += [(n, m) for m in re.findall(r"`([^`]+)`", line)]
    return out


SWARMLM_CALL = re.compile(r"(?<![\w./:-])swarmlm ((?:[^|;&#)`'\"]|'[^']*'|\"[^\"]*\")*)")


def swarmlm_calls(path: Path) -> list[tuple[int, list[str]]]:
    """Every `swarmlm ...` command line the doc shows, as tokens (up to a pipe, `;`, `&&` or a comment)."""
    calls = []
    for n, text in code_spans(path):
        for m in SWARMLM_CALL.finditer(text):
            try:
                tokens = shlex.split(m.group(1).replace("\\", " "))
            except ValueError:
                tokens = m.group(1).split()
            if tokens:
                calls.append((n, tokens))
    return calls
