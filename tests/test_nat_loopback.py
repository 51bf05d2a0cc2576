"""NAT traversal pieces on loopback (no root): dial-back answers, its abuse limits, relay reservations
and relayed dialing, and that nodes stay fast to start with everything on (the check runs in the
background; the verdict is "unknown" until answered)."""

from __future__ import annotations

import trio

from helpers import running_hosts
from swarmlm.net.dialback import dialback_targets
from swarmlm.net.reachability import Outcome


def test_targets_only_the_observed_ip_with_listen_ports() -> None:
    addrs = ["/ip4/10.1.0.2/tcp/4001", "/ip4/100.64.0.11/tcp/4001", "/ip4/9.9.9.9/tcp/80",
             "/ip4/100.64.0.10/tcp/4001/p2p/QmRelay/p2p-circuit"]
    assert dialback_targets(addrs, "100.64.0.11") == ["/ip4/100.64.0.11/tcp/4001", "/ip4/100.64.0.11/tcp/80"]
    # over a relayed connection (no observed IP): only global addresses, never private or loopback
    assert dialback_targets(addrs + ["/ip4/127.0.0.1/tcp/1"], None) == ["/ip4/100.64.0.11/tcp/4001",
                                                                          "/ip4/9.9.9.9/tcp/80"]
    assert len(dialback_targets([f"/ip4/8.8.8.8/tcp/{p}" for p in range(1, 30)], "8.8.8.8")) == 4


async def test_dialback_reaches_us_on_a_fresh_connection() -> None:
    async with running_hosts(2, reachability=True) as (a, b):
        with trio.fail_after(10):
            while not (a.is_connected(b.peer_id) and a.supports(b.peer_id, "/swarmlm/dialback/1")):
                await trio.sleep(0.05)
        answer = await a.dialback.ask(b.peer_id)
        assert answer.outcome is Outcome.REACHED, answer
        assert answer.address.startswith("/ip4/127.0.0.1/tcp/")
        assert answer.group == "ip:127.0.0.1"
        # one machine, one vote: a second helper on the same IP does not settle a verdict
        assert a.reachability == "unknown"


async def test_dialback_refuses_a_wrong_nonce_claim_and_rate_limits() -> None:
    from swarmlm.net.dialback import DIALBACK_PROTOCOL
    from swarmlm.net.rpc import RpcError

    async with running_hosts(2, reachability=True) as (a, b):
        with trio.fail_after(10):
            while not a.is_connected(b.peer_id):
                await trio.sleep(0.05)
        # a nonce nobody asked for is not "reached"
        assert await b.rpc.call(a.peer_id, DIALBACK_PROTOCOL, "nonce", b"x" * 16) is False
        args = {"addrs": [a.addrs[0].rsplit("/p2p/", 1)[0]], "nonce": b"n" * 16}
        first = await a.rpc.call(b.peer_id, DIALBACK_PROTOCOL, "request", args)
        # b dialed a and delivered the nonce, but a never asked with it: not a success
        assert first["tried"] == args["addrs"] and first["ok"] is None
        try:
            await a.rpc.call(b.peer_id, DIALBACK_PROTOCOL, "request", args)
            raise AssertionError("a second request right away must be refused")
        except RpcError as exc:
            assert exc.code == "busy"


async def test_relay_reservation_and_relayed_dial() -> None:
    """Host 0 serves relay; host 1 reserves on it and advertises a /p2p-circuit address; host 2
    connects to host 1 through it, and RPC works over whichever connection results."""
    async with running_hosts(1, relay_serve="always") as (relay,):
        async with running_hosts(1, bootstrap_first=False, relay_reserve=True) as (listener,):
            await listener.connect(relay.addrs[0])
            with trio.fail_after(15):
                while not listener.nat.reservations:
                    await trio.sleep(0.05)
            circuit = [a for a in listener.addrs if "/p2p-circuit" in a]
            assert circuit and circuit[0].endswith(f"/p2p-circuit/p2p/{listener.peer_id}")
            assert listener.addrs[0] == circuit[0]  # relay addresses first while we hold a slot
            async with running_hosts(1, bootstrap_first=False) as (dialer,):
                await dialer.connect(relay.addrs[0])
                await trio.sleep(1.0)
                assert not dialer.nat.reservations  # light clients only dial out
                await dialer.connect(circuit[0])
                assert dialer.is_connected(listener.peer_id)
                assert await dialer.ping(listener.peer_id) > 0


async def test_hosts_without_nat_features_still_work() -> None:
    async with running_hosts(2, relay=False, hole_punch=False) as (a, b):
        with trio.fail_after(10):
            while not a.is_connected(b.peer_id):
                await trio.sleep(0.05)
        assert a.nat is None and await a.ping(b.peer_id) > 0


async def test_nodes_start_with_everything_on_and_publish_unknown(tmp_path) -> None:
    """`node run` defaults (relay, hole punching, reachability on): readiness does not wait for the
    dial-back; on loopback all helpers share one IP, so the published verdict stays "unknown"."""
    import time

    from helpers import running_nodes

    async with running_nodes(tmp_path, [[], []]) as nodes:
        assert all(n.config.reachability and n.config.relay and n.config.hole_punch for n in nodes)
        assert all(n.host.dialback is not None and n.host.nat is not None for n in nodes)
        rows = nodes[1].state.state.status_rows(time.time())
        assert {r["reach"] for r in rows} == {"unknown"}


async def test_relay_is_served_only_while_public() -> None:
    from swarmlm.net.nat import HOP_PROTOCOL

    async with running_hosts(2, reachability=True) as (a, b):
        assert not a.nat.serving  # verdict unknown: no hop handler
        a._on_verdict("public")
        assert a.nat.serving and HOP_PROTOCOL in a.libp2p.get_mux().get_protocols()
        a._on_verdict("private")
        assert not a.nat.serving and HOP_PROTOCOL not in a.libp2p.get_mux().get_protocols()


async def test_reservation_is_renewed_before_it_expires() -> None:
    async with running_hosts(1, relay_serve="always", relay_reservation_ttl_s=3.0) as (relay,):
        async with running_hosts(1, bootstrap_first=False, relay_reserve=True) as (listener,):
            await listener.connect(relay.addrs[0])
            with trio.fail_after(15):
                while not listener.nat.reservations:
                    await trio.sleep(0.05)
            first = listener.nat.reservations[relay.peer_id][1]
            with trio.fail_after(15):
                while listener.nat.reservations.get(relay.peer_id, ("", first))[1] <= first:
                    await trio.sleep(0.1)
            assert listener.nat.reservations[relay.peer_id][1] > first  # renewed, still advertised
            assert any("/p2p-circuit" in a for a in listener.addrs)
