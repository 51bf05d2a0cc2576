"""The CLI's one boundary between exceptions and what a user reads: an exit status and one line.

``describe(exc)`` turns whatever a command raised into ``(status, line)``: usage errors exit 2, every
other failure 1 (130 for Ctrl-C). Exception groups from trio nurseries are unwrapped to the failure
inside them (an actionable ``SwarmError`` first, never a ``Cancelled``); an HTTP client error names
the URL and what to check; an error we did not anticipate still gets one line, saying it is a bug
and that ``--debug`` prints the traceback.
"""

from __future__ import annotations

import httpx

from swarmlm.errors import SwarmError, UsageError, root_cause


def one_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else ""


def _http(exc: httpx.HTTPError) -> str:
    try:
        url = str(exc.request.url)
    except RuntimeError:  # no request attached
        url = "the node"
    if isinstance(exc, httpx.ConnectError):
        reason = one_line(str(exc)) or "connection failed"
        if "refused" in reason.lower() or "errno 111" in reason.lower():
            reason = "connection refused"
        return f"cannot reach {url}: {reason} (is a node serving --http there? check HOST:PORT)"
    if isinstance(exc, httpx.TimeoutException):
        return f"{url} did not answer in time (the node may be overloaded; try again or raise the timeout)"
    if isinstance(exc, (httpx.UnsupportedProtocol, httpx.InvalidURL)):
        return f"bad URL {url}: {one_line(str(exc))} (give HOST:PORT or http://HOST:PORT)"
    return f"HTTP request to {url} failed: {one_line(str(exc)) or type(exc).__name__}"


def describe(exc: BaseException) -> tuple[int, str]:
    """(exit status, the one line to print) for an exception a command raised."""
    cause = root_cause(exc)
    if isinstance(cause, KeyboardInterrupt):
        return 130, "interrupted"
    if isinstance(cause, UsageError):
        return 2, one_line(str(cause))
    if isinstance(cause, SwarmError):
        return 1, one_line(str(cause)) or type(cause).__name__
    if isinstance(cause, httpx.HTTPError):
        return 1, _http(cause)
    if isinstance(cause, OSError) and cause.strerror:
        where = f": {cause.filename}" if cause.filename else ""
        return 1, f"{cause.strerror}{where}"
    detail = one_line(str(cause))
    return 1, (f"internal error: {type(cause).__name__}{': ' + detail if detail else ''} "
               "(a bug in swarmlm: run the command again with --debug for the traceback, and report it)")
