"""A local testnet: N node processes on 127.0.0.1, the first one the bootstrap.

``LocalTestnet`` starts ``swarmlm node run`` processes (each in its own process group, logs in
``<base>/nodeK/node.log``), waits for their ready files, and records exactly what it started in
``<base>/testnet.json`` so ``down`` stops those processes and nothing else. The docker compose
file and the netns testnet start nodes with the same command line (``node_command``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from swarmlm.errors import SwarmError
from swarmlm.testnet.latency import forwarder_command, free_port

STATE_FILE = "testnet.json"


class TestnetError(SwarmError):
    pass


def node_command(data_dir: str, ready_file: str, listen: str = "/ip4/127.0.0.1/tcp/0",
                 bootstrap: list[str] | None = None, extra: list[str] | None = None,
                 python: str | None = None) -> list[str]:
    """The one command line every launcher (local, netns, docker) uses to start a node."""
    cmd = [python or sys.executable, "-m", "swarmlm.node.front.cli", "node", "run", "--data-dir", data_dir,
           "--listen", listen, "--ready-file", ready_file]
    for b in bootstrap or []:
        cmd += ["--bootstrap", b]
    return cmd + list(extra or [])


@dataclass
class NodeProc:
    index: int
    data_dir: Path
    proc: subprocess.Popen | None = None
    pid: int = 0
    ready: dict = field(default_factory=dict)
    forwarder_pid: int = 0  # the latency forwarder in front of its listen port (``rtt_ms``)

    @property
    def ready_file(self) -> Path:
        return self.data_dir / "ready.json"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "node.log"

    @property
    def addr(self) -> str:
        return self.ready["addrs"][0]


def _wait_ready(node: NodeProc, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node.proc is not None and node.proc.poll() is not None:
            lines = node.log_file.read_text().strip().splitlines() if node.log_file.exists() else []
            raise TestnetError(f"node {node.index} exited with status {node.proc.returncode}: "
                               f"{lines[-1] if lines else 'no output'} (log: {node.log_file})")
        if node.ready_file.exists():
            try:
                return json.loads(node.ready_file.read_text())
            except json.JSONDecodeError:
                pass
        time.sleep(0.05)
    raise TestnetError(f"node {node.index} not ready after {timeout:.0f} s (log: {node.log_file})")


class LocalTestnet:
    def __init__(self, n: int, base_dir: str | os.PathLike, extra_args: list[str] | None = None,
                 per_node_args: dict[int, list[str]] | None = None, env: dict[str, str] | None = None,
                 http: bool = False, sequential: bool = False, rtt_ms: float = 0.0,
                 bandwidth_mbps: float | None = None) -> None:
        if n < 1:
            raise TestnetError("a testnet needs at least one node")
        self.n = n
        self.base = Path(base_dir).resolve()
        self.extra = list(extra_args or [])
        self.per_node = per_node_args or {}
        self.env = env
        self.http = http
        self.sequential = sequential
        self.rtt_ms = float(rtt_ms)  # > 0: every node listens behind a forwarder adding rtt_ms / 2 each way
        self.bandwidth_mbps = bandwidth_mbps
        self.nodes: list[NodeProc] = []

    def _start(self, i: int, bootstrap: list[str]) -> NodeProc:
        d = self.base / f"node{i}"
        d.mkdir(parents=True, exist_ok=True)
        node = NodeProc(i, d)
        node.ready_file.unlink(missing_ok=True)
        extra = self.extra + self.per_node.get(i, [])
        if self.http:
            extra += ["--http", "127.0.0.1:0"]
        listen = "/ip4/127.0.0.1/tcp/0"
        env = dict(os.environ, **(self.env or {}), PYTHONUNBUFFERED="1")
        if self.rtt_ms > 0:  # the node announces the forwarder's port: every peer reaches it through the delay
            port, fport = free_port(), free_port()
            listen = f"/ip4/127.0.0.1/tcp/{port}"
            extra += ["--announce", f"/ip4/127.0.0.1/tcp/{fport}"]
            with open(d / "forwarder.log", "ab") as flog:
                fwd = subprocess.Popen(forwarder_command(fport, port, self.rtt_ms / 2, self.bandwidth_mbps),
                                       stdout=flog, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True, env=env)
            node.forwarder_pid = fwd.pid
        cmd = node_command(str(d), str(node.ready_file), listen=listen, bootstrap=bootstrap, extra=extra)
        with open(node.log_file, "ab") as log:
            node.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, env=env)
        node.pid = node.proc.pid
        return node

    def up(self, timeout: float = 120.0) -> "LocalTestnet":
        self.base.mkdir(parents=True, exist_ok=True)
        if (self.base / STATE_FILE).exists():
            down(self.base)
        try:
            first = self._start(0, [])
            self.nodes = [first]
            self._save()
            first.ready = _wait_ready(first, timeout)
            for i in range(1, self.n):
                self.nodes.append(self._start(i, [first.addr]))
                self._save()
                if self.sequential:  # auto placement: each node sees what the earlier ones host
                    self.nodes[-1].ready = _wait_ready(self.nodes[-1], timeout)
            for node in self.nodes[1:]:
                if not node.ready:
                    node.ready = _wait_ready(node, timeout)
        except BaseException:
            self.down()
            raise
        return self

    def _save(self) -> None:
        state = {"nodes": [{"index": n.index, "pid": n.pid, "data_dir": str(n.data_dir)} for n in self.nodes],
                 "forwarders": [n.forwarder_pid for n in self.nodes if n.forwarder_pid]}
        (self.base / STATE_FILE).write_text(json.dumps(state))

    def start_node(self, i: int, timeout: float = 120.0) -> NodeProc:
        """(Re)start node ``i`` (after a kill) with the same data dir: it rejoins via node 0."""
        if self.nodes[i].forwarder_pid:
            _stop_forwarder(self.nodes[i].forwarder_pid)
        node = self._start(i, [self.nodes[0].addr] if i else [])
        self.nodes[i] = node
        self._save()
        node.ready = _wait_ready(node, timeout)
        return node

    def kill(self, i: int, sig: int = signal.SIGKILL) -> None:
        node = self.nodes[i]
        if node.proc and node.proc.poll() is None:
            os.killpg(node.proc.pid, sig)
            node.proc.wait(10)

    def down(self) -> None:
        down(self.base)

    def __enter__(self) -> "LocalTestnet":
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()


def _is_ours(pid: int, data_dir: str) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return data_dir.encode() in cmdline and b"swarmlm.node.front.cli" in cmdline


def down(base_dir: str | os.PathLike, timeout: float = 10.0) -> int:
    """Stop exactly the processes a testnet in ``base_dir`` started; returns how many were running."""
    state_path = Path(base_dir) / STATE_FILE
    if not state_path.exists():
        return 0
    nodes = json.loads(state_path.read_text()).get("nodes", [])
    alive = [n for n in nodes if _is_ours(n["pid"], n["data_dir"])]
    for n in alive:
        try:
            os.killpg(n["pid"], signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    for n in alive:
        while _is_ours(n["pid"], n["data_dir"]) and time.monotonic() < deadline:
            try:
                os.waitpid(n["pid"], os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.05)
        if _is_ours(n["pid"], n["data_dir"]):
            try:
                os.killpg(n["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass
    for n in alive:  # SIGKILL is asynchronous: return once the processes are really gone
        gone_by = time.monotonic() + 5.0
        while _is_ours(n["pid"], n["data_dir"]) and time.monotonic() < gone_by:
            try:
                os.waitpid(n["pid"], os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.05)
    for pid in json.loads(state_path.read_text()).get("forwarders", []):
        _stop_forwarder(int(pid))
    state_path.unlink(missing_ok=True)
    return len(alive)


def _stop_forwarder(pid: int) -> None:
    try:
        if b"swarmlm.testnet.latency" not in Path(f"/proc/{pid}/cmdline").read_bytes():
            return  # not ours (the pid was reused)
        os.killpg(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (OSError, ChildProcessError):
        pass
