"""Swarm-state sync: convergence of in-process replicas, partitions, loss, restarts, compaction."""

from __future__ import annotations

import random

import msgpack

from swarmlm.crypto.identity import Identity
from swarmlm.net.state.schema import HostedRange
from swarmlm.net.state.store import StateStore
from swarmlm.net.state.sync import Limits, StateSync
from swarmlm.testnet.memnet import MemNet, make_swarm, random_write


def _writes(net: MemNet, n: int, seed: int) -> None:
    rng = random.Random(seed)
    for k in range(n):
        net.now += 0.01
        random_write(net, rng, k)
        if rng.random() < 0.3:  # interleave delivery with writes
            for _ in range(rng.randrange(50)):
                net.step()


def test_ten_replicas_converge_after_random_writes():
    net = make_swarm(10, seed=1, limits=Limits(snapshot_every=8))
    _writes(net, 200, seed=2)
    assert net.settle() == 0  # pushes alone converge; no anti-entropy round needed without loss
    assert net.converged()
    any_node = next(iter(net.nodes.values()))
    assert len(any_node.state.peers(net.now)) == 10
    assert len(any_node.state.records()) > 0
    assert all(sum(e.rejected.values()) == 0 for e in net.nodes.values())


def test_loss_and_reordering_are_repaired_by_anti_entropy():
    net = make_swarm(10, seed=3, drop_rate=0.2, reorder=True, limits=Limits(snapshot_every=8))
    _writes(net, 150, seed=4)
    net.drop_rate = 0.0
    rounds = net.settle(max_rounds=60)
    assert rounds < 60 and net.converged()


def test_partition_with_writes_on_both_sides_converges_after_heal():
    net = make_swarm(10, seed=5)
    ids = sorted(net.nodes)
    left, right = ids[:5], ids[5:]
    net.partition([left, right])
    rng = random.Random(6)
    for k in range(100):
        net.now += 0.01
        side = left if k % 2 else right
        node = net.nodes[rng.choice(side)]
        _, out = node.add_record("round", {"k": k}, net.now)
        net.send(node.peer_id, out + node.publish_local(net.now, load=float(k)))
    net.run()
    assert not net.converged()
    l0, r0 = net.nodes[left[0]], net.nodes[right[0]]
    assert {r.body["k"] for r in l0.state.records()} == {k for k in range(100) if k % 2}
    net.heal()
    net.settle()
    assert net.converged()
    assert len(r0.state.records(kind="round")) == 100


def test_restarted_node_catches_up_from_its_file(tmp_path):
    net = make_swarm(6, seed=7)
    _writes(net, 60, seed=8)
    net.settle()
    victim = sorted(net.nodes)[0]
    eng = net.nodes[victim]
    eng.add_record("verdict", {"mine": True}, net.now)  # never pushed: only in its own state
    store = StateStore(tmp_path)
    store.save(eng.export())
    ident, old_epoch = eng.identity, eng.own.epoch
    net.remove(victim)
    _writes(net, 60, seed=9)  # the swarm moves on without it
    net.now += 1.0
    back = store.open_engine(ident, now=net.now, rng=random.Random(1))
    assert back.own.epoch > old_epoch  # a new epoch: fresh Yjs client id, no clock reuse
    assert back.state.records(kind="verdict", author=ident.peer_id)  # its own record survived
    assert len(back.state.peers(net.now, include_offline=True)) == 6
    net.add(back)
    for other in sorted(net.nodes)[:3]:
        net.connect(victim, other)
    net.settle()
    assert net.converged()
    assert any(r.body == {"mine": True} for r in net.nodes[sorted(net.nodes)[-1]].state.records(kind="verdict"))


def test_node_that_lost_its_file_takes_back_its_records():
    net = make_swarm(4, seed=10)
    victim = sorted(net.nodes)[1]
    eng = net.nodes[victim]
    _, out = eng.add_record("round", {"keep": 1}, net.now)
    net.send(victim, out)
    net.settle()
    ident = eng.identity
    net.remove(victim)
    net.now += 1.0
    fresh = StateSync(ident, now=net.now, rng=random.Random(2))  # no file: a new, empty epoch
    net.add(fresh)
    for other in sorted(net.nodes):
        net.connect(victim, other)
    net.settle()
    assert net.converged()
    assert fresh.stats["own_imported"] >= 1
    assert [r.body for r in fresh.state.records(author=ident.peer_id)] == [{"keep": 1}]
    other = net.nodes[sorted(net.nodes)[-1]]
    assert other.replicas[victim].epoch == fresh.own.epoch  # the old epoch was replaced everywhere


