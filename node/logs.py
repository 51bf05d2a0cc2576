"""Operator-readable logs: one line per event, human text by default, JSON lines with --log-format json.

``setup(level, fmt)`` is the one logging configuration of every command (the CLI calls it before
any command runs; ``node run`` again with its config). Our loggers (``swarmlm.*``) log at ``level``.
Every other logger -- py-libp2p above all, which logs failed dials and DHT reads of peers that left
at WARNING and ERROR -- is third-party: its lines are dropped below ``third_party`` (default: shown
only with ``--log-level debug``; a node also shows their errors). Python warnings go through the
same filter. Tracebacks are printed only at debug level; otherwise a line ends with the exception's
one-line summary.
"""

from __future__ import annotations

import json
import logging
import sys
import time

OURS = "swarmlm"
LEVELS = ("debug", "info", "warning", "error")
THIRD_PARTY_NAMES = ("libp2p", "multiaddr", "async_service", "hypercorn", "hypercorn.error", "hypercorn.access",
                     "trio_websocket", "httpx", "httpcore", "asyncio", "urllib3", "filelock")
QUIET = logging.CRITICAL + 10  # above every level: nothing


def is_ours(record: logging.LogRecord) -> bool:
    return record.name == OURS or record.name.startswith(OURS + ".")


class ThirdPartyFilter(logging.Filter):
    """Lets our records through; another logger's only at ``level`` or above."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return is_ours(record) or record.levelno >= self.level


def _exc_summary(record: logging.LogRecord) -> str:
    exc = record.exc_info[1] if record.exc_info else None
    return "" if exc is None else f": {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name,
               "msg": record.getMessage()}
        for key in ("peer", "event"):
            if hasattr(record, key):
                out[key] = getattr(record, key)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


class TextFormatter(logging.Formatter):
    def __init__(self, tracebacks: bool = False) -> None:
        super().__init__()
        self.tracebacks = tracebacks

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        name = record.name.removeprefix("swarmlm.")
        line = f"{ts} {record.levelname:<7} {name:<10} {record.getMessage()}"
        if record.exc_info and self.tracebacks:
            line += "\n" + self.formatException(record.exc_info)
        elif record.exc_info:
            line += _exc_summary(record) + " (--log-level debug shows the traceback)"
        return line


def setup(level: str = "info", fmt: str = "text", stream=None, third_party: str | None = None) -> None:
    """Configure logging for this process (replaces any earlier configuration).

    ``third_party``: the lowest level at which other libraries' lines show ("debug" ... "error", or
    "none"); default: "debug" at debug level, else none."""
    level = level.lower()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(tracebacks=level == "debug"))
    third = third_party or ("debug" if level == "debug" else "none")
    third_level = QUIET if third == "none" else logging.getLevelName(third.upper())
    handler.addFilter(ThirdPartyFilter(third_level))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(min(logging.getLevelName(level.upper()), third_level))
    logging.getLogger(OURS).setLevel(level.upper())
    # py-libp2p configures its own logger when imported (level WARNING, no handler, propagate off), so
    # its records end at logging's "last resort" handler, which printed them raw to stderr: ours
    # takes that place, filter included
    logging.lastResort = handler
    if third != "none":
        if third == "debug":
            import libp2p  # noqa: F401  # lazy: only to take its logger back (it resets it on import)
        for name in THIRD_PARTY_NAMES:
            lib = logging.getLogger(name)
            lib.setLevel(logging.NOTSET)
            lib.propagate = True
    logging.captureWarnings(True)  # warnings.warn(...) of libraries: through the filter too
