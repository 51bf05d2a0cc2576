"""A simulated internet in Linux network namespaces: a public host and three home networks behind NATs.

``Topology`` builds, as root, with ``ip netns``, veth pairs, one bridge and iptables::

    [inet] bridge br0, 100.64.0.0/24 ("the internet", no NAT, no filter)
      |-- pub  100.64.0.10           public bootstrap / relay host
      |-- ra   100.64.0.11 | 10.1.0.1 -- a 10.1.0.2   cone NAT      (MASQUERADE, WAN input dropped)
      |-- rb   100.64.0.12 | 10.2.0.1 -- b 10.2.0.2   cone NAT
      `-- rc   100.64.0.13 | 10.3.0.1 -- c 10.3.0.2   symmetric NAT (MASQUERADE --random-fully)

Namespace names are per run (``slm-<pid>-<hex>-<role>``) so parallel runs never collide; leaving the
context manager (even after an error) kills what runs inside and deletes every namespace, which takes
the veths, routes and iptables rules with it. ``cleanup_stale()`` removes namespaces of crashed runs.
All traffic stays inside these namespaces. See docs/NAT.md for why the rules look like this.

CLI: ``python -m swarmlm.testnet.netns up|down|check`` (root).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from swarmlm.errors import SwarmError

PREFIX = "slm"
INTERNET = "100.64.0.0/24"
PUBLIC_IP = "100.64.0.10"


class NetnsError(SwarmError):
    """The simulated internet could not be built (not root, tools missing, a command failed)."""


@dataclass(frozen=True)
class Site:
    """One place a node can run: its namespace, the address it binds and the address the internet sees."""

    name: str  # "pub", "a", "b", "c"
    ns: str  # namespace the node runs in
    host_ip: str  # address of the node's own interface
    public_ip: str  # source address other hosts observe (the router's WAN address behind NAT)
    nat: str  # "none", "cone" or "symmetric"
    router_ns: str | None = None


# name, nat kind, LAN subnet index, WAN address
_HOMES = (("a", "cone", 1, "100.64.0.11"), ("b", "cone", 2, "100.64.0.12"), ("c", "symmetric", 3, "100.64.0.13"))


def unavailable_reason() -> str | None:
    """Why the simulated internet cannot be built here, or None when it can (root, ip, iptables)."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "building network namespaces needs root (run the netns tests as root, as CI does)"
    for tool in ("ip", "iptables-restore"):
        if shutil.which(tool) is None:
            return f"`{tool}` is missing (apt-get install -y iproute2 iptables)"
    return None


