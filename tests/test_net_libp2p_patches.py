"""Our py-libp2p replacements and patches (``swarmlm.net.transport``) still match the py-libp2p they
were written against: the installed version, and every upstream object they replace, patch or call
privately, unchanged (``swarmlm.net.transport.upstream.UPSTREAM``). A failure here after a py-libp2p
upgrade names what to review; nothing else would notice until a connection misbehaves."""

from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
import re
from pathlib import Path

import pytest

import swarmlm.net.transport as transport
from swarmlm.net.transport.upstream import LIBP2P_VERSION, UPSTREAM, resolve, source_hash

MODULES = sorted(m.name for m in pkgutil.iter_modules(transport.__path__))
for _name in MODULES:  # each records what it replaces when imported
    importlib.import_module(f"swarmlm.net.transport.{_name}")

REVIEW = ("review the code next to replaces({name!r}, ...) in swarmlm.net.transport against the new "
          "upstream source, then record the new hash (swarmlm.net.transport.upstream.source_hash)")


def test_the_installed_py_libp2p_is_the_one_we_patch() -> None:
    installed = importlib.metadata.version("libp2p")
    assert installed == LIBP2P_VERSION, (
        f"py-libp2p {installed} is installed, but swarmlm.net.transport replaces and patches parts of "
        f"py-libp2p {LIBP2P_VERSION}: run tests/test_net_libp2p_patches.py to see which recorded upstream "
        "objects changed, review each, then update LIBP2P_VERSION and the hashes")


@pytest.mark.parametrize("name", sorted(UPSTREAM))
def test_patched_upstream_object_is_unchanged(name: str) -> None:
    try:
        obj = resolve(name)
    except (ImportError, AttributeError) as exc:
        pytest.fail(f"py-libp2p no longer has {name} ({type(exc).__name__}: {exc}), which "
                    f"swarmlm.net.transport replaces or relies on: " + REVIEW.format(name=name))
    got = source_hash(obj)
    assert got == UPSTREAM[name], (
        f"py-libp2p's {name} changed since {LIBP2P_VERSION} (source hash {got}, recorded "
        f"{UPSTREAM[name]}): " + REVIEW.format(name=name))


def test_every_recorded_replacement_is_loaded() -> None:
    """Each ``replaces("...", ...)`` written in the package is in the registry the test above checks."""
    written = set()
    for path in Path(transport.__file__).parent.glob("*.py"):
        written |= set(re.findall(r'replaces\("([^"]+)", "[0-9a-f]{16}"\)', path.read_text()))
    assert written and written == set(UPSTREAM)
    assert {"libp2p.network.swarm.Swarm._trim_connections", "libp2p.host.basic_host.BasicHost.get_addrs",
            "libp2p.stream_muxer.yamux.yamux.Yamux.handle_incoming"} <= written
