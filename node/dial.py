"""Reaching a peer the swarm state lists: the one ``ensure_connected`` every part of the node uses.

The pipeline client, the verification checks and the consensus coordinator all call peers they know
only from the swarm state (its signed entry lists the peer's addresses). ``ensure_connected`` dials
those addresses in turn when no connection is open; a peer that cannot be reached surfaces as the
failure of the call that follows, where the caller knows what to do about it.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("swarmlm.dial")


async def ensure_connected(host: Any, state: Any, peer: str) -> bool:
    """Connect ``host`` to ``peer`` through the addresses its swarm-state entry lists, unless
    connected already (or ``peer`` is ourselves). True when connected afterwards."""
    if peer == host.peer_id or host.is_connected(peer):
        return True
    entry = state.peer(peer)
    for addr in (entry.addrs if entry else ()):
        try:
            await host.connect(addr if "/p2p/" in addr else f"{addr}/p2p/{peer}")
            return True
        except Exception as exc:  # any transport error: try the next address
            log.debug("dial %s via %s failed: %s", peer[-8:], addr, exc)
    return False
