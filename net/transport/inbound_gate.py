"""The inbound gate: ``net.inbound.InboundAdmission`` applied to a py-libp2p 0.8.1 host's listener.

``install_inbound_gate(host, admission, trusted)`` wraps two steps of the host's inbound path:

* ``Swarm.upgrade_inbound_raw_conn`` (an accepted socket, before anything is read from it): the
  connection's IP prefix is admitted, made to wait for a handshake slot, or closed at once;
* the security multistream's ``secure_inbound`` (the Noise handshake): when it returns, the peer is
  authenticated, the handshake slot is freed, and a peer without standing over the established
  limits is closed before its Yamux session and identify.

A swarm notifee closes each connection's ticket when the connection ends. Refusals are logged
(warning) at most once per prefix per ``log_interval_s``; everything else of the refused
connection stays at debug level, as py-libp2p logs its own handshake failures.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import trio
from libp2p.transport.exceptions import SecurityUpgradeFailure

from swarmlm.net.inbound import InboundAdmission, Ticket, connection_prefix
from swarmlm.net.notifee import QuietNotifee
from swarmlm.net.transport.upstream import replaces

log = logging.getLogger("swarmlm.inbound")
_TICKET = "_swarmlm_inbound_ticket"


def _remote_ip(conn: Any) -> str | None:
    try:
        addr = conn.get_remote_address()
    except Exception:
        return None
    return str(addr[0]) if addr else None


class InboundGate(QuietNotifee):
    """The I/O half: sockets, waiting and logging; ``admission`` decides."""

    def __init__(self, admission: InboundAdmission, trusted: Callable[[str], bool]) -> None:
        self.admission = admission
        self.trusted = trusted
        self._freed = trio.Event()
        self._tickets: dict[int, Ticket] = {}  # id(raw connection) -> its ticket, during the upgrade

    def _wake(self) -> None:
        self._freed.set()
        self._freed = trio.Event()

    def _note(self, prefix: str) -> None:
        line = self.admission.refusal_note(prefix, trio.current_time())
        if line:
            log.warning("%s", line)

    async def upgrade(self, original: Any, raw_conn: Any, maddr: Any) -> Any:
        ip = _remote_ip(raw_conn)
        ticket = self.admission.arrive(ip, trio.current_time())
        if isinstance(ticket, str):
            self._note(connection_prefix(ip))
            await _close(raw_conn)
            raise SecurityUpgradeFailure(f"inbound connection from {ip} refused before its handshake: {ticket}")
        self._tickets[id(raw_conn)] = ticket
        try:
            if ticket.state == "waiting":
                with trio.move_on_after(self.admission.limits.wait_s):
                    while not self.admission.try_start(ticket):
                        await self._freed.wait()
                if ticket.state != "handshake":
                    self.admission.close(ticket, trio.current_time(), "wait_timeout")
                    self._note(ticket.prefix)
                    await _close(raw_conn)
                    raise SecurityUpgradeFailure(f"inbound connection from {ip} waited too long for a handshake slot")
            muxed = await original(raw_conn, maddr)
        except BaseException:
            self.admission.close(ticket)
            self._wake()
            raise
        finally:
            self._tickets.pop(id(raw_conn), None)
        setattr(muxed, _TICKET, ticket)
        if getattr(muxed, "is_closed", False):  # closed before we could see it: no disconnect will come
            self.admission.close(ticket)
            self._wake()
        return muxed

    async def secure_inbound(self, original: Any, raw_conn: Any) -> Any:
        ticket = self._tickets.get(id(raw_conn))
        secured = await original(raw_conn)
        if ticket is None:  # not from our listener path (e.g. hole punching as responder)
            return secured
        peer = secured.get_remote_peer().to_base58()
        why = self.admission.handshake_done(ticket, peer, self.trusted(peer), trio.current_time())
        self._wake()
        if why:
            self._note(ticket.prefix)
            await _close(secured)
            raise SecurityUpgradeFailure(f"inbound connection of {peer} refused after its handshake: {why}")
        return secured

    # -- swarm notifee: a connection's end closes its ticket -----------------------------------------
    async def disconnected(self, network: Any, conn: Any) -> None:
        ticket = getattr(getattr(conn, "muxed_conn", None), _TICKET, None)
        if ticket is not None:
            self.admission.close(ticket)
            self._wake()


async def _close(conn: Any) -> None:
    try:
        await conn.close()
    except Exception:  # already gone: nothing to release
        pass


# py-libp2p 0.8.1 accepts every inbound socket up to 300 connections and runs its security handshake
# at once (its own inbound limiter counts whole connections, not handshakes or prefixes); the swarm
# calls ``self.upgrade_inbound_raw_conn`` and the upgrader ``security_multistream.secure_inbound``
# for inbound connections, both looked up at call time, so instance attributes wrap them.
@replaces("libp2p.network.swarm.Swarm.upgrade_inbound_raw_conn", "e24c4285f494767a")
@replaces("libp2p.network.swarm.Swarm._do_handle_inbound_connection", "c22fdfd5289f671c")
@replaces("libp2p.transport.upgrader.TransportUpgrader.upgrade_security", "70dd214038eced03")
@replaces("libp2p.network.swarm.Swarm.register_notifee", "c321e146ff56af6e")
def install_inbound_gate(host: Any, admission: InboundAdmission, trusted: Callable[[str], bool]) -> InboundGate:
    """Apply ``admission`` to ``host``'s inbound connections (call before the host listens)."""
    gate = InboundGate(admission, trusted)
    network = host.get_network()
    upgrade, secure = network.upgrade_inbound_raw_conn, network.upgrader.security_multistream.secure_inbound

    async def upgrade_inbound_raw_conn(raw_conn: Any, maddr: Any) -> Any:
        return await gate.upgrade(upgrade, raw_conn, maddr)

    async def secure_inbound(raw_conn: Any) -> Any:
        return await gate.secure_inbound(secure, raw_conn)

    network.upgrade_inbound_raw_conn = upgrade_inbound_raw_conn
    network.upgrader.security_multistream.secure_inbound = secure_inbound
    network.register_notifee(gate)
    network.swarmlm_inbound = gate  # for metrics and tests: gate.admission holds the counters
    return gate
