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
