"""The swarm notifee events a listener does not care about, as no-ops.

py-libp2p calls every notifee method on every registered notifee; a class that reacts to a few
events (``connected``, ``disconnected``) inherits the rest from ``QuietNotifee``.
"""

from __future__ import annotations

from typing import Any


class QuietNotifee:
    async def connected(self, network: Any, conn: Any) -> None:
        return None

    async def disconnected(self, network: Any, conn: Any) -> None:
        return None

    async def opened_stream(self, network: Any, stream: Any) -> None:
        return None

    async def closed_stream(self, network: Any, stream: Any) -> None:
        return None

    async def listen(self, network: Any, multiaddr: Any) -> None:
        return None

    async def listen_close(self, network: Any, multiaddr: Any) -> None:
        return None
