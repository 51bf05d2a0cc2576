"""Shared helpers for `swarmlm bench NAME`: argument parsing, logging to stderr, one JSON object out.

Convention for every bench: with ``--json`` exactly one JSON object goes to stdout; logs and
progress always go to stderr; without ``--json`` a readable summary goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from typing import Any, Callable, Iterable


def parser(name: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"swarmlm bench {name}", description=description)
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    return p


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def emit(result: dict[str, Any], as_json: bool, summary: Callable[[dict[str, Any]], str] | None = None) -> None:
    """Print the result: one JSON object (``--json``) or a readable summary."""
    if as_json:
        sys.stdout.write(json.dumps(result, sort_keys=False) + "\n")
    else:
        sys.stdout.write((summary(result) if summary else json.dumps(result, indent=2)) + "\n")
    sys.stdout.flush()


def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def percentile(values: Iterable[float], q: float) -> float:
    data = sorted(values)
    if not data:
        return float("nan")
    k = (len(data) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(data) - 1)
    return float(data[lo] + (data[hi] - data[lo]) * (k - lo))


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class Timer:
    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.ms = (time.perf_counter() - self.start) * 1000.0
