"""The demo swarm, described once: who runs, on which network, with which flags.

Two launchers are generated from ``DEMO`` so they cannot drift apart:

- ``testnet/compose.py`` writes ``testnet/docker-compose.yml`` (containers on two docker networks, a NAT
  router container between them);
- ``netns_launches()`` gives the same nodes as command lines for the simulated internet in network
  namespaces (``testnet/netns.py``): the "internet" network maps to its public site, the NATed "home"
  network to a home site behind a cone NAT.

Every node is started with ``testnet.local.node_command`` (the one command line all launchers use); the
per-node flags come from ``node_flags``.

The bootstrap's peer id must be known before it starts (it is part of every other node's bootstrap
address). It uses a *development identity*: a key derived from a public seed (``dev_identity``), written
into its data dir before its first start (``python -m swarmlm.testnet.description identity NAME DIR``;
the docker image does it at build time). Anyone can derive that key: never use it outside a testnet.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from dataclasses import dataclass, field
from pathlib import Path

from swarmlm.crypto.identity import KEY_FILE_NAME, Identity, write_private_file
from swarmlm.testnet.local import node_command
from swarmlm.testnet.netns import PUBLIC_IP, Topology

P2P_PORT = 4001
HTTP_PORT = 8080
DATA_ROOT = "/srv/swarmlm"  # data dirs inside the containers: DATA_ROOT/<node name>
DEV_SEED_DOMAIN = b"swarmlm-dev-identity/v1/"  # public: dev identities are for testnets only
SMOLLM2 = "builtin:smollm2-135m"
SMOLLM2_LAYERS = 30


@dataclass(frozen=True)
class Network:
    name: str
    subnet: str
    nat: bool = False  # behind the NAT router (a docker "internal" network: no other way out)
    netns_site: str = "pub"  # where its nodes run in the netns internet


@dataclass(frozen=True)
class NodeSpec:
    name: str
    network: str
    ip: str
    model: str = ""
    layers: str = "auto"
    max_layers: int = 0
    host_http_port: int | None = None  # publish the health page / API on this host port
    dev_identity: bool = False  # the bootstrap: a peer id known in advance
    after: tuple[str, ...] = ()  # start once these are serving (auto placement sees what they host)


@dataclass(frozen=True)
class Router:
    name: str
    wan_network: str
    wan_ip: str
    lan_network: str
    lan_ip: str


@dataclass(frozen=True)
class Swarm:
    networks: tuple[Network, ...]
    nodes: tuple[NodeSpec, ...]
    router: Router
    bootstrap: str  # name of the node everyone joins through
    client_network: str = "internet"
    client_prompt: str = "What is the capital of France?"
    extra_flags: tuple[str, ...] = field(default=("--http", f"0.0.0.0:{HTTP_PORT}"))

    def node(self, name: str) -> NodeSpec:
        return next(n for n in self.nodes if n.name == name)

    def network(self, name: str) -> Network:
        return next(n for n in self.networks if n.name == name)


DEMO = Swarm(
    networks=(Network("internet", "172.30.0.0/24"),
              Network("home", "172.31.0.0/24", nat=True, netns_site="a")),
    nodes=(
        NodeSpec("bootstrap", "internet", "172.30.0.10", host_http_port=8080, dev_identity=True),
        NodeSpec("node1", "internet", "172.30.0.11", SMOLLM2, "auto", 10, 8081, after=("bootstrap",)),
        NodeSpec("node2", "internet", "172.30.0.12", SMOLLM2, "auto", 10, 8082, after=("node1",)),
        NodeSpec("node3", "internet", "172.30.0.13", SMOLLM2, "auto", 10, 8083, after=("node2",)),
        NodeSpec("whole", "internet", "172.30.0.14", SMOLLM2, f"0:{SMOLLM2_LAYERS}", 0, 8084, after=("node3",)),
        NodeSpec("home", "home", "172.31.0.10", SMOLLM2, "auto", 10, None, after=("node3", "router")),
    ),
    router=Router("router", "internet", "172.30.0.2", "home", "172.31.0.2"),
    bootstrap="bootstrap",
)


# -- identities and addresses ---------------------------------------------------------------------

def dev_identity(name: str) -> Identity:
    """The development identity of node ``name``: derived from a public seed, for testnets only."""
    return Identity.from_seed(hashlib.sha256(DEV_SEED_DOMAIN + name.encode()).digest())


def write_dev_identity(name: str, data_dir: str | Path) -> Identity:
    """Put ``name``'s dev identity in ``data_dir`` (mode 0600) unless an identity is already there."""
    ident = dev_identity(name)
    path = Path(data_dir) / KEY_FILE_NAME
    if not path.exists():
        write_private_file(path, ident.seed)
    elif path.read_bytes() != ident.seed:
        raise SystemExit(f"{path} holds another identity; remove it to use the dev identity of {name}")
    return ident