def _run(argv: Sequence[str], *, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(argv), input=stdin, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise NetnsError(f"`{' '.join(argv)}` failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def list_namespaces(prefix: str = PREFIX) -> list[str]:
    """Names of existing namespaces created by this module (any run)."""
    out = _run(["ip", "netns", "list"], check=False).stdout
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return [n for n in names if n.startswith(prefix + "-")]


def _owner_pid(ns: str) -> int | None:
    parts = ns.split("-")
    try:
        return int(parts[1])
    except (IndexError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_inside(ns: str) -> None:
    """Kill the processes still running inside one of our namespaces, by pid (TERM, then KILL)."""
    pids = [int(p) for p in _run(["ip", "netns", "pids", ns], check=False).stdout.split() if p.isdigit()]
    pids = [p for p in pids if p != os.getpid()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 1.0
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if _alive(p)]
            time.sleep(0.02)
        if not pids:
            return


def delete_namespaces(names: Sequence[str]) -> None:
    """Kill what runs inside and delete the namespaces (veths, routes, rules go with them)."""
    for ns in names:
        _kill_inside(ns)
    for ns in names:
        _run(["ip", "netns", "del", ns], check=False)


def cleanup_stale(prefix: str = PREFIX, *, detached: bool = False, everything: bool = False) -> list[str]:
    """Delete namespaces left by crashed runs (owner pid dead); also detached runs (owner 0) with
    ``detached``; every namespace with our prefix with ``everything``. Returns the names removed."""
    stale = []
    for ns in list_namespaces(prefix):
        pid = _owner_pid(ns)
        if everything or pid is None or (pid == 0 and detached) or (pid != 0 and not _alive(pid)):
            stale.append(ns)
    delete_namespaces(stale)
    return stale


def _router_rules(random_fully: bool, filter_wan: bool = True) -> str:
    """iptables-restore input for a home router: NAT out of wan0, drop unsolicited WAN input/forward.

    ``filter_wan=False`` leaves INPUT open (a bare MASQUERADE box); only for showing the conntrack clash.
    """
    masq = "-A POSTROUTING -o wan0 -j MASQUERADE" + (" --random-fully" if random_fully else "")
    nat = ["*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
           ":POSTROUTING ACCEPT [0:0]", masq, "COMMIT"]
    if not filter_wan:
        return "\n".join(nat + ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]",
                                ":OUTPUT ACCEPT [0:0]", "COMMIT", ""])
    return "\n".join(nat + [
        "*filter", ":INPUT DROP [0:0]", ":FORWARD DROP [0:0]", ":OUTPUT ACCEPT [0:0]",
        "-A INPUT -i lo -j ACCEPT",
        "-A INPUT -i lan0 -j ACCEPT",
        "-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
        "-A FORWARD -i lan0 -o wan0 -j ACCEPT",
        "-A FORWARD -i wan0 -o lan0 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
        "COMMIT", "",
    ])


class Topology:
    """The simulated internet for one run; use as ``with Topology() as topo: ...``.

    ``topo.sites`` maps "pub", "a", "b", "c" to ``Site``; ``run_in(ns, argv)`` starts a process inside a
    namespace; every process started that way is stopped on exit.
    """

    def __init__(self, *, prefix: str = PREFIX, detached: bool = False, run_id: str | None = None,
                 filter_wan: bool = True, udp_timeouts: tuple[int, int] | None = None) -> None:
        owner = 0 if detached else os.getpid()
        self.run_id = run_id or f"{owner}-{secrets.token_hex(2)}"
        self.prefix = prefix
        self.inet = self._name("inet")
        self.sites: dict[str, Site] = {"pub": Site("pub", self._name("pub"), PUBLIC_IP, PUBLIC_IP, "none")}
        for name, nat, idx, wan in _HOMES:
            self.sites[name] = Site(name, self._name(name), f"10.{idx}.0.2", wan, nat, self._name("r" + name))
        self.filter_wan = filter_wan  # False only to reproduce the conntrack clash (docs/NAT.md)
        self.udp_timeouts = udp_timeouts  # routers' (unreplied, assured) UDP conntrack timeouts; kernel: (30, 120)
        self._procs: list[subprocess.Popen] = []
        self._up = False

    def _name(self, role: str) -> str:
        return f"{self.prefix}-{self.run_id}-{role}"

    @property
    def namespaces(self) -> list[str]:
        """Every namespace of this run: hosts first, then routers, then the internet bridge."""
        hosts = [s.ns for s in self.sites.values()]
        routers = [s.router_ns for s in self.sites.values() if s.router_ns]
        return hosts + routers + [self.inet]

    # -- building ------------------------------------------------------------------------------------
    def up(self) -> "Topology":
        reason = unavailable_reason()
        if reason:
            raise NetnsError(reason)
        cleanup_stale(self.prefix)
        self._up = True
        try:
            self._build()
        except BaseException:
            self.down()
            raise
        return self

    def _ip(self, ns: str, *args: str) -> None:
        _run(["ip", "-n", ns, *args])

    def _sysctl(self, ns: str, key: str, value: str) -> None:
        path = "/proc/sys/" + key.replace(".", "/")
        _run(["ip", "netns", "exec", ns, "sh", "-c", f"echo {value} > {path}"])

    def _build(self) -> None:
        for ns in self.namespaces:
            _run(["ip", "netns", "add", ns])
            self._ip(ns, "link", "set", "lo", "up")
        self._ip(self.inet, "link", "add", "br0", "type", "bridge")
        self._ip(self.inet, "link", "set", "br0", "up")
        pub = self.sites["pub"]
        self._wire(self.inet, "v-pub", pub.ns, "eth0")
        self._ip(pub.ns, "addr", "add", f"{pub.host_ip}/24", "dev", "eth0")
        for site in self.sites.values():
            if site.router_ns is None:
                continue
            r, lan = site.router_ns, site.host_ip.rsplit(".", 1)[0]
            self._wire(self.inet, f"v-r{site.name}", r, "wan0")
            self._ip(r, "addr", "add", f"{site.public_ip}/24", "dev", "wan0")
            self._wire(r, "lan0", site.ns, "eth0", bridge=False)
            self._ip(r, "addr", "add", f"{lan}.1/24", "dev", "lan0")
            self._ip(site.ns, "addr", "add", f"{site.host_ip}/24", "dev", "eth0")
            self._ip(site.ns, "route", "add", "default", "via", f"{lan}.1")
            self._sysctl(r, "net.ipv4.ip_forward", "1")
            if self.udp_timeouts:  # shortened only to test keep-alives quickly
                self._sysctl(r, "net.netfilter.nf_conntrack_udp_timeout", str(self.udp_timeouts[0]))
                self._sysctl(r, "net.netfilter.nf_conntrack_udp_timeout_stream", str(self.udp_timeouts[1]))
            _run(["ip", "netns", "exec", r, "iptables-restore"], stdin=_router_rules(site.nat == "symmetric", self.filter_wan))

    def _wire(self, ns_a: str, if_a: str, ns_b: str, if_b: str, *, bridge: bool = True) -> None:
        """A veth pair with one end ``if_a`` in ``ns_a`` (on br0 when bridge) and ``if_b`` in ``ns_b``."""
        self._ip(ns_a, "link", "add", if_a, "type", "veth", "peer", "name", if_b, "netns", ns_b)
        if bridge:
            self._ip(ns_a, "link", "set", if_a, "master", "br0")
        self._ip(ns_a, "link", "set", if_a, "up")
        self._ip(ns_b, "link", "set", if_b, "up")

    # -- tearing down --------------------------------------------------------------------------------
    def down(self) -> None:
        """Stop our processes and delete every namespace of this run (safe to call twice)."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()
        if self._up:
            existing = set(list_namespaces(self.prefix))
            delete_namespaces([ns for ns in self.namespaces if ns in existing])
            self._up = False

    def __enter__(self) -> "Topology":
        return self.up()

    def __exit__(self, *exc: Any) -> None:
        self.down()

    # -- running things inside -----------------------------------------------------------------------
    def ns(self, site: str) -> str:
        """The namespace of a site ("pub", "a", "b", "c") or of a router ("ra", "rb", "rc") or "inet"."""
        if site in self.sites:
            return self.sites[site].ns
        if site == "inet":
            return self.inet
        if site.startswith("r") and site[1:] in self.sites and self.sites[site[1:]].router_ns:
            return self.sites[site[1:]].router_ns  # type: ignore[return-value]
        raise KeyError(site)

    def exec_prefix(self, ns: str) -> list[str]:
        """argv prefix that runs a command inside namespace ``ns`` (a site name or a namespace name)."""
        return ["ip", "netns", "exec", self._resolve(ns)]

    def _resolve(self, ns: str) -> str:
        return ns if ns in self.namespaces else self.ns(ns)

    def run_in(self, ns: str, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen:
        """Start ``argv`` inside ``ns``; the process is stopped (TERM, then KILL) when the topology goes down."""
        proc = subprocess.Popen(self.exec_prefix(ns) + list(argv), **popen_kwargs)
        self._procs.append(proc)
        return proc

    def check_in(self, ns: str, argv: Sequence[str], timeout: float = 30, **kw: Any) -> subprocess.CompletedProcess:
        """Run ``argv`` inside ``ns`` to completion and return its result (text, output captured)."""
        return subprocess.run(self.exec_prefix(ns) + list(argv), capture_output=True, text=True,
                              timeout=timeout, **kw)

    def python_in(self, ns: str, module: str, *args: str, **popen_kwargs: Any) -> subprocess.Popen:
        """Start ``python -m module args...`` (this interpreter) inside ``ns``."""
        return self.run_in(ns, [sys.executable, "-m", module, *args], **popen_kwargs)

    def describe(self) -> dict:
        """JSON-ready description: run id, internet namespace, sites."""
        return {"run_id": self.run_id, "inet": self.inet, "internet": INTERNET,
                "sites": {k: asdict(v) for k, v in self.sites.items()}}


def start(*, detached: bool = False) -> Topology:
    """Build a topology and return it (call ``.down()`` when done); for ``swarmlm testnet up --netns``."""
    return Topology(detached=detached).up()


_PROBE = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
s.sendto(b"ping", (sys.argv[1], int(sys.argv[2])))
try:
    data, _ = s.recvfrom(100); print(data.decode())
except OSError:
    print("timeout")
"""
_ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", int(sys.argv[1])))
while True:
    data, addr = s.recvfrom(100); s.sendto(f"{addr[0]}:{addr[1]}".encode(), addr)
"""


def check(topo: Topology) -> dict:
    """Reachability probe: every home reaches the public host (and is seen at its public address);
    unsolicited traffic from the public host into a home is dropped."""
    result: dict[str, Any] = {}
    echo = topo.run_in("pub", [sys.executable, "-c", _ECHO, "9999"])
    time.sleep(0.3)
    for name in ("a", "b", "c"):
        out = topo.check_in(name, [sys.executable, "-c", _PROBE, PUBLIC_IP, "9999"]).stdout.strip()
        result[f"{name}->pub observed"] = out
    inbound = [sys.executable, "-c", _PROBE, topo.sites["a"].public_ip, "9999"]
    result["pub->ra unsolicited"] = topo.check_in("pub", inbound).stdout.strip()
    echo.terminate()
    ok = all(result[f"{n}->pub observed"].startswith(topo.sites[n].public_ip + ":") for n in "abc")
    result["ok"] = ok and result["pub->ra unsolicited"] == "timeout"
    return result


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m swarmlm.testnet.netns", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="build the topology, print it as JSON, keep it until Ctrl-C")
    up.add_argument("--detach", action="store_true", help="build, print and exit; remove later with `down`")
    down = sub.add_parser("down", help="remove namespaces of crashed or detached runs")
    down.add_argument("--all", action="store_true", help="remove every namespace with our prefix")
    sub.add_parser("check", help="build, probe reachability and NAT behaviour, tear down")
    ns = ap.parse_args(argv)
    reason = unavailable_reason()
    if reason:
        print(f"netns: {reason}", file=sys.stderr)
        return 2
    if ns.cmd == "down":
        print(json.dumps({"removed": cleanup_stale(detached=True, everything=ns.all)}))
        return 0
    if ns.cmd == "check":
        t0 = time.monotonic()
        with Topology() as topo:
            built = time.monotonic() - t0
            result = check(topo)
        result["setup_s"] = round(built, 3)
        print(json.dumps(result, indent=2))
        return 0 if result["ok"] else 1
    topo = start(detached=ns.detach)
    print(json.dumps(topo.describe(), indent=2), flush=True)
    if ns.detach:
        return 0
    def _interrupt(*_: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _interrupt)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        topo.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
