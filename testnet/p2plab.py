"""Plain py-libp2p 0.8.1 relay v2 + DCUtR inside the netns internet: evidence for our libp2p layer.

Not our host: a minimal use of the library's own pieces (CircuitV2Protocol/Transport, DCUtRProtocol),
to show what it does through real NAT rules before ``swarmlm.net.host`` wraps them.

``python -m swarmlm.testnet.p2plab relay --port 4001`` on the public host; ``listen`` on a home host
reserves a slot on the relay and answers an echo protocol; ``dial`` connects to the listener through
the relay, runs DCUtR and sends one echo. Each prints JSON lines; ``dial`` ends with
``{"relayed", "punched", "attempts", "direct", "echo_ok", "echo_via", "t_relay_s", "t_punch_s"}`` where
``direct`` lists the remote addresses of non-circuit connections to the listener and ``echo_via``
the addresses of the connection the echo stream used. ``run_pair(topo, x, y, port)`` drives one trial.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any, Sequence

import multiaddr
import trio

from swarmlm.testnet.netns import PUBLIC_IP

ECHO = "/swarmlm-lab/echo/1.0.0"


def _emit(**kw: Any) -> None:
    print(json.dumps(kw), flush=True)


def _conn_addrs(host: Any, peer: Any) -> list[list[str]]:
    out = []
    for conn in host.get_network().get_connections(peer):
        try:
            out.append([str(a) for a in conn.get_transport_addresses()])
        except Exception as exc:  # noqa: BLE001 - report, this is a lab
            out.append([repr(exc)])
    return out


async def _node(ns: argparse.Namespace) -> None:
    # libp2p takes ~1 s to import; only the lab processes need it, not the tests that drive them
    from libp2p import new_host  # lazy: libp2p, see above
    from libp2p.crypto.secp256k1 import create_new_key_pair  # lazy: libp2p
    from libp2p.peer.id import ID  # lazy: libp2p
    from libp2p.peer.peerinfo import info_from_p2p_addr  # lazy: libp2p
    from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole  # lazy: libp2p
    from libp2p.relay.circuit_v2.dcutr import DCUtRProtocol  # lazy: libp2p
    from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID, STOP_PROTOCOL_ID, CircuitV2Protocol  # lazy: libp2p
    from libp2p.relay.circuit_v2.resources import RelayLimits  # lazy: libp2p
    from libp2p.relay.circuit_v2.transport import CircuitV2Transport  # lazy: libp2p
    from libp2p.tools.anyio_service import background_trio_service  # lazy: libp2p

    # slots of peers that died stay taken until they expire: size max_reservations for churn
    limits = RelayLimits(duration=600, data=16 << 20, max_circuit_conns=64, max_reservations=64)
    hop = ns.role == "relay"
    roles = (RelayRole.HOP | RelayRole.STOP | RelayRole.CLIENT) if hop else (RelayRole.STOP | RelayRole.CLIENT)
    host = new_host(key_pair=create_new_key_pair())
    relay = CircuitV2Protocol(host, limits=limits, allow_hop=hop)
    dcutr = DCUtRProtocol(host)

    async def echo(stream: Any) -> None:
        data = await stream.read(1024)
        await stream.write(data)
        await stream.close()

    async with host.run(listen_addrs=[multiaddr.Multiaddr(f"/ip4/0.0.0.0/tcp/{ns.port}")]):
        host.set_stream_handler(PROTOCOL_ID, relay._handle_hop_stream)
        host.set_stream_handler(STOP_PROTOCOL_ID, relay._handle_stop_stream)
        host.set_stream_handler(ECHO, echo)
        async with background_trio_service(relay):
            transport = CircuitV2Transport(host, relay, RelayConfig(roles=roles, limits=limits))
            async with background_trio_service(dcutr), trio.open_nursery() as nursery:
                if hop:
                    _emit(ready=True, id=str(host.get_id()))
                    await trio.sleep_forever()
                rinfo = info_from_p2p_addr(multiaddr.Multiaddr(ns.relay))
                await host.connect(rinfo)
                if ns.role == "listen":
                    stream = await host.new_stream(rinfo.peer_id, [PROTOCOL_ID])
                    ok = await transport.reserve(stream, rinfo.peer_id, nursery)
                    _emit(ready=True, id=str(host.get_id()), reserved=ok)
                    await trio.sleep_forever()
                target = ID.from_string(ns.target)
                t0 = time.monotonic()
                await transport.dial(multiaddr.Multiaddr(f"{ns.relay}/p2p-circuit/p2p/{target}"))
                t_relay = time.monotonic() - t0
                punched, attempts = False, 0

                def is_direct() -> bool:
                    return any(all("/p2p-circuit" not in a for a in c) for c in _conn_addrs(host, target))

                t1 = time.monotonic()
                with trio.move_on_after(ns.punch_timeout):
                    while not is_direct() and attempts < 3:  # DCUtR allows retries; one rarely hangs
                        attempts += 1
                        with trio.move_on_after(ns.punch_timeout / 2):
                            punched = await dcutr.initiate_hole_punch(target)
                        # the peer's auto-drive may have punched first ("in progress" -> False): wait a moment
                        for _ in range(20):
                            if is_direct():
                                break
                            await trio.sleep(0.1)
                t_punch = time.monotonic() - t1
                conns = _conn_addrs(host, target)
                direct = [a for c in conns if all("/p2p-circuit" not in x for x in c) for a in c]
                stream = await host.new_stream(target, [ECHO])
                via = [str(a) for a in stream.muxed_conn.get_transport_addresses()]  # type: ignore[attr-defined]
                await stream.write(b"ping")
                with trio.fail_after(10):
                    echo_ok = (await stream.read(1024)) == b"ping"
                await stream.close()
                _emit(relayed=True, punched=punched, attempts=attempts, direct=direct, echo_ok=echo_ok,
                      echo_via=via, t_relay_s=round(t_relay, 3), t_punch_s=round(t_punch, 3))
                nursery.cancel_scope.cancel()


def _ready(proc: subprocess.Popen) -> dict:
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"p2plab node exited early: {proc.stderr.read()[-2000:] if proc.stderr else ''}")
        if line.startswith("{"):
            return json.loads(line)


def start_relay(topo: Any, port: int = 4001) -> tuple[subprocess.Popen, str]:
    """Start the lab relay on the public host; returns (process, its /ip4/.../p2p/ID multiaddr)."""
    proc = topo.python_in("pub", "swarmlm.testnet.p2plab", "relay", "--port", str(port),
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return proc, f"/ip4/{PUBLIC_IP}/tcp/{port}/p2p/{_ready(proc)['id']}"


def run_pair(topo: Any, relay_addr: str, x: str, y: str, port: int, punch_timeout: float = 8.0) -> dict:
    """One trial: ``y`` listens (reserved on the relay), ``x`` dials it through the relay and punches."""
    kw: dict[str, Any] = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    listener = topo.python_in(y, "swarmlm.testnet.p2plab", "listen", "--port", str(port), "--relay", relay_addr, **kw)
    try:
        info = _ready(listener)
        dialer = topo.python_in(x, "swarmlm.testnet.p2plab", "dial", "--port", str(port), "--relay", relay_addr,
                                "--target", info["id"], "--punch-timeout", str(punch_timeout), **kw)
        try:
            out, err = dialer.communicate(timeout=punch_timeout + 60)
        except subprocess.TimeoutExpired:
            dialer.kill()
            out, err = dialer.communicate()
        rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        if not rows:
            return {"relayed": False, "error": err[-1500:]}
        if not rows[-1].get("direct"):
            rows[-1]["stderr_tail"] = err[-1500:]
        return rows[-1]
    finally:
        listener.terminate()
        listener.wait(timeout=10)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m swarmlm.testnet.p2plab", description=__doc__.split("\n")[0])
    ap.add_argument("role", choices=["relay", "listen", "dial"])
    ap.add_argument("--port", type=int, default=4001, help="TCP listen port")
    ap.add_argument("--relay", help="relay multiaddr /ip4/.../tcp/.../p2p/ID (listen, dial)")
    ap.add_argument("--target", help="listener peer id (dial)")
    ap.add_argument("--punch-timeout", type=float, default=8.0, help="seconds for all DCUtR attempts")
    try:
        trio.run(_node, ap.parse_args(argv))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
