"""Sybil attacks on the swarm state, engine level (no sockets, deterministic): many free identities
behind one neighbour try to plant future-dated verdicts, absurd model shapes, floods of empty owners
and of out-of-order updates. Each test asserts the honest outcome (see docs/RELIABILITY.md)."""

from __future__ import annotations

import random

import msgpack
import pytest

from swarmlm.consensus.standing import WITNESS_KIND, witness_body
from swarmlm.crypto.identity import Identity
from swarmlm.net.state.rights import records_key
from swarmlm.net.state.schema import HostedRange, ModelInfo
from swarmlm.net.state.sync import StateSync
from swarmlm.net.state.wire import Limits
from swarmlm.testnet.memnet import MemNet
from swarmlm.testnet.sybil_payloads import (batches, empty_owner_envelopes, pending_envelopes, shape_envelopes,
                                            verdict_envelopes)

NOW = 1_000_000.0
MODEL = "builtin:tiny"


def ids(n: int, seed: int) -> list[Identity]:
    return [Identity.from_seed(bytes([seed, i % 256, i // 256]) + b"\x00" * 29) for i in range(n)]


def engine(ident: Identity, limits: Limits | None = None) -> StateSync:
    return StateSync(ident, now=NOW - 100, rng=random.Random(1), limits=limits)


def deliver(victim: StateSync, sender: str, raws: list[bytes], now: float = NOW) -> None:
    for msg in batches(raws):
        victim.on_message(sender, msg, now)


def honest_pair() -> tuple[MemNet, StateSync, StateSync]:
    """Two honest servers of MODEL (layers 0:3 and 3:6); the first is the second's anchor."""
    net = MemNet(random.Random(3))
    a, b = engine(Identity.from_seed(b"\x01" * 32)), engine(Identity.from_seed(b"\x02" * 32))
    for e, (lo, hi) in ((a, (0, 3)), (b, (3, 6))):
        net.add(e)
        net.send(e.peer_id, e.publish_local(NOW, hosted=[HostedRange(MODEL, lo, hi)],
                                            models=[ModelInfo(MODEL, "honest", 6, "fp32")]))
    net.now = NOW
    net.connect(a.peer_id, b.peer_id)
    net.settle()
    return net, a, b


def test_future_dated_verdicts_are_rejected_and_present_ones_convict_nobody():
    from swarmlm.consensus.standing import standing_map
    from swarmlm.consensus.verdicts import convicted

    _, victim, other = honest_pair()
    sybils = ids(16, 7)
    deliver(victim, other.peer_id, verdict_envelopes(sybils, [victim.peer_id, other.peer_id], NOW))
    recs = victim.state.records(kind="verdict")
    assert victim.rejected["bad_record"] >= 8  # the 8 identities dating theirs 1e11 never got in
    assert all(r.created <= NOW + 60 for r in recs) and len({r.author for r in recs}) == 8
    anchors = {victim.peer_id, other.peer_id}
    standing = standing_map(victim.state.records(), NOW, anchors)
    assert not convicted(recs, standing, NOW, victim.peer_id)  # 8 authors without standing weigh nothing


def test_absurd_and_lying_model_shapes_do_not_win_the_registry():
    _, victim, other = honest_pair()
    # the honest servers are established: the anchor witnessed their work
    _, out = victim.add_record(WITNESS_KIND, witness_body({other.peer_id: 4096}, NOW - 60, NOW), NOW)
    from swarmlm.node.trust import TrustView

    trust = TrustView(type("S", (), {"state": victim.state, "sync": victim})(), victim.peer_id)
    trust.install(type("H", (), {})())
    sybils = ids(16, 9)
    deliver(victim, other.peer_id, shape_envelopes(sybils, MODEL, NOW))
    assert victim.rejected["bad_entry"] >= 8  # 100,000 layers: refused at the edge
    liars = [s.peer_id for s in sybils if victim.state.peer(s.peer_id) is not None]
    assert len(liars) == 8  # the 1000-layer claims are plausible and got in ...
    assert victim.state.models(NOW)[MODEL].layers == 6  # ... but established hosts outrank them
    assert victim.state.models(NOW)[MODEL].config_hash == "honest"


def test_announcers_that_host_nothing_have_no_say():
    net, victim, other = honest_pair()
    liar = engine(Identity.from_seed(b"\x03" * 32))
    net.add(liar)
    for k in range(3):  # three copies: more voters than the honest hosts
        net.send(liar.peer_id, liar.publish_local(NOW, models=[ModelInfo(MODEL, f"lie{k}", 99, "fp32")]))
    net.connect(liar.peer_id, victim.peer_id)
    net.settle()
    assert victim.state.peer(liar.peer_id) is not None
    assert victim.state.models(NOW)[MODEL].layers == 6


def test_owner_flood_cannot_push_out_established_peers_and_compacts_in_minutes():
    limits = Limits(max_owners=64, reserved_owners=16, new_owner_burst=20, new_owner_rate=0.0, empty_after=120.0)
    victim = engine(Identity.from_seed(b"\x04" * 32), limits)
    established = engine(Identity.from_seed(b"\x05" * 32))
    victim.admission.protected = lambda owner: owner == established.peer_id
    relay = ids(1, 11)[0].peer_id
    deliver(victim, relay, empty_owner_envelopes(ids(200, 12), NOW))
    assert victim.rejected["admission"] > 0 and len(victim.replicas) <= 2 + 2 * 20  # a token per identity
    assert victim.scores.get(relay, 0.0) >= 0  # a relay is not punished for what it forwards
    # a flood from many groups fills the unreserved room ...
    for i, ident in enumerate(ids(40, 13)):
        victim.on_message(f"group{i}", msgpack.packb(["env", empty_owner_envelopes([ident], NOW)]), NOW)
    assert len(victim.replicas) <= limits.max_owners - limits.reserved_owners
    assert victim.rejected["too_many_owners"] > 0
    # ... but an established peer still gets in (reserved room)
    established.publish_local(NOW, agent="honest")
    deliver(victim, relay, [e.raw for rep in (established.own, established.own_records) for e in rep.log])
    assert victim.state.peer(established.peer_id) is not None
    # empty owners are forgotten within minutes, not a day
    victim.tick(NOW + 121)
    left = [o for o in victim.replicas if o not in (victim.peer_id, records_key(victim.peer_id))]
    assert set(left) == {established.peer_id, records_key(established.peer_id)}
    newcomer = engine(Identity.from_seed(b"\x07" * 32))  # so a new honest node is listed again
    newcomer.publish_local(NOW + 121, agent="new")
    deliver(victim, newcomer.peer_id, [e.raw for rep in (newcomer.own, newcomer.own_records) for e in rep.log], NOW + 121)
    assert victim.state.peer(newcomer.peer_id) is not None


def test_out_of_order_flood_is_bounded_in_bytes_and_penalizes_its_sender():
    victim = engine(Identity.from_seed(b"\x06" * 32))
    mallory = "mallory"
    deliver(victim, mallory, pending_envelopes(ids(40, 14), NOW, per_identity=8, size=250 * 1024))
    lim = victim.limits
    assert victim.pending_bytes <= lim.max_pending_bytes_per_sender
    assert victim.rejected["pending_flood"] > 0 and victim.scores[mallory] < 0
    # several senders together stay under the global bound
    for k in range(12):
        deliver(victim, f"m{k}", pending_envelopes(ids(8, 20 + k), NOW, per_identity=8, size=250 * 1024))
    assert victim.pending_bytes <= lim.max_pending_bytes
    victim.tick(NOW + lim.pending_ttl + 1)  # and they expire
    assert victim.pending_bytes == 0 and not victim.pending


@pytest.mark.parametrize("skew", [59.0, 3600.0])
def test_clock_skew_is_checked_for_heartbeats_and_records(skew):
    _, victim, _ = honest_pair()
    mallory = engine(Identity.from_seed(b"\x08" * 32))
    mallory.publish_local(NOW + skew, agent="m")
    mallory.add_record("note", {"x": 1}, NOW + skew)
    deliver(victim, mallory.peer_id, [e.raw for rep in (mallory.own, mallory.own_records) for e in rep.log])
    accepted = victim.state.peer(mallory.peer_id) is not None
    assert accepted == (skew < 60) and bool(victim.state.records(kind="note")) == (skew < 60)
