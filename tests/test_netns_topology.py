"""The netns simulated internet: naming, rules text, build/teardown, stale cleanup (netns tests need root)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from swarmlm.testnet import netns
from swarmlm.testnet.netns import Topology, _router_rules, list_namespaces, unavailable_reason

from helpers import require_netns




def test_names_are_per_run_and_owned() -> None:
    t1, t2 = Topology(), Topology()
    assert set(t1.namespaces).isdisjoint(t2.namespaces)
    assert all(ns.startswith(f"slm-{os.getpid()}-") for ns in t1.namespaces)
    assert len(t1.namespaces) == 8  # inet, pub, a/b/c and their routers
    assert Topology(detached=True).run_id.startswith("0-")
    assert t1.exec_prefix("a") == ["ip", "netns", "exec", t1.sites["a"].ns]
    assert t1.ns("rc") == t1.sites["c"].router_ns


def test_router_rules() -> None:
    cone, sym = _router_rules(False), _router_rules(True)
    assert "MASQUERADE\n" in cone and "--random-fully" not in cone
    assert "MASQUERADE --random-fully" in sym
    for rules in (cone, sym):  # unsolicited WAN input is dropped, replies pass
        assert ":INPUT DROP" in rules and ":FORWARD DROP" in rules
        assert "--ctstate ESTABLISHED,RELATED -j ACCEPT" in rules
    assert ":INPUT ACCEPT" in _router_rules(False, filter_wan=False)


def test_unavailable_without_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    reason = unavailable_reason()
    assert reason is not None and "root" in reason


@pytest.mark.netns
def test_build_check_and_teardown() -> None:
    require_netns()
    with Topology() as topo:
        assert set(topo.namespaces) <= set(list_namespaces())
        result = netns.check(topo)
        assert result["ok"], result
        # behind the cone NAT the source port survives; behind the symmetric one it is random
        assert result["a->pub observed"].startswith("100.64.0.11:")
        assert result["c->pub observed"].startswith("100.64.0.13:")
        # private addresses of other homes are not routed anywhere
        probe = topo.check_in("a", [sys.executable, "-c", netns._PROBE, topo.sites["b"].host_ip, "9999"])
        assert probe.stdout.strip() != "ping"
    assert set(topo.namespaces).isdisjoint(list_namespaces())


@pytest.mark.netns
def test_teardown_after_error_stops_processes() -> None:
    require_netns()
    topo = Topology()
    with pytest.raises(RuntimeError):
        with topo:
            proc = topo.run_in("pub", ["sleep", "60"])
            stray = subprocess.Popen(topo.exec_prefix("b") + ["sleep", "60"])  # not tracked by run_in
            raise RuntimeError("boom")
    assert proc.poll() is not None
    assert stray.wait(timeout=5) is not None  # killed because it ran inside one of our namespaces
    assert set(topo.namespaces).isdisjoint(list_namespaces())


@pytest.mark.netns
def test_cleanup_removes_crashed_runs_only() -> None:
    require_netns()
    dead_pid = int(open("/proc/sys/kernel/pid_max").read()) + 1  # no process can have it
    crashed = Topology(run_id=f"{dead_pid}-dead")
    subprocess.run(["ip", "netns", "add", crashed.inet], check=True)
    try:
        with Topology() as live:  # building a run first sweeps crashed ones
            assert crashed.inet not in list_namespaces()
            subprocess.run(["ip", "netns", "add", crashed.inet], check=True)
            assert netns.cleanup_stale() == [crashed.inet]  # live runs are left alone
            assert set(live.namespaces) <= set(list_namespaces())
    finally:
        netns.delete_namespaces([n for n in list_namespaces() if n == crashed.inet])
