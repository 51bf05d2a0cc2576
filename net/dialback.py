"""Dial-back reachability over our RPC layer: protocol ``/swarmlm/dialback/1``.

Asking (``DialbackService.run``, in the background: readiness never waits for it): the node sends a
connected peer its direct addresses and a fresh 16-byte nonce (method ``request``). Helping: the
peer dials those addresses from a *throwaway host with a new identity*, so the connection is new (py-libp2p
0.8.1's AutoNAT v1 reused the open one and said PUBLIC for everyone); Noise checks the peer id; over
it the throwaway host delivers the nonce (method ``nonce``). The asker records ``REACHED`` only when
its own nonce arrived, ``UNREACHABLE`` when the helper tried and it did not, ``ERROR`` otherwise, and
``net.reachability.Reachability`` turns the answers into public / private / unknown.

Abuse limits on the helper side: it dials only the IP it sees the asker connect from (plus that IP
with the asker's listen ports); over a relayed connection, where that IP is unknown, only the
asker's global addresses. At most 4 addresses, one request per asker per ``min_interval_s``, four at
a time in all (others queue up to ``queue_s``, then ``busy``). Answers count once per helper IP (one
machine, one vote); two agreeing sources settle the verdict (``DEFAULT_CONFIG``).
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
import time
from typing import Any, Callable

import multiaddr
import trio

from swarmlm.crypto.identity import Identity
from swarmlm.net.reachability import Answer, Outcome, Reachability, ReachabilityConfig, Verdict
from swarmlm.net.rpc import BAD_REQUEST, BUSY, RpcClient, RpcError

log = logging.getLogger("swarmlm.nat")

DIALBACK_PROTOCOL = "/swarmlm/dialback/1"
MAX_ADDRS = 4
NONCE_BYTES = 16
# two sources (distinct IPs, or peers over relayed connections) agreeing 2:1 settle it: a small swarm
# (one public node and a few homes) must be able to tell; more answers only make it firmer
DEFAULT_CONFIG = ReachabilityConfig(min_answers=2)


def _ip_port(addr: str) -> tuple[str, int] | None:
    """('1.2.3.4', 5) for '/ip4/1.2.3.4/tcp/5[/p2p/..]'; None for anything else (circuits, dns, quic)."""
    parts = addr.split("/")
    if len(parts) < 5 or parts[1] not in ("ip4", "ip6") or parts[3] != "tcp" or "p2p-circuit" in parts:
        return None
    try:
        ipaddress.ip_address(parts[2])
        return parts[2], int(parts[4])
    except ValueError:
        return None


def dialback_targets(addrs: list[str], observed_ip: str | None) -> list[str]:
    """Which of an asker's addresses a helper may dial (see the module docstring), as multiaddr text."""
    out: list[str] = []
    parsed = [p for p in (_ip_port(a) for a in addrs[:16]) if p is not None]
    if observed_ip is not None:
        fam = "ip6" if ":" in observed_ip else "ip4"
        cands = [f"/{fam}/{ip}/tcp/{port}" for ip, port in parsed if ip == observed_ip]
        cands += [f"/{fam}/{observed_ip}/tcp/{port}" for _, port in parsed]
    else:
        cands = [f"/{'ip6' if ':' in ip else 'ip4'}/{ip}/tcp/{port}" for ip, port in parsed
                 if not (ipaddress.ip_address(ip).is_private or ipaddress.ip_address(ip).is_loopback
                         or ipaddress.ip_address(ip).is_unspecified)]
    for c in cands:
        if c not in out:
            out.append(c)
    return out[:MAX_ADDRS]