def test_same_epoch_number_reused_moves_above_it():
    net = make_swarm(3, seed=15)
    victim = sorted(net.nodes)[0]
    ident = net.nodes[victim].identity
    for _ in range(3):
        net.send(victim, net.nodes[victim].publish_local(net.now, load=1.0))
    net.settle()
    net.remove(victim)
    clone = StateSync(ident, now=0.0, rng=random.Random(3))  # same clock value: same epoch number
    net.add(clone)
    for other in sorted(net.nodes):
        net.connect(victim, other)
    net.settle()
    assert net.converged() and clone.own.epoch > 0


def test_offline_by_ttl_and_compaction_of_long_gone_peers():
    limits = Limits(ttl=30.0, compact_after=300.0, compact_unprotected_after=300.0)
    net = make_swarm(5, seed=11, limits=limits)
    for pid in sorted(net.nodes):
        net.send(pid, net.nodes[pid].publish_local(net.now, hosted=[HostedRange("m", 0, 4)]))
    net.settle()
    gone = sorted(net.nodes)[0]
    net.remove(gone)
    net.now = 100.0
    for pid in sorted(net.nodes):
        net.send(pid, net.nodes[pid].publish_local(net.now))
    net.settle()
    obs = net.nodes[sorted(net.nodes)[0]]
    assert gone not in {e.peer_id for e in obs.state.peers(net.now)}  # offline, no write needed
    assert obs.state.peer(gone) is not None
    net.now = 400.0
    for pid in sorted(net.nodes):
        net.send(pid, net.nodes[pid].publish_local(net.now))
    net.tick_all()  # compaction runs in tick()
    net.run()
    assert all(gone not in e.replicas and gone in e.tombstones for e in net.nodes.values())
    assert net.converged()


def test_owner_logs_stay_short_with_snapshots():
    net = make_swarm(3, seed=12, limits=Limits(snapshot_every=4, max_log=16))
    a = sorted(net.nodes)[0]
    for k in range(50):
        net.now += 1
        net.send(a, net.nodes[a].publish_local(net.now, load=float(k)))
    net.settle()
    for e in net.nodes.values():
        log = e.replicas[a].log
        assert len(log) <= 16 // 2 + 1 and log[0].snap and log[0].seq > 32
        assert e.state.peer(a).load == 49.0


def test_steady_state_anti_entropy_is_a_digest_only():
    net = make_swarm(4, seed=13)
    net.settle()
    before = net.bytes_sent
    net.tick_all()
    net.run()
    assert net.bytes_sent - before < 4 * 100  # one ["dig", hex] per node, no answers
    msg = msgpack.unpackb(net.nodes[sorted(net.nodes)[0]].tick(net.now)[0][1])
    assert msg[0] == "dig"


def test_identities_are_distinct_in_make_swarm():
    net = make_swarm(5, seed=14)
    assert len({e.identity.peer_id for e in net.nodes.values()}) == 5
    assert isinstance(next(iter(net.nodes.values())).identity, Identity)


def test_lazy_forwarding_converges_with_fewer_bytes():
    sent = {}
    for lazy in (False, True):
        net = make_swarm(10, seed=16, degree=5, limits=Limits(lazy_forward=lazy))
        net.bytes_sent = 0
        _writes(net, 100, seed=17)
        assert net.settle() == 0 and net.converged()  # no anti-entropy round needed without loss
        sent[lazy] = net.bytes_sent
    assert sent[True] < 0.7 * sent[False]


def test_lazy_forwarding_repairs_loss():
    net = make_swarm(10, seed=18, drop_rate=0.2, reorder=True, limits=Limits(lazy_forward=True, snapshot_every=8))
    _writes(net, 100, seed=19)
    net.drop_rate = 0.0
    assert net.settle(max_rounds=60) < 60 and net.converged()


def test_node_restored_from_a_stale_file_takes_back_later_records(tmp_path):
    net = make_swarm(4, seed=20)
    victim = sorted(net.nodes)[2]
    eng = net.nodes[victim]
    store = StateStore(tmp_path)
    store.save(eng.export())  # saved before the record below
    _, out = eng.add_record("verdict", {"late": 1}, net.now)
    net.send(victim, out)
    net.settle()
    net.remove(victim)
    net.now += 1.0
    back = store.open_engine(eng.identity, now=net.now, rng=random.Random(4))
    assert not back.state.records(author=victim)
    net.add(back)
    for other in sorted(net.nodes):
        net.connect(victim, other)
    net.settle()
    assert [r.body for r in back.state.records(author=victim)] == [{"late": 1}]
    assert net.converged()


def test_bench_crdt_in_memory_part_reports_its_fields():
    from swarmlm.bench.crdt import bench_memory, entry_size

    r = bench_memory(4, 20, seed=1, degree=2, drop=0.1)
    assert r["bytes_sent"] > 0 and r["converge_ms"] > 0 and r["rejected"] == 0
    sizes = entry_size()
    assert 0 < sizes["yjs"] < sizes["envelope"] < 2000
