"""Small helpers the client commands (`ask`, `status`, `peers`) share: where to reach the swarm.

``http_url`` accepts what ``node run --http`` takes and the ready file's ``http`` field holds
(``HOST:PORT``) as well as a URL; ``bootstrap_addrs`` falls back to ``$SWARMLM_BOOTSTRAP`` and checks
that each address can be dialed (``/p2p/<peer id>`` included) before anything starts.
"""

from __future__ import annotations

import os

from swarmlm.errors import UsageError

ENV_BOOTSTRAP = "SWARMLM_BOOTSTRAP"


def http_url(text: str) -> str:
    """``HOST:PORT`` or ``http(s)://HOST:PORT[/]`` -> ``http(s)://HOST:PORT`` (no trailing slash)."""
    text = text.strip().rstrip("/")
    if text.startswith(("http://", "https://")):
        return text
    if "://" in text:
        raise UsageError(f"--http {text!r}: only http:// and https:// URLs (or HOST:PORT)")
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--http {text!r}: give HOST:PORT (as in `node run --http`) or http://HOST:PORT")
    return f"http://{text}"


def bootstrap_addrs(given: list[str] | None, command: str, http: str | None = None) -> list[str]:
    """The bootstrap addresses of a client command: ``given``, else ``$SWARMLM_BOOTSTRAP``
    (comma-separated); a UsageError that says what to give when there are none (and no ``http``)."""
    addrs = list(given or [])
    if not addrs and not http:
        addrs = [a.strip() for a in os.environ.get(ENV_BOOTSTRAP, "").split(",") if a.strip()]
    if addrs and http:
        raise UsageError(f"{command}: give --bootstrap MADDR or --http URL, not both")
    if not addrs and not http:
        raise UsageError(f"{command}: give --bootstrap MADDR (an address a node printed, with /p2p/) or "
                         f"--http HOST:PORT (a node's HTTP API), or set {ENV_BOOTSTRAP}")
    for a in addrs:
        if not a.startswith("/") or "/p2p/" not in a:
            raise UsageError(f"{command}: bootstrap address {a!r} needs the form /ip4/HOST/tcp/PORT/p2p/PEER_ID "
                             "(copy the whole address a node prints)")
    return addrs
