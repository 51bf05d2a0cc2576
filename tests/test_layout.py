"""The package's structure, checked with the standard library's ``ast`` (docs/DEVELOPING.md):

- no import cycle between files (function-local imports count too);
- no file over 450 lines;
- imports point one way: the pure layers (models, consensus, crypto) never import net or node, net
  never imports node or models, and node/client never imports node/server or node/front;
- a function-local import is there only to defer a heavy or optional import, and says so with a
  ``# lazy:`` comment on its line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("node", "net", "models", "consensus", "crypto", "testnet", "bench")
MAX_LINES = 450

# (importer prefix, forbidden prefix): imports point one way
FORBIDDEN = [
    ("swarmlm.models", "swarmlm.net"), ("swarmlm.models", "swarmlm.node"),
    ("swarmlm.consensus", "swarmlm.net"), ("swarmlm.consensus", "swarmlm.node"),
    ("swarmlm.crypto", "swarmlm.net"), ("swarmlm.crypto", "swarmlm.node"),
    ("swarmlm.net", "swarmlm.node"), ("swarmlm.net", "swarmlm.models"),
    ("swarmlm.node.client", "swarmlm.node.server"), ("swarmlm.node.client", "swarmlm.node.front"),
    ("swarmlm.node.server", "swarmlm.node.client"), ("swarmlm.node.server", "swarmlm.node.front"),
]


def _modules() -> dict[str, Path]:
    found = {"swarmlm": ROOT / "__init__.py"}
    for path in ROOT.glob("*.py"):  # errors.py, version.py
        if path.name != "__init__.py":
            found["swarmlm." + path.stem] = path
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            rel = path.relative_to(ROOT).with_suffix("")
            name = "swarmlm." + ".".join(rel.parts)
            found[name.removesuffix(".__init__")] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[ast.AST, list[str]]]:
    """Every import statement of a module with the package modules it names."""
    is_pkg = path.name == "__init__.py"
    parts = name.split(".") if is_pkg else name.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        out.append((node, [n for n in names if n in MODULES and n != name]))
    return out


def _graph() -> dict[str, set[str]]:
    return {name: {m for _, ms in _imports(name, path) for m in ms} for name, path in MODULES.items()}


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    x = stack.pop()
                    on.discard(x)
                    comp.append(x)
                    if x == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_the_checker_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_no_file_over_the_line_guideline():
    long = {str(p.relative_to(ROOT)): n for p in [*MODULES.values(), *(ROOT / "tests").glob("*.py")]
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


@pytest.mark.parametrize("importer, forbidden", FORBIDDEN)
def test_imports_point_one_way(importer, forbidden):
    bad = sorted(f"{name} imports {m}" for name, deps in _graph().items()
                 if name == importer or name.startswith(importer + ".")
                 for m in deps if m == forbidden or m.startswith(forbidden + "."))
    assert bad == []


def test_function_local_imports_say_why():
    missing = []
    for name, path in MODULES.items():
        lines = path.read_text().splitlines()
        for func in ast.walk(ast.parse("\n".join(lines), str(path))):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(func):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    text = " ".join(lines[node.lineno - 1:node.end_lineno])
                    if "# lazy:" not in text:
                        missing.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert missing == []
