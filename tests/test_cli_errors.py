"""The CLI's one boundary and its logging: every failure is an exit status and one line naming what to
change (exception groups unwrapped, HTTP errors explained, bugs flagged with --debug for the traceback),
and no third-party log line reaches stderr unless asked for with --log-level debug."""

from __future__ import annotations

import io
import logging

import httpx
import pytest
import trio

from swarmlm.errors import ConfigError, SwarmError, UsageError, root_cause
from swarmlm.node import logs
from swarmlm.node.front import cli
from swarmlm.node.front.cli_errors import describe


def group(*excs: BaseException) -> BaseExceptionGroup:
    return BaseExceptionGroup("Exceptions from Trio nursery", [BaseExceptionGroup("inner", list(excs))])


def test_groups_are_unwrapped_to_the_actionable_failure():
    err = SwarmError("no live server covers layers 0-5 of builtin:tiny")
    assert root_cause(group(trio.Cancelled._create(), ValueError("x"), err)) is err
    assert describe(group(err)) == (1, "no live server covers layers 0-5 of builtin:tiny")
    assert describe(group(UsageError("ask: give --bootstrap"), err)) == (2, "ask: give --bootstrap")
    assert describe(KeyboardInterrupt()) == (130, "interrupted")
    assert describe(ConfigError("layers: need 0 <= START < END, got '5:2'\nmore")) == \
        (1, "layers: need 0 <= START < END, got '5:2'")


def test_http_and_os_errors_say_what_to_check():
    req = httpx.Request("GET", "http://127.0.0.1:1/v1/models")
    status, line = describe(httpx.ConnectError("[Errno 111] Connection refused", request=req))
    assert status == 1 and line.startswith("cannot reach http://127.0.0.1:1/v1/models: connection refused")
    assert "HOST:PORT" in describe(httpx.UnsupportedProtocol("missing http://", request=req))[1]
    assert describe(FileNotFoundError(2, "No such file or directory", "/x/key"))[1] == \
        "No such file or directory: /x/key"


def test_a_bug_is_one_line_that_asks_for_debug():
    status, line = describe(group(TypeError("sequence item 0: expected str instance, dict found")))
    assert status == 1 and "\n" not in line
    assert line.startswith("internal error: TypeError: sequence item 0") and "--debug" in line


def test_main_prints_one_line_and_the_traceback_only_with_debug(monkeypatch, capsys):
    def boom(ns):
        raise group(KeyError("k"))

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["id"].set_defaults(func=boom)
    assert cli.main(["id"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("swarmlm: error: internal error: KeyError")
    assert cli.main(["id", "--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().splitlines()[-1].startswith("swarmlm: error: internal error")


def test_every_command_takes_debug_and_log_level():
    parser = cli.build_parser()
    for leaf in cli._leaf_parsers(parser):
        opts = {o for a in leaf._actions for o in a.option_strings}
        assert {"--debug", "--log-level"} <= opts, leaf.prog


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.lastResort)
    yield
    root.handlers[:], root.level, logging.lastResort = saved[0], saved[1], saved[2]
    for name in logs.THIRD_PARTY_NAMES:
        logging.getLogger(name).setLevel(logging.NOTSET)


def test_third_party_lines_stay_out_unless_debug(restore_logging):
    import libp2p  # noqa: F401  # its import sets its own logger up: level WARNING, no handler, no propagation

    out = io.StringIO()
    logs.setup("info", stream=out)
    logging.getLogger("libp2p.transport.tcp.tcp").error("Failed to open TCP stream: 0.0.0.0:1 failed")
    logging.getLogger("libp2p.kad_dht.kad_dht").warning("Failed to read DHT message from stream: ")
    logging.getLogger("somelib").warning("chatter")
    logging.getLogger("swarmlm.client").info("ours")
    assert out.getvalue().count("\n") == 1 and "ours" in out.getvalue()

    out = io.StringIO()
    logs.setup("debug", stream=out)
    logging.getLogger("libp2p.transport.tcp.tcp").debug("dialing")
    assert "dialing" in out.getvalue()


def test_tracebacks_only_at_debug(restore_logging):
    out = io.StringIO()
    logs.setup("info", stream=out)
    try:
        raise RuntimeError("broken pipe")
    except RuntimeError:
        logging.getLogger("swarmlm.x").exception("generation failed")
    text = out.getvalue()
    assert "Traceback" not in text and "generation failed: RuntimeError: broken pipe" in text
