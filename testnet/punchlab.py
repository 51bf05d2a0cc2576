"""Helper programs that exercise ``swarmlm.testnet.holepunch`` inside the netns internet (tests, bench).

``python -m swarmlm.testnet.punchlab serve --port 7000`` runs on the public host: a rendezvous that
tells two peers of one session each other's *observed* public ``ip:port`` (TCP and UDP, like the
observed addresses DCUtR exchanges over a relay) and a byte relay for the fallback path.
``tcp``/``udp``/``relay`` run on a home host, play ``--trials`` sessions against the named peer and
print one JSON line per trial: ``{"trial", "proto", "ok", "remote", "peer_public", "how", "elapsed_s", ...}``.

``run_trials(topo, proto, x, y, n)`` drives a pair of clients in a ``netns.Topology`` and collects both
sides' results. Messages are single JSON lines (TCP) or datagrams (UDP), a few hundred bytes at most.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Sequence

import trio

from swarmlm.testnet.holepunch import (PunchError, bound_socket, dial_from, fmt_addr, parse_addr, reuse_listener,
                                       tcp_simultaneous_open, udp_keepalive, udp_punch)
from swarmlm.testnet.netns import PUBLIC_IP

MAX_LINE = 1024
RENDEZVOUS_PORT = 7000


@dataclass(frozen=True)
class TrialOptions:
    timeout: float = 5.0  # seconds per punch
    delay: float = 0.0  # wait this long after the rendezvous answers (simulates hearing "go" late)
    idle: float = 0.0  # udp: after the punch stay quiet this long, then test the path
    keepalive: float = 0.0  # udp: during idle send a keep-alive every this many seconds (0: none)
    probe: bool = False  # udp idle test: this side sends the probe (the other side listens for it)


async def _read_line(stream: trio.SocketStream, buf: bytearray) -> bytes:
    while b"\n" not in buf:
        if len(buf) > MAX_LINE:
            raise ValueError("line too long")
        chunk = await stream.receive_some(MAX_LINE)
        if not chunk:
            raise EOFError("connection closed")
        buf += chunk
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    return line


async def _send_json(stream: trio.SocketStream, obj: dict) -> None:
    await stream.send_all(json.dumps(obj).encode() + b"\n")


# -- rendezvous server (public host) ------------------------------------------------------------------
class Rendezvous:
    """Pairs two registrations of one session; answers each with both observed addresses."""

    def __init__(self) -> None:
        self.tcp: dict[tuple[str, str], tuple[str, trio.Event, dict]] = {}
        self.relay: dict[tuple[str, str], tuple[trio.SocketStream, trio.Event, list]] = {}
        self.udp: dict[tuple[str, str], str] = {}

    async def handle_tcp(self, stream: trio.SocketStream) -> None:
        observed = fmt_addr(stream.socket.getpeername())
        buf = bytearray()
        key = ("", "")
        try:
            with trio.fail_after(30):
                msg = json.loads(await _read_line(stream, buf))
            session, name, peer = str(msg["session"]), str(msg["name"]), str(msg["peer"])
            if msg.get("relay"):
                await self._relay(stream, session, name, peer)
                return
            done, box, key = trio.Event(), {}, (session, name)
            self.tcp[key] = (observed, done, box)
            other = self.tcp.get((session, peer))
            if other is not None:  # both here: answer both at the same moment ("go")
                box["peer"], other[2]["peer"] = other[0], observed
                done.set()
                other[1].set()
            with trio.fail_after(30):
                await done.wait()
            await _send_json(stream, {"you": observed, "peer": box["peer"]})
            await stream.receive_some(16)  # hold the mapping open until the client hangs up
        except (OSError, ValueError, KeyError, EOFError, trio.TooSlowError, trio.BrokenResourceError):
            pass
        finally:
            self.tcp.pop(key, None)
            await stream.aclose()

    async def _relay(self, stream: trio.SocketStream, session: str, name: str, peer: str) -> None:
        done, slot = trio.Event(), []
        self.relay[(session, name)] = (stream, done, slot)
        other = self.relay.get((session, peer))
        if other is None:
            with trio.fail_after(30):
                await done.wait()  # the peer arrives, splices, and closes us when done
            return
        other[2].append(stream)
        try:
            await _send_json(stream, {"relayed": True})
            await _send_json(other[0], {"relayed": True})
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_pump, stream, other[0], nursery.cancel_scope)
                nursery.start_soon(_pump, other[0], stream, nursery.cancel_scope)
        finally:
            await other[0].aclose()
            other[1].set()
            self.relay.pop((session, name), None)
            self.relay.pop((session, peer), None)

    async def serve_udp(self, port: int) -> None:
        sock = await bound_socket("udp", port)
        while True:
            data, addr = await sock.recvfrom(MAX_LINE)
            try:
                msg = json.loads(data)
                session, name, peer = str(msg["session"]), str(msg["name"]), str(msg["peer"])
            except (ValueError, KeyError, TypeError):
                continue
            self.udp[(session, name)] = fmt_addr(addr)
            if (session, peer) in self.udp:
                reply = {"you": fmt_addr(addr), "peer": self.udp[(session, peer)]}
                await sock.sendto(json.dumps(reply).encode(), addr)


async def _pump(src: trio.SocketStream, dst: trio.SocketStream, cancel: trio.CancelScope) -> None:
    try:
        while chunk := await src.receive_some(65536):
            await dst.send_all(chunk)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    cancel.cancel()


async def serve(port: int) -> None:
    rv = Rendezvous()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rv.serve_udp, port)
        listener = await reuse_listener(port)
        print(json.dumps({"serving": port}), flush=True)
        await trio.serve_listeners(rv.handle_tcp, [listener])


# -- clients (home hosts) -----------------------------------------------------------------------------
async def tcp_trial(rv: tuple[str, int], session: str, name: str, peer: str, port: int,
                   opts: TrialOptions) -> dict:
    """One TCP trial: listen on ``port``, learn addresses from the rendezvous, punch, say hello."""
    out: dict[str, Any] = {"proto": "tcp", "session": session, "name": name, "ok": False}
    listener = await reuse_listener(port)
    signal_stream = None
    try:
        with trio.fail_after(10):
            signal_stream = await dial_from(port, rv)
            await _send_json(signal_stream, {"session": session, "name": name, "peer": peer})
            info = json.loads(await _read_line(signal_stream, bytearray()))
        out.update(you=info["you"], peer_public=info["peer"])
        await trio.sleep(opts.delay)  # simulates the peer hearing "go" later (asymmetric latency)
        try:
            punch = await tcp_simultaneous_open(port, parse_addr(info["peer"]), listener=listener,
                                                timeout=opts.timeout)
        except PunchError as exc:
            out["error"] = str(exc)
            return out
        async with punch.stream:
            with trio.fail_after(5):
                await _send_json(punch.stream, {"hello": name})
                hello = json.loads(await _read_line(punch.stream, bytearray()))
        out.update(ok=hello.get("hello") == peer, remote=fmt_addr(punch.remote), how=punch.how,
                   attempts=punch.attempts, elapsed_s=round(punch.elapsed_s, 4))
        return out
    finally:
        await listener.aclose()
        if signal_stream is not None:
            await signal_stream.aclose()


async def udp_trial(rv: tuple[str, int], session: str, name: str, peer: str, port: int,
                   opts: TrialOptions) -> dict:
    """One UDP trial: register from ``port`` until the rendezvous answers, then punch."""
    out: dict[str, Any] = {"proto": "udp", "session": session, "name": name, "ok": False}
    sock = await bound_socket("udp", port)
    with sock:
        reg = json.dumps({"session": session, "name": name, "peer": peer}).encode()
        info = None
        with trio.move_on_after(10):
            while info is None:
                await sock.sendto(reg, rv)
                with trio.move_on_after(0.2):
                    data, addr = await sock.recvfrom(MAX_LINE)
                    if addr == rv:
                        info = json.loads(data)
        if info is None:
            out["error"] = "rendezvous did not answer"
            return out
        out.update(you=info["you"], peer_public=info["peer"])
        await trio.sleep(opts.delay)
        tok, peer_tok = f"punch:{session}:{name}".encode(), f"punch:{session}:{peer}".encode()
        try:
            punch = await udp_punch(sock, parse_addr(info["peer"]), token=tok, peer_token=peer_tok,
                                    timeout=opts.timeout)
        except PunchError as exc:
            out["error"] = str(exc)
            return out
        out.update(ok=True, remote=fmt_addr(punch.remote), sent=punch.sent, elapsed_s=round(punch.elapsed_s, 4))
        if opts.idle > 0:
            out["alive"] = await _idle_then_probe(sock, punch.remote, f"{session}:{name}", f"{session}:{peer}", opts)
        return out


async def _idle_then_probe(sock: Any, remote: tuple[str, int], me: str, peer: str, opts: TrialOptions) -> bool | None:
    """Stay quiet (but for keep-alives) for ``opts.idle`` s, then the prober sends 3 probes and the other
    side reports whether one arrived: did the NAT mappings survive the idle time?"""
    async with trio.open_nursery() as nursery:
        if opts.keepalive > 0:
            nursery.start_soon(udp_keepalive, sock, remote, f"ka:{me}".encode(), opts.keepalive)
        await trio.sleep(opts.idle)
        nursery.cancel_scope.cancel()
    if opts.probe:
        for _ in range(3):
            await sock.sendto(f"probe:{me}".encode(), remote)
            await trio.sleep(0.1)
        return None
    with trio.move_on_after(2.0):
        while True:
            data, _addr = await sock.recvfrom(MAX_LINE)
            if data == f"probe:{peer}".encode():
                return True
    return False


async def relay_trial(rv: tuple[str, int], session: str, name: str, peer: str, port: int,
                     opts: TrialOptions) -> dict:
    """One relayed exchange through the public host: the fallback when punching is impossible."""
    out: dict[str, Any] = {"proto": "relay", "session": session, "name": name, "ok": False}
    t0 = time.monotonic()
    with trio.move_on_after(opts.timeout + 10):
        stream = await dial_from(port, rv)
        async with stream:
            buf = bytearray()
            await _send_json(stream, {"session": session, "name": name, "peer": peer, "relay": True})
            json.loads(await _read_line(stream, buf))
            await _send_json(stream, {"hello": name})
            hello = json.loads(await _read_line(stream, buf))
            out.update(ok=hello.get("hello") == peer, remote=fmt_addr(rv), elapsed_s=round(time.monotonic() - t0, 4))
            await trio.sleep(0.1)  # let the peer read our hello before the relay tears down
    return out


TRIALS = {"tcp": tcp_trial, "udp": udp_trial, "relay": relay_trial}


async def run_client(proto: str, rv: tuple[str, int], session: str, name: str, peer: str, port: int,
                     trials: int, opts: TrialOptions) -> None:
    for i in range(trials):
        try:
            res = await TRIALS[proto](rv, f"{session}-{i}", name, peer, port + i, opts)
        except (OSError, ValueError, KeyError, EOFError, trio.TooSlowError, trio.BrokenResourceError) as exc:
            res = {"proto": proto, "session": f"{session}-{i}", "name": name, "ok": False, "error": repr(exc)}
        res["trial"] = i
        print(json.dumps(res), flush=True)


def run_trials(topo: Any, proto: str, x: str, y: str, n: int = 10, *, timeout: float = 5.0,
               base_port: int = 40000, rendezvous: str | None = None, delay_y: float = 0.0,
               idle: float = 0.0, keepalive: float = 0.0) -> list[tuple[dict, dict]]:
    """Run ``n`` trials of ``proto`` between sites ``x`` and ``y`` of ``topo``; returns (x's, y's) results.

    ``delay_y`` makes ``y`` start punching that many seconds after ``x`` (so x's first packets are dropped).
    ``idle``/``keepalive`` (udp): after the punch both stay quiet, sending keep-alives every ``keepalive``
    s if > 0; then ``y`` probes and x's result says whether the probe got through (``"alive"``).

    A rendezvous must already serve on the public host (``start_rendezvous``).
    """
    rv = rendezvous or f"{PUBLIC_IP}:{RENDEZVOUS_PORT}"
    session = f"{proto}-{x}{y}-{time.monotonic_ns()}"
    procs = []
    for me, other in ((x, y), (y, x)):
        args = [proto, "--rendezvous", rv, "--session", session, "--name", me, "--peer", other,
                "--port", str(base_port), "--trials", str(n), "--timeout", str(timeout),
                "--delay", str(delay_y if me == y else 0.0), "--idle", str(idle), "--keepalive", str(keepalive)]
        if me == y:
            args.append("--probe")
        procs.append(topo.python_in(me, "swarmlm.testnet.punchlab", *args, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True))
    outs = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=n * (timeout + idle + 25) + 30)
        rows = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
        if len(rows) != n:
            raise RuntimeError(f"punchlab client gave {len(rows)}/{n} results; stderr: {stderr[-2000:]}")
        outs.append(rows)
    return list(zip(outs[0], outs[1]))


def start_rendezvous(topo: Any, port: int = RENDEZVOUS_PORT) -> subprocess.Popen:
    """Start the rendezvous/relay on the public host and wait until it serves."""
    proc = topo.python_in("pub", "swarmlm.testnet.punchlab", "serve", "--port", str(port),
                          stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith('{"serving"'):
        raise RuntimeError(f"rendezvous did not start: {line!r}")
    return proc


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m swarmlm.testnet.punchlab", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="rendezvous + relay on the public host")
    s.add_argument("--port", type=int, default=RENDEZVOUS_PORT)
    for proto in TRIALS:
        c = sub.add_parser(proto, help=f"{proto} trials against a peer")
        c.add_argument("--rendezvous", required=True, help="ip:port of `serve`")
        c.add_argument("--session", required=True)
        c.add_argument("--name", required=True)
        c.add_argument("--peer", required=True)
        c.add_argument("--port", type=int, required=True, help="local port of trial 0 (trial i uses port+i)")
        c.add_argument("--trials", type=int, default=1)
        c.add_argument("--timeout", type=float, default=5.0, help="seconds per punch")
        c.add_argument("--delay", type=float, default=0.0, help="wait this long after the rendezvous answers")
        c.add_argument("--idle", type=float, default=0.0, help="udp: stay quiet this long after the punch")
        c.add_argument("--keepalive", type=float, default=0.0, help="udp: keep-alive period while idle")
        c.add_argument("--probe", action="store_true", help="udp idle test: send the probe (else listen)")
    ns = ap.parse_args(argv)
    try:
        if ns.cmd == "serve":
            trio.run(serve, ns.port)
        else:
            opts = TrialOptions(ns.timeout, ns.delay, ns.idle, ns.keepalive, ns.probe)
            trio.run(run_client, ns.cmd, parse_addr(ns.rendezvous), ns.session, ns.name, ns.peer, ns.port,
                     ns.trials, opts)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
