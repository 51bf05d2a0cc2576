"""Our ``SwarmHost`` relay + DCUtR through the netns NATs, trial by trial (tests and ``bench nat``).

An *agent* (``python -m swarmlm.testnet.natlab agent``) runs inside one namespace and takes JSON
commands on stdin, one per line, answering one JSON line each on stdout. Every trial uses fresh hosts
(new identity, new listen port) inside the same process, so trials cost no interpreter start-up:

* ``{"op": "relay", "port": P}``: a host that always serves relay; answers ``{"addr"}``.
* ``{"op": "listen", "port": P, "relay": R, "punch": bool}``: a host bootstrapped from relay ``R`` that
  reserves a slot; answers ``{"peer", "circuit"}`` once reserved.
* ``{"op": "dial", "port": P, "relay": R, "target": CIRCUIT, "punch": bool, "wait_s": T, "pings": N}``:
  connects through the relay, waits up to T s for a direct connection (DCUtR runs by itself) and
  answers ``{"relayed_ms", "direct_ms" (null: none), "direct": [remote addrs], "rtt_ms" (median of N
  echo RPCs over the connection new streams choose), "via": [addrs of that connection]}``.
* ``{"op": "close"}``: stop the trial's hosts (the relay stays).

``Lab`` drives agents from the root namespace (``lab.trial("a", "b")``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Sequence

import trio

from swarmlm.crypto.identity import Identity
from swarmlm.net.host import HostConfig, SwarmHost


def _emit(**kw: Any) -> None:
    print(json.dumps(kw), flush=True)


class Agent:
    def __init__(self) -> None:
        self.scopes: list[trio.CancelScope] = []
        self.relay_scope: trio.CancelScope | None = None

    async def start_host(self, nursery: Any, cfg: Any, keep: bool = False) -> Any:
        host = SwarmHost(Identity.generate(), cfg)
        scope = trio.CancelScope()

        async def run(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            with scope:
                async with host.running():
                    task_status.started()
                    await trio.sleep_forever()

        await nursery.start(run)
        if keep:
            self.relay_scope = scope
        else:
            self.scopes.append(scope)
        return host

    async def handle(self, nursery: Any, cmd: dict) -> dict:
        op = cmd["op"]
        quiet = dict(ping_interval_s=10.0, discovery_interval_s=3600.0, reachability=False,
                     fastpath=cmd.get("fastpath", True))
        listen = [f"/ip4/{cmd.get('ip', '0.0.0.0')}/tcp/{cmd.get('port', 0)}"]
        if op == "relay":
            host = await self.start_host(nursery, HostConfig(listen=listen, relay_serve="always", **quiet), keep=True)
            addr = next(a for a in host.addrs if "/ip4/127." not in a)
            return {"addr": addr, "peer": host.peer_id}
        if op == "listen":
            host = await self.start_host(nursery, HostConfig(listen=listen, bootstrap=[cmd["relay"]],
                                                             relay_serve="never", relay_reservations=1, relay_reserve=True,
                                                             hole_punch=cmd.get("punch", True), **quiet))
            with trio.fail_after(cmd.get("timeout_s", 20)):
                while not host.nat.reservations:
                    await trio.sleep(0.05)
            circuit = next(a for a in host.addrs if "/p2p-circuit" in a)
            return {"peer": host.peer_id, "circuit": circuit}
        if op == "dial":
            host = await self.start_host(nursery, HostConfig(listen=listen, bootstrap=[cmd["relay"]], relay_serve="never",
                                                             relay_reservations=0, hole_punch=cmd.get("punch", True),
                                                             **quiet))
            target = cmd["target"]
            peer = target.rsplit("/p2p/", 1)[1]
            t0 = time.monotonic()
            await host.connect(target)
            relayed_ms = (time.monotonic() - t0) * 1000
            direct_ms = None
            with trio.move_on_after(cmd.get("wait_s", 10)):
                while not host.nat.has_direct(peer):
                    await trio.sleep(0.01)
                direct_ms = (time.monotonic() - t0) * 1000
            if direct_ms is not None:
                await host.rpc.forget(peer)
            rtts = [await host.ping(peer) for _ in range(cmd.get("pings", 5))]
            via = [a for a in host.connection_addrs(peer)]
            direct = [a for a in via if "/p2p-circuit" not in a]
            stream = await host.open_stream(peer, "/swarmlm/echo/1")
            used = [str(a) for a in stream.muxed_conn.get_transport_addresses()] if hasattr(stream, "muxed_conn") else []
            await stream.close()
            return {"relayed_ms": round(relayed_ms, 1), "direct_ms": None if direct_ms is None else round(direct_ms, 1),
                    "direct": direct, "conns": via, "rtt_ms": round(statistics.median(rtts), 3), "via": used}
        if op == "close":
            for scope in self.scopes:
                scope.cancel()
            self.scopes.clear()
            await trio.sleep(0.1)
            return {"closed": True}
        raise ValueError(f"unknown op {op!r}")

    async def main(self) -> None:
        async with trio.open_nursery() as nursery:
            stdin = trio.wrap_file(sys.stdin)
            while True:
                line = await stdin.readline()
                if not line:
                    break
                try:
                    _emit(ok=True, **await self.handle(nursery, json.loads(line)))
                except Exception as exc:  # report and keep serving the next trial
                    _emit(ok=False, error=f"{type(exc).__name__}: {exc}")
            nursery.cancel_scope.cancel()


class Lab:
    """Agents in the namespaces of a ``Topology``; the relay host runs in ``pub``."""

    def __init__(self, topo: Any, sites: Sequence[str] = ("pub", "a", "b", "c"), relay_port: int = 4001) -> None:
        self.topo = topo
        self.agents: dict[str, subprocess.Popen] = {}
        for s in sites:
            self.agents[s] = topo.python_in(s, "swarmlm.testnet.natlab", "agent", stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, text=True,
                                            stderr=open(os.environ["NATLAB_DEBUG"] + f".{s}", "w")
                                            if os.environ.get("NATLAB_DEBUG") else subprocess.DEVNULL)
        started = self.call("pub", op="relay", port=relay_port)
        if not started.get("ok"):
            self.close()
            raise RuntimeError(f"natlab relay did not start: {started}")
        self.relay = started["addr"]
        self.port = 4100

    def call(self, site: str, **cmd: Any) -> dict:
        cmd.setdefault("ip", self.topo.sites[site].host_ip)
        proc = self.agents[site]
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(cmd) + "\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"natlab agent in {site} exited")
        return json.loads(line)

    def trial(self, x: str, y: str, punch: bool = True, wait_s: float = 10.0, pings: int = 5,
              **opts: Any) -> dict:
        """``y`` listens (reserved on the relay), ``x`` dials it; fresh hosts and ports each time."""
        self.port += 1
        try:
            lst = self.call(y, op="listen", port=self.port, relay=self.relay, punch=punch, **opts)
            if not lst.get("ok"):
                return {"ok": False, "error": "listen: " + lst.get("error", "")}
            res = self.call(x, op="dial", port=self.port, relay=self.relay, target=lst["circuit"], punch=punch,
                            wait_s=wait_s, pings=pings, **opts)
            res["port"] = self.port
            return res
        finally:
            self.call(x, op="close")
            self.call(y, op="close")

    def close(self) -> None:
        for proc in self.agents.values():
            if proc.stdin:
                proc.stdin.close()
        for proc in self.agents.values():
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m swarmlm.testnet.natlab", description=__doc__.split("\n")[0])
    ap.add_argument("role", choices=["agent"])
    ap.parse_args(argv)
    if os.environ.get("NATLAB_DEBUG"):  # DCUtR and our NAT logs on stderr
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
        for name in ("libp2p.relay.circuit_v2.dcutr", "swarmlm.nat"):
            logger = logging.getLogger(name)
            logger.setLevel(logging.DEBUG)
            logger.disabled = False
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
            logger.addHandler(handler)
            logger.propagate = False
    trio.run(Agent().main)
    return 0


if __name__ == "__main__":
    sys.exit(main())
