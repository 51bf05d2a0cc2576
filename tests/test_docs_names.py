"""Docs and CLI cannot disagree: every `swarmlm` command and flag the docs show exists in the real argparse
tree, every `make` target exists, every SWARMLM_* variable named is a config key or a known variable, and
docs/CONFIG.md (which `--config` help points to) lists exactly the config keys with their defaults."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re

import pytest

from swarmlm.node import config
from swarmlm.node.front.cli import build_parser
from swarmlm.testnet import compose

from docblocks import DOCS, ROOT, code_spans, swarmlm_calls

OTHER_VARIABLES = {"SWARMLM_DEBUG", *compose.variables()}  # not config keys, but real


def _subparsers(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return {k: v for a in p._actions if isinstance(a, argparse._SubParsersAction) for k, v in a.choices.items()}


def check_call(parser: argparse.ArgumentParser, tokens: list[str]) -> str | None:
    """None if ``swarmlm <tokens>`` names a real command and real flags; else what is wrong."""
    p, path = parser, ["swarmlm"]
    rest = list(tokens)
    while _subparsers(p) and rest and not rest[0].startswith("-"):
        subs = _subparsers(p)
        if rest[0] not in subs:
            return f"no command `{' '.join(path + [rest[0]])}` (there are: {', '.join(sorted(subs))})"
        path.append(rest.pop(0))
        p = subs[path[-1]]
        if path[-1] == "bench":  # the benchmark's own flags follow its name
            return None
    known = {o for a in p._actions for o in a.option_strings}
    for t in rest:
        flag = t.split("=", 1)[0]
        if flag.startswith("--") and flag not in known and flag != "--":
            return f"`{' '.join(path)}` has no flag {flag}"
    return None


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_command_and_flag_named_in_the_docs_exists(doc):
    parser = build_parser()
    calls = swarmlm_calls(doc)
    wrong = [f"{doc.name}:{n}: {problem}" for n, tokens in calls if (problem := check_call(parser, tokens))]
    assert not wrong, "\n".join(wrong)


def test_the_docs_name_the_commands_users_need():
    named = {" ".join(t[:2]) for d in DOCS for _, t in swarmlm_calls(d)}
    for cmd in ("node run", "node id", "testnet up", "testnet addr", "testnet down", "key gen", "model encrypt"):
        assert any(n.startswith(cmd) for n in named), cmd
    assert check_call(build_parser(), ["node", "frob"]) and check_call(build_parser(), ["ask", "--nope"])


def test_make_targets_and_variables_named_in_the_docs_exist():
    targets = set(re.findall(r"^([a-z-]+):", (ROOT / "Makefile").read_text(), re.M))
    fields = {f.name.upper() for f in dataclasses.fields(config.NodeConfig)}
    for doc in DOCS:
        for n, text in code_spans(doc):
            for target in re.findall(r"(?<![\w-])make ([a-z-]+)", text):
                assert target in targets, f"{doc.name}:{n}: no make target {target}"
        for var in set(re.findall(r"SWARMLM_[A-Z0-9_]*[A-Z0-9]", doc.read_text())):
            ok = var in OTHER_VARIABLES or var.removeprefix("SWARMLM_") in fields
            assert ok, f"{doc.name}: {var} is neither a config key (docs/CONFIG.md) nor a known variable"


def _config_table() -> dict[str, object]:
    rows = re.findall(r"^\| `([a-z_]+)` \| `([^`]*)` \|", (ROOT / "docs" / "CONFIG.md").read_text(), re.M)
    return {k: json.loads(v) for k, v in rows}


def test_config_md_lists_every_key_with_its_default():
    table, defaults = _config_table(), dataclasses.asdict(config.NodeConfig())
    assert set(table) == set(defaults), set(table) ^ set(defaults)
    assert {k: v for k, v in table.items() if v != defaults[k]} == {}
    assert "docs/CONFIG.md" in build_parser().format_help() or "docs/CONFIG.md" in \
        _sub_help(["node", "run"])


def _sub_help(path: list[str]) -> str:
    p = build_parser()
    for name in path:
        p = _subparsers(p)[name]
    return p.format_help()


def test_config_md_example_is_a_valid_config(tmp_path):
    text = (ROOT / "docs" / "CONFIG.md").read_text()
    toml = re.search(r"```toml\n(.*?)```", text, re.S).group(1)
    (tmp_path / "node.toml").write_text(toml)
    cfg = config.load(tmp_path / "node.toml", env={})
    assert cfg.model == "builtin:smollm2-135m" and cfg.max_layers == 10
