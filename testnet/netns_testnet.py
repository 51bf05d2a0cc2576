"""Node processes inside the simulated internet (``testnet/netns.py``): ``swarmlm testnet up --netns``.

The bootstrap node runs on the public host ``pub`` (it becomes the relay once its dial-back verdict is
public), the others in the homes ``a``, ``b`` (cone NAT) and ``c`` (symmetric NAT), each started with
the one ``node_command`` every launcher uses, listening on its own interface address, port 4001.
``NetnsTestnet`` is the Python API (tests, benches); ``netns_up`` the CLI entry. ``status(site)`` and
``ask(site, ...)`` run ``swarmlm status|ask --json`` inside a namespace, as a user at that site would.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from swarmlm.testnet import description as desc
from swarmlm.testnet.local import STATE_FILE, NodeProc, TestnetError, _wait_ready, down, node_command
from swarmlm.testnet.netns import NetnsError, delete_namespaces, list_namespaces, start, unavailable_reason

PORT = 4001
SITES = ("pub", "a", "b", "c")


class NetnsTestnet:
    """Nodes in the sites of a running ``Topology`` (the topology owns the processes: ``topo.down()``
    stops them)."""

    def __init__(self, topo: Any, base_dir: str | os.PathLike, sites: Sequence[str] = SITES,
                 extra_args: Sequence[str] = (), per_site_args: dict[str, list[str]] | None = None,
                 env: dict[str, str] | None = None) -> None:
        if sites[0] != "pub":
            raise TestnetError("the first site must be 'pub' (the public bootstrap)")
        self.topo = topo
        self.base = Path(base_dir).resolve()
        self.sites = list(sites)
        self.extra = list(extra_args)
        self.per_site = per_site_args or {}
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        self.nodes: dict[str, NodeProc] = {}
        self.bootstrap = ""

    def _start(self, i: int, site: str) -> NodeProc:
        d = self.base / site
        d.mkdir(parents=True, exist_ok=True)
        node = NodeProc(i, d)
        node.ready_file.unlink(missing_ok=True)
        listen = f"/ip4/{self.topo.sites[site].host_ip}/tcp/{PORT}"
        cmd = node_command(str(d), str(node.ready_file), listen=listen,
                           bootstrap=[self.bootstrap] if self.bootstrap else [],
                           extra=self.extra + self.per_site.get(site, []))
        with open(node.log_file, "ab") as log:
            node.proc = self.topo.run_in(site, cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=self.env, start_new_session=True)
        node.pid = node.proc.pid
        self.nodes[site] = node
        return node

    def up(self, timeout: float = 120.0) -> "NetnsTestnet":
        self.base.mkdir(parents=True, exist_ok=True)
        pub = self._start(0, "pub")
        pub.ready = _wait_ready(pub, timeout)
        self.bootstrap = f"/ip4/{self.topo.sites['pub'].public_ip}/tcp/{PORT}/p2p/{pub.ready['peer_id']}"
        for i, site in enumerate(self.sites[1:], 1):
            self._start(i, site)
        for site in self.sites[1:]:
            self.nodes[site].ready = _wait_ready(self.nodes[site], timeout)
        self._save()
        return self

    def _save(self) -> None:
        state = {"nodes": [{"index": n.index, "pid": n.pid, "data_dir": str(n.data_dir), "site": s}
                           for s, n in self.nodes.items()],
                 "netns": {"run_id": self.topo.run_id, "namespaces": self.topo.namespaces},
                 "bootstrap": self.bootstrap}
        (self.base / STATE_FILE).write_text(json.dumps(state))

    def peer_id(self, site: str) -> str:
        return self.nodes[site].ready["peer_id"]

    def cli(self, site: str, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        """Run ``swarmlm ARGS`` inside ``site``'s namespace (text, output captured)."""
        return self.topo.check_in(site, [sys.executable, "-m", "swarmlm.node.front.cli", *args], timeout=timeout,
                                  env=self.env)

    def status(self, site: str = "pub") -> dict[str, dict]:
        """``swarmlm status --json`` from ``site``: rows by peer id."""
        r = self.cli(site, "status", "--bootstrap", self.bootstrap, "--json")
        if r.returncode != 0:
            raise TestnetError(f"status failed in {site}: {r.stderr[-1500:]}")
        return {row["peer_id"]: row for row in json.loads(r.stdout)["peers"]}

    def reach(self, site: str = "pub") -> dict[str, str]:
        """Each node's published reachability verdict by site, as ``swarmlm status`` shows it."""
        rows = self.status(site)
        return {s: rows.get(self.peer_id(s), {}).get("reach", "?") for s in self.nodes}

    def wait_reach(self, want: dict[str, str], timeout: float = 90.0, site: str = "pub") -> dict[str, str]:
        deadline = time.monotonic() + timeout
        got: dict[str, str] = {}
        while time.monotonic() < deadline:
            got = self.reach(site)
            if all(got.get(s) == v for s, v in want.items()):
                return got
            time.sleep(2.0)
        return got

    def ask(self, site: str, prompt: str, *args: str, timeout: float = 300.0) -> dict:
        r = self.cli(site, "ask", "--bootstrap", self.bootstrap, "--json", *args, prompt, timeout=timeout)
        if r.returncode != 0:
            raise TestnetError(f"ask failed in {site}: {r.stderr[-3000:]}")
        return json.loads(r.stdout.strip().splitlines()[-1])

    def log_tail(self, site: str, n: int = 4000) -> str:
        f = self.nodes[site].log_file
        return f.read_text(errors="replace")[-n:] if f.exists() else ""


