"""Operator-readable logs: one line per event, human text by default, JSON lines with --log-format json."""

from __future__ import annotations

import json
import logging
import sys
import time


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
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        name = record.name.removeprefix("swarmlm.")
        line = f"{ts} {record.levelname:<7} {name:<10} {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup(level: str = "info", fmt: str = "text", stream=None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # py-libp2p logs protocol chatter (failed DHT reads, dial retries) at INFO/WARNING: keep it out
    # of the operator's log unless debugging.
    lib_level = logging.DEBUG if level.lower() == "debug" else logging.ERROR
    for name in ("libp2p", "multiaddr", "async_service", "hypercorn", "hypercorn.error", "hypercorn.access"):
        logging.getLogger(name).setLevel(lib_level)
