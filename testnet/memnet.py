"""An in-memory transport for ``StateSync`` engines (``swarmlm.net.state``): tests and ``swarmlm bench crdt``.

``MemNet`` holds engines by peer id, the links between them and one queue of messages in flight.
It delivers messages (in order, or shuffled to model reordering), can drop a fraction of them,
cut links to partition the swarm and restore them, and counts messages and bytes sent. Time is
a plain number (``now``) advanced by the caller; nothing here sleeps or touches sockets.
"""

from __future__ import annotations

import random
from collections import deque
from typing import Iterable

from swarmlm.crypto.identity import Identity
from swarmlm.net.state.schema import HostedRange, ModelInfo
from swarmlm.net.state.sync import Out, StateSync


class MemNet:
    def __init__(self, rng: random.Random, *, drop_rate: float = 0.0, reorder: bool = False) -> None:
        self.rng, self.drop_rate, self.reorder = rng, drop_rate, reorder
        self.nodes: dict[str, StateSync] = {}
        self.links: set[frozenset[str]] = set()
        self.cut: set[frozenset[str]] = set()  # links down because of a partition
        self.queue: deque[tuple[str, str, bytes]] = deque()
        self.now = 0.0
        self.bytes_sent = 0
        self.messages_sent = 0
        self.dropped = 0

    # -- topology
    def add(self, engine: StateSync) -> None:
        self.nodes[engine.peer_id] = engine

    def remove(self, peer: str) -> None:
        for link in [link for link in self.links if peer in link]:
            self.disconnect(*link)
        self.nodes.pop(peer, None)

    def connect(self, a: str, b: str) -> None:
        link = frozenset((a, b))
        if a == b or link in self.links:
            return
        self.links.add(link)
        self.send(a, self.nodes[a].on_connect(b))
        self.send(b, self.nodes[b].on_connect(a))

    def disconnect(self, a: str, b: str) -> None:
        self.links.discard(frozenset((a, b)))
        for x, y in ((a, b), (b, a)):
            if x in self.nodes:
                self.nodes[x].on_disconnect(y)

    def connect_random(self, degree: int) -> None:
        """A ring (so the graph is connected) plus random chords up to about ``degree`` links each."""
        ids = sorted(self.nodes)
        n = len(ids)
        for i in range(n):
            self.connect(ids[i], ids[(i + 1) % n])
        for a in ids:
            while sum(1 for link in self.links if a in link) < min(degree, n - 1):
                self.connect(a, self.rng.choice(ids))

    def partition(self, groups: Iterable[Iterable[str]]) -> None:
        side = {p: i for i, g in enumerate(groups) for p in g}
        for link in list(self.links):
            a, b = sorted(link)
            if side.get(a) != side.get(b):
                self.cut.add(link)
                self.disconnect(a, b)

    def heal(self) -> None:
        for link in list(self.cut):
            a, b = sorted(link)
            if a in self.nodes and b in self.nodes:
                self.connect(a, b)
        self.cut.clear()

    # -- traffic
    def send(self, src: str, out: Out) -> None:
        for dst, data in out:
            self.messages_sent += 1
            self.bytes_sent += len(data)
            if self.drop_rate and self.rng.random() < self.drop_rate:
                self.dropped += 1
                continue
            self.queue.append((src, dst, data))

    def step(self) -> bool:
        if not self.queue:
            return False
        if self.reorder and len(self.queue) > 1:
            self.queue.rotate(-self.rng.randrange(len(self.queue)))
        src, dst, data = self.queue.popleft()
        if frozenset((src, dst)) in self.links and dst in self.nodes:
            self.send(dst, self.nodes[dst].on_message(src, data, self.now))
        return True

    def run(self, max_steps: int = 10_000_000) -> int:
        """Deliver until nothing is in flight; returns the number of messages delivered."""
        n = 0
        while n < max_steps and self.step():
            n += 1
        return n

    def tick_all(self) -> None:
        for pid in sorted(self.nodes):
            self.send(pid, self.nodes[pid].tick(self.now))

    def converged(self) -> bool:
        """Every node holds the same owners at the same (epoch, seq) and the same documents."""
        engines = list(self.nodes.values())
        if not engines:
            return True
        first = engines[0]
        if any(e.digest() != first.digest() for e in engines[1:]):
            return False
        ref = first.state.snapshot()
        return all(e.state.snapshot() == ref for e in engines[1:])

    def settle(self, max_rounds: int = 50, tick_every: float = 5.0) -> int:
        """Deliver, then run anti-entropy rounds until converged; returns the rounds used."""
        self.run()
        for rounds in range(max_rounds):
            if self.converged():
                return rounds
            self.now += tick_every
            self.tick_all()
            self.run()
        return max_rounds


def make_swarm(n: int, seed: int = 0, *, degree: int = 4, limits=None, drop_rate: float = 0.0,
               reorder: bool = False) -> MemNet:
    """``n`` engines with deterministic identities, connected (ring + random chords), synced."""
    rng = random.Random(seed)
    net = MemNet(rng, drop_rate=drop_rate, reorder=reorder)
    for i in range(n):
        ident = Identity.from_seed(rng.randbytes(32))
        net.add(StateSync(ident, now=net.now, rng=random.Random(rng.random()), limits=limits))
    net.connect_random(degree)
    net.run()
    return net


def random_write(net: MemNet, rng: random.Random, k: int = 0) -> None:
    """One random local write on a random node of ``net``, pushed."""
    node = net.nodes[rng.choice(sorted(net.nodes))]
    net.send(node.peer_id, random_local_write(node, rng, net.now, k))


def random_local_write(node: StateSync, rng: random.Random, now: float, k: int = 0) -> Out:
    """One random local write: entry change 70 %, signed record 20 %, model entry 10 %."""
    r = rng.random()
    if r < 0.7:
        start = rng.randrange(0, 24)
        return node.publish_local(now, addrs=[f"/ip4/10.0.0.{rng.randrange(1, 255)}/tcp/4001"],
                                  agent="swarmlm/0.1.0", hosted=[HostedRange("smollm2-135m", start, start + 6)],
                                  throughput=round(rng.uniform(1, 200), 2), free_kv=rng.randrange(0, 1 << 16),
                                  load=float(rng.randrange(0, 8)), reach=rng.choice(["public", "relayed"]))
    if r < 0.9:
        return node.add_record(rng.choice(["round", "verdict"]), {"n": k, "x": rng.random()}, now)[1]
    return node.publish_local(now, models=[ModelInfo("smollm2-135m", "cfg" + str(rng.randrange(2)),
                                                     30, "bf16", ("ee-a",))])