def netns_up(ns: argparse.Namespace) -> int:
    """``swarmlm testnet up --netns``: build the topology (detached), start the nodes, print them, exit.
    ``netns_down(base_dir)`` stops them and removes the namespaces (``swarmlm testnet down`` stops the
    nodes; ``python -m swarmlm.testnet.netns down`` removes every detached topology)."""
    reason = unavailable_reason()
    if reason:
        raise NetnsError(f"testnet up --netns: {reason}")
    extra: list[str] = []
    if getattr(ns, "model", None):
        extra += ["--model", ns.model]
        from swarmlm.models.registry import resolve  # lazy: imports torch (~1 s); the CLI imports this module

        resolve(ns.model)
    if getattr(ns, "max_layers", None):
        extra += ["--max-layers", str(ns.max_layers)]
    topo = start(detached=True)
    try:
        net = NetnsTestnet(topo, ns.base_dir, extra_args=extra).up(timeout=ns.timeout)
    except BaseException:
        topo.down()
        raise
    topo._procs.clear()  # the nodes outlive this command (stopped by `testnet down`)
    out = [{"site": s, "ns": topo.sites[s].ns, "nat": topo.sites[s].nat, "pid": p.pid, **p.ready}
           for s, p in net.nodes.items()]
    if ns.json:
        print(json.dumps({"base_dir": str(net.base), "bootstrap": net.bootstrap, "run_id": topo.run_id, "nodes": out}))
    else:
        for row in out:
            print(f"{row['site']:<4} {row['nat']:<10} pid {row['pid']:<7} ns {row['ns']}")
        print(f"bootstrap: {net.bootstrap}")
        print(f"stop: python -c 'from swarmlm.testnet.netns_testnet import netns_down; netns_down(\"{ns.base_dir}\")' "
              f"(or swarmlm testnet down, then python -m swarmlm.testnet.netns down). Run commands at a site "
              f"with: ip netns exec {topo.sites['a'].ns} ...", file=sys.stderr)
    return 0


def netns_down(base_dir: str | os.PathLike) -> int:
    """Stop the nodes of a ``testnet up --netns`` in ``base_dir`` and delete exactly the namespaces it
    built (recorded in its testnet.json); returns how many node processes were running."""
    state_path = Path(base_dir) / STATE_FILE
    names = json.loads(state_path.read_text()).get("netns", {}).get("namespaces", []) if state_path.exists() else []
    n = down(base_dir)
    existing = set(list_namespaces())
    delete_namespaces([ns for ns in names if ns in existing])
    return n


def netns_demo_up(base_dir: str | os.PathLike, *, model: str | None = None, timeout: float = 300.0) -> dict[str, Any]:
    """The docker compose swarm (``testnet/description.py``'s ``DEMO``), started inside the netns
    internet from the very same description: its internet network on ``pub``, its NATed home network
    in home ``a``. ``model`` replaces the model of every node (e.g. ``builtin:tiny`` for a light run).
    Returns what ``testnet up --json`` prints; ``netns_down(base_dir)`` stops it."""
    swarm = desc.DEMO
    if model:  # same layout and flags, another model: whole-model nodes stay whole, auto caps scale
        from swarmlm.models.config import ModelConfig  # lazy: imports torch (~1 s); the CLI imports this module
        from swarmlm.models.registry import resolve  # lazy: as above

        n_layers = ModelConfig.from_dir(resolve(model)).num_hidden_layers
        scale = n_layers / desc.SMOLLM2_LAYERS
        swarm = dataclasses.replace(swarm, nodes=tuple(
            dataclasses.replace(n, model=model, layers=f"0:{n_layers}" if n.layers.startswith("0:") else n.layers,
                                max_layers=max(1, round(n.max_layers * scale)) if n.max_layers else 0)
            if n.model else n for n in swarm.nodes))
    base = Path(base_dir).resolve()
    base.mkdir(parents=True, exist_ok=True)
    topo = start(detached=True)
    started: list[dict[str, Any]] = []
    try:
        for launch in desc.netns_launches(swarm, base):
            Path(launch.data_dir).mkdir(parents=True, exist_ok=True)
            spec = swarm.node(launch.name)
            if spec.dev_identity:
                desc.write_dev_identity(spec.name, launch.data_dir)
            Path(launch.ready_file).unlink(missing_ok=True)
            node = NodeProc(len(started), Path(launch.data_dir))
            with open(node.log_file, "ab") as log:
                node.proc = topo.run_in(topo.sites[launch.site].ns, launch.argv, stdout=log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
            node.pid = node.proc.pid
            node.ready = _wait_ready(node, timeout)
            started.append({"name": launch.name, "site": launch.site, "pid": node.pid, "data_dir": str(node.data_dir),
                            **node.ready})
            (base / STATE_FILE).write_text(json.dumps({
                "nodes": [{"index": i, "pid": s["pid"], "data_dir": s["data_dir"]} for i, s in enumerate(started)],
                "netns": {"run_id": topo.run_id, "namespaces": topo.namespaces}}))
    except BaseException:
        topo.down()
        raise
    topo._procs.clear()  # the nodes outlive this command (stopped by `testnet down`)
    return {"base_dir": str(base), "run_id": topo.run_id, "nodes": started}