class DialbackService:
    """Both sides of the dial-back protocol for one ``SwarmHost`` (register before it runs)."""

    def __init__(self, host: Any, config: ReachabilityConfig | None = None, *, first_delay_s: float = 1.0,
                 fast_retry_s: float = 3.0, dial_timeout_s: float = 3.0, min_interval_s: float = 5.0,
                 on_change: Callable[[str], None] | None = None) -> None:
        self.host = host
        self.reach = Reachability(config or DEFAULT_CONFIG)
        self.first_delay_s = first_delay_s
        self.fast_retry_s = fast_retry_s
        self.dial_timeout_s = dial_timeout_s
        self.min_interval_s = min_interval_s
        self.on_change = on_change
        self._pending: dict[bytes, trio.Event] = {}
        self._asked: dict[str, float] = {}  # peer -> wall time we last asked it
        self._served: dict[str, float] = {}  # asker -> trio time we last served it
        self._slots = trio.Semaphore(4)
        self.queue_s = 10.0
        self._errored: set[str] = set()
        self._verdict = Verdict.UNKNOWN
        host.rpc_server.add_unary(DIALBACK_PROTOCOL, "request", self._serve_request)
        host.rpc_server.add_unary(DIALBACK_PROTOCOL, "nonce", self._serve_nonce)

    # -- state -----------------------------------------------------------------------------------
    @property
    def verdict(self) -> str:
        return self._verdict.value

    def summary(self) -> dict:
        return self.reach.summary(time.time())

    def _record(self, answer: Answer) -> None:
        verdict = self.reach.record(answer)
        log.info("dial-back by %s at %s: %s -> reachability %s", answer.peer[-8:], answer.address,
                 answer.outcome.value, verdict.value)
        if verdict is not self._verdict:
            self._verdict = verdict
            log.warning("reachability is now %s", verdict.value)
            if self.on_change is not None:
                self.on_change(verdict.value)

    # -- helper side -----------------------------------------------------------------------------
    async def _serve_nonce(self, ctx: Any, args: Any) -> bool:
        ev = self._pending.get(args) if isinstance(args, bytes) else None
        if ev is None:
            return False
        ev.set()
        return True

    async def _serve_request(self, ctx: Any, args: Any) -> dict:
        if not isinstance(args, dict) or not isinstance(args.get("nonce"), bytes) \
                or len(args["nonce"]) != NONCE_BYTES or not isinstance(args.get("addrs"), list) \
                or not all(isinstance(a, str) and len(a) < 300 for a in args["addrs"]):
            raise RpcError(BAD_REQUEST, "expected {addrs: [multiaddr], nonce: 16 bytes}")
        now = trio.current_time()
        last = self._served.get(ctx.peer)
        if last is not None and now - last < self.min_interval_s:
            raise RpcError(BUSY, "asked too recently")
        targets = dialback_targets(args["addrs"], self.host.remote_ip(ctx.peer))
        if not targets:
            return {"tried": [], "ok": None}
        got = False
        with trio.move_on_after(self.queue_s):  # a few askers at once wait their turn
            await self._slots.acquire()
            got = True
        if not got:
            raise RpcError(BUSY, "dial-back slots full")
        self._served[ctx.peer] = now
        try:
            for addr in targets:
                if await self._dial_back(ctx.peer, addr, args["nonce"]):
                    return {"tried": targets, "ok": addr}
            return {"tried": targets, "ok": None}
        finally:
            self._slots.release()

    async def _dial_back(self, peer: str, addr: str, nonce: bytes) -> bool:
        """Deliver ``nonce`` to ``peer`` at ``addr`` from a throwaway host (new identity, new connection)."""
        from libp2p.peer.id import ID  # lazy: libp2p is slow to import (~1 s)
        from libp2p.peer.peerinfo import PeerInfo  # lazy: libp2p, as above

        from swarmlm.net.transport.build import build_libp2p_host  # lazy: imports libp2p (~1 s)

        tmp, listen = build_libp2p_host(Identity.generate(), ["/ip4/0.0.0.0/tcp/0"])
        pid = ID.from_base58(peer)

        async def opener(_peer: str, protocol: str) -> Any:
            return await tmp.new_stream(pid, [protocol])

        try:
            async with tmp.run(listen_addrs=listen):
                with trio.fail_after(self.dial_timeout_s):
                    await tmp.connect(PeerInfo(pid, [multiaddr.Multiaddr(addr)]))
                    return bool(await RpcClient(opener).call(peer, DIALBACK_PROTOCOL, "nonce", nonce,
                                                             timeout=self.dial_timeout_s))
        except Exception as exc:  # unreachable is the expected answer behind a NAT
            log.debug("dial-back to %s at %s failed: %s", peer[-8:], addr, exc)
            return False

    # -- asking side -----------------------------------------------------------------------------
    async def ask(self, peer: str) -> Answer:
        """Ask one peer to dial us back; record and return its answer."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        ev = self._pending[nonce] = trio.Event()
        addrs = [a.rsplit("/p2p/", 1)[0] for a in self.host.direct_addrs()]
        ip = self.host.remote_ip(peer)
        group = f"ip:{ip}" if ip else None
        self._asked[peer] = time.time()
        try:
            res = await self.host.rpc.call(peer, DIALBACK_PROTOCOL, "request", {"addrs": addrs, "nonce": nonce},
                                           timeout=4 * MAX_ADDRS * self.dial_timeout_s)
            if ev.is_set() and isinstance(res, dict) and res.get("ok"):
                outcome, where = Outcome.REACHED, str(res["ok"])
            elif isinstance(res, dict) and res.get("tried") and not res.get("ok"):
                outcome, where = Outcome.UNREACHABLE, ",".join(map(str, res["tried"]))
            else:
                outcome, where = Outcome.ERROR, ""
        except Exception as exc:
            log.info("dial-back request to %s failed: %s", peer[-8:], exc)
            outcome, where = Outcome.ERROR, ""
        finally:
            self._pending.pop(nonce, None)
        if outcome is Outcome.ERROR:
            self._errored.add(peer)
        else:
            self._errored.discard(peer)
        answer = Answer(peer=peer, address=where, outcome=outcome, at=time.time(), group=group)
        self._record(answer)
        return answer

    async def run(self) -> None:
        """Ask peers now and then: every ``fast_retry_s`` while unknown (peers not asked for a minute,
        and only from network groups that have not answered yet: on a loopback testnet one answer
        from 127.0.0.1 is all there is to learn), everyone again after ``refresh_s`` once settled."""
        await trio.sleep(self.first_delay_s)
        while True:
            now = time.time()
            settled = self._verdict is not Verdict.UNKNOWN
            again = self.reach.config.refresh_s if settled else self.reach.config.retry_s
            answered = {a.group for a in self.reach._live(now) if a.group is not None}
            peers = []
            for p in self.host.connected_peers():
                ip = self.host.remote_ip(p)
                if not self.host.supports(p, DIALBACK_PROTOCOL) or (not settled and ip and f"ip:{ip}" in answered):
                    continue
                if now - self._asked.get(p, -1e18) >= (again if p not in self._errored else self.fast_retry_s * 2):
                    peers.append(p)
            async with trio.open_nursery() as nursery:
                for p in peers[:4]:
                    nursery.start_soon(self.ask, p)
            await trio.sleep(self.fast_retry_s if not settled else min(60.0, self.reach.config.refresh_s))
