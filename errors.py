"""The one exception base every layer's user-facing errors derive from.

A ``SwarmError`` carries a message a user can act on; the CLI and the HTTP API print it as is
(no traceback). Each layer defines its own subclasses next to the code that raises them.
"""

from __future__ import annotations


class SwarmError(Exception):
    """An error with an actionable message."""


class ConfigError(SwarmError):
    """A bad config file, environment variable or flag; the message names the key."""


class UsageError(SwarmError):
    """A command line used wrongly (missing or conflicting arguments); the CLI exits with status 2."""


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside ``exc`` once exception groups (trio nurseries) are unwrapped; bare
    BaseExceptions such as trio's ``Cancelled`` are left out when anything else is there."""
    if not isinstance(exc, BaseExceptionGroup):
        return [exc]
    found = [leaf for e in exc.exceptions for leaf in leaves(e)]
    real = [e for e in found if isinstance(e, (Exception, KeyboardInterrupt))]
    return real or found


def root_cause(exc: BaseException) -> BaseException:
    """The one exception a user should hear about: a usage error, else an actionable ``SwarmError``,
    else Ctrl-C, else the first failure inside ``exc``."""
    found = leaves(exc)
    for kind in (UsageError, SwarmError, KeyboardInterrupt):
        for e in found:
            if isinstance(e, kind):
                return e
    return found[0]
