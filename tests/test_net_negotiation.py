"""A protocol handler removed while a peer's stream negotiates it (DCUtR stops at shutdown while a
hole-punch stream arrives) fails that one stream's negotiation, as a missing protocol does; it used
to raise KeyError out of py-libp2p's stream handler and end the host (``swarmlm status`` exited on
"internal error: KeyError: '/libp2p/dcutr'")."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from libp2p.protocol_muxer.exceptions import MultiselectError
from libp2p.protocol_muxer.multiselect import Multiselect
from libp2p.protocol_muxer.multiselect_client import MULTISELECT_PROTOCOL_ID

from swarmlm.net.transport.patches import tolerate_handler_removal

PROTO = "/libp2p/dcutr"


class _Peer:
    """A peer's side of multistream-select: the handshake, then one protocol; our answer to it is
    written just as the service owning that protocol removes its handler."""

    def __init__(self, multiselect: Multiselect) -> None:
        self.multiselect = multiselect
        self.said = [MULTISELECT_PROTOCOL_ID, PROTO]
        self.heard: list[str] = []

    async def read(self) -> str:
        return self.said.pop(0)

    async def write(self, msg: str) -> None:
        self.heard.append(msg)
        if msg == PROTO:
            self.multiselect.remove_handler(PROTO)


async def _handler(stream) -> None:
    raise AssertionError("never reached")


async def test_stock_negotiation_raises_keyerror_when_the_handler_goes_away():
    ms = Multiselect({PROTO: _handler})
    with pytest.raises(KeyError):
        await ms.negotiate(_Peer(ms), 5)


async def test_a_handler_removed_during_negotiation_fails_only_that_stream():
    ms = Multiselect({PROTO: _handler, "/other/1": _handler})
    tolerate_handler_removal(SimpleNamespace(multiselect=ms))
    peer = _Peer(ms)
    with pytest.raises(MultiselectError, match="removed during negotiation"):
        await ms.negotiate(peer, 5)
    assert peer.heard == [MULTISELECT_PROTOCOL_ID, PROTO]
    ok = _Peer(ms)
    ok.said = [MULTISELECT_PROTOCOL_ID, "/other/1"]
    assert await ms.negotiate(ok, 5) == ("/other/1", _handler)  # the next stream negotiates as before