def bootstrap_addr(swarm: Swarm, ip: str | None = None, port: int = P2P_PORT) -> str:
    boot = swarm.node(swarm.bootstrap)
    return f"/ip4/{ip or boot.ip}/tcp/{port}/p2p/{dev_identity(boot.name).peer_id}"


def node_flags(swarm: Swarm, spec: NodeSpec) -> list[str]:
    """What a node serves: the flags after the common part of ``node_command`` (same in every launcher)."""
    flags = list(swarm.extra_flags)
    if spec.model:
        flags += ["--model", spec.model, "--layers", spec.layers]
        if spec.max_layers:
            flags += ["--max-layers", str(spec.max_layers)]
    return flags


def data_dir(spec: NodeSpec, root: str = DATA_ROOT) -> str:
    return f"{root}/{spec.name}"


def ready_file(spec: NodeSpec, root: str = DATA_ROOT) -> str:
    return f"{data_dir(spec, root)}/ready.json"


def start_order(swarm: Swarm) -> list[NodeSpec]:
    """Nodes in an order that respects ``after`` (the router is not a node)."""
    done: list[str] = [swarm.router.name]
    out: list[NodeSpec] = []
    pending = list(swarm.nodes)
    while pending:
        ready = [n for n in pending if all(a in done for a in n.after)]
        if not ready:
            raise ValueError(f"cycle in 'after': {[n.name for n in pending]}")
        for n in ready:
            out.append(n)
            done.append(n.name)
            pending.remove(n)
    return out


# -- the netns launcher's view -----------------------------------------------------------------------

@dataclass(frozen=True)
class Launch:
    name: str
    site: str  # netns site ("pub", "a", ...)
    argv: list[str]
    data_dir: str
    ready_file: str


def netns_launches(swarm: Swarm, base_dir: str | Path, python: str | None = None) -> list[Launch]:
    """The same nodes as command lines for ``testnet.netns.Topology.run_in(site, argv)``, in start order.

    Nodes sharing a site share its address, so each gets its own P2P and HTTP port there; call
    ``write_dev_identity`` for nodes with ``dev_identity`` before starting them.
    """
    site_ip = {name: s.host_ip for name, s in Topology(run_id="plan").sites.items()}  # no side effects
    order = start_order(swarm)
    ports = {n.name: P2P_PORT + i for i, n in enumerate(order)}
    boot = swarm.node(swarm.bootstrap)
    out = []
    for i, spec in enumerate(order):
        site = swarm.network(spec.network).netns_site
        flags = [f if f != f"0.0.0.0:{HTTP_PORT}" else f"0.0.0.0:{HTTP_PORT + i}" for f in node_flags(swarm, spec)]
        flags += ["--announce", f"/ip4/{site_ip[site]}/tcp/{ports[spec.name]}"]
        root = str(Path(base_dir).resolve())
        argv = node_command(data_dir(spec, root), ready_file(spec, root), listen=f"/ip4/0.0.0.0/tcp/{ports[spec.name]}",
                            bootstrap=[] if spec.name == boot.name else
                            [bootstrap_addr(swarm, PUBLIC_IP, ports[boot.name])], extra=flags, python=python)
        out.append(Launch(spec.name, site, argv, data_dir(spec, root), ready_file(spec, root)))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m swarmlm.testnet.description")
    sub = p.add_subparsers(dest="cmd", required=True)
    ident = sub.add_parser("identity", help="write a node's dev identity into its data dir, print its peer id")
    ident.add_argument("name")
    ident.add_argument("data_dir")
    sub.add_parser("bootstrap", help="print the demo swarm's bootstrap address (docker networks)")
    ns = p.parse_args(argv)
    if ns.cmd == "identity":
        print(write_dev_identity(ns.name, ns.data_dir).peer_id)
    else:
        print(bootstrap_addr(DEMO))
    return 0


if __name__ == "__main__":
    sys.exit(main())
