"""The py-libp2p objects our transport replaces, patches or relies on, each with a hash of its 0.8.1 source.

Next to every replacement or patch in ``swarmlm.net.transport``, ``replaces(qualified name, hash)``
records the upstream function, method, class or value it stands in for or depends on (usable as a
decorator: it returns what it decorates unchanged); ``UPSTREAM`` collects them. ``source_hash`` is
the first 16 hex digits of the SHA-256 of ``inspect.getsource`` (of ``repr`` for plain values).
``tests/test_net_libp2p_patches.py`` checks that the installed py-libp2p is ``LIBP2P_VERSION`` and
that every recorded object still exists with the recorded hash, so an upgrade that changes what we
patch fails loudly and names what to review. Imports nothing from libp2p itself.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from typing import Any, Callable, TypeVar

LIBP2P_VERSION = "0.8.1"
UPSTREAM: dict[str, str] = {}  # upstream qualified name -> source_hash in py-libp2p LIBP2P_VERSION

T = TypeVar("T")


def _unchanged(obj: T) -> T:
    return obj


def replaces(qualname: str, sha: str) -> Callable[[T], T]:
    """Record that the code next to this call replaces or depends on upstream ``qualname``."""
    if UPSTREAM.setdefault(qualname, sha) != sha:
        raise ValueError(f"{qualname} recorded twice with different hashes")
    return _unchanged


def resolve(qualname: str) -> Any:
    """The object named ``qualname``: its longest importable module prefix, then attributes.

    Raises ImportError when no prefix imports and AttributeError when the object is gone."""
    parts = qualname.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(f"no importable module in {qualname!r}")


def source_hash(obj: Any) -> str:
    """First 16 hex digits of the SHA-256 of ``obj``'s source (of its ``repr`` for plain values)."""
    if isinstance(obj, property):
        obj = obj.fget
    try:
        text = inspect.getsource(obj)
    except TypeError:  # not a module, class, method or function: a plain value
        text = repr(obj)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
