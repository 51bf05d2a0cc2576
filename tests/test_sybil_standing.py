"""Standing and convictions (pure, deterministic): earned by witnessed work from peers with standing,
capped per author, decaying; free identities have none and cannot lift each other; a verdict moves
other nodes only with standing behind it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from swarmlm.consensus.judging import LogLikelihoodJudge
from swarmlm.consensus.local import run_local_round
from swarmlm.consensus.round import Finished
from swarmlm.consensus.standing import (StandingParams, is_established, round_participants, standing, standing_map,
                                        witness_body)
from swarmlm.consensus.verdicts import conviction_weights, convicted, parse_verdict
from swarmlm.crypto.identity import Identity

NOW = 1_800_000_000.0
P = StandingParams()


@dataclass
class Rec:
    kind: str
    author: str
    created: float
    body: Any
    key: str = ""


def witness(author: str, served: dict[str, int], at: float = NOW - 10) -> Rec:
    return Rec("witness", author, at, witness_body(served, at - 60, at))


def fail(author: str, subject: str, at: float = NOW - 10, **extra: Any) -> Rec:
    return Rec("verdict", author, at, {"v": 1, "subject": subject, "verdict": "fail", **extra})


def test_new_identities_have_nothing_and_anchors_are_established():
    assert standing([], "new", NOW) == 0.0 and not is_established([], "new", NOW)
    assert is_established([], "anchor", NOW, anchors=["anchor"])


def test_work_witnessed_by_an_anchor_earns_standing_in_proportion():
    recs = [witness("A", {"full": 256, "half": 128}, at=NOW)]
    s = standing_map(recs, NOW, ["A"])
    assert s["full"] == pytest.approx(1.0, rel=0.01) and s["half"] == pytest.approx(0.5, rel=0.01)
    assert is_established(recs, "full", NOW, ["A"]) and not is_established(recs, "half", NOW, ["A"])
    assert standing_map([witness("A", {"x": 10**9})], NOW, ["A"])["x"] == P.author_cap  # capped per author


def test_sybils_witnessing_each_other_earn_nothing():
    sybils = [f"s{i}" for i in range(50)]
    recs = [witness(a, {b: 10**6 for b in sybils if b != a}) for a in sybils]
    recs.append(witness("A", {"honest": 512}))
    s = standing_map(recs, NOW, ["A"])
    assert set(s) == {"A", "honest"}


def test_an_established_attacker_cannot_mint_established_identities():
    sybils = [f"s{i}" for i in range(100)]
    recs = [witness("A", {"mallory": 4096}), witness("mallory", {s: 4096 for s in sybils})]
    recs += [witness(a, {b: 4096 for b in sybils if b != a}) for a in sybils]  # and they vouch for each other
    s = standing_map(recs, NOW, ["A"])
    assert s["mallory"] == pytest.approx(1.0)
    minted = sum(s.get(x, 0.0) for x in sybils)
    assert minted < s["mallory"]  # all of them together hold less than mallory earned
    assert not any(is_established(recs, x, NOW, ["A"]) for x in sybils)


def test_standing_decays_and_bad_times_are_ignored():
    fresh = standing_map([witness("A", {"x": 256}, at=NOW)], NOW, ["A"])["x"]
    old = standing_map([witness("A", {"x": 256}, at=NOW - P.half_life_s)], NOW, ["A"])["x"]
    assert old == pytest.approx(fresh / 2, rel=0.01)
    assert "x" not in standing_map([witness("A", {"x": 256}, at=NOW - P.horizon_s - 1)], NOW, ["A"])
    assert "x" not in standing_map([witness("A", {"x": 256}, at=1e11)], NOW, ["A"])  # from the future
    assert "A" not in standing_map([witness("A", {"A": 10**6})], NOW, [])  # nobody vouches for itself
    assert standing_map([Rec("witness", "A", NOW, {"served": [["x", float("nan")], ["y", -5], "junk"]})], NOW, ["A"]) \
        == {"A": 1.0}


def test_consensus_rounds_witness_their_participants():
    me, nodes = Identity.from_seed(b"\x07" * 32), [Identity.from_seed(bytes([i + 1]) * 32) for i in range(3)]
    quality = {"Paris": 3.0, "Lyon": 1.0, "Nice": 0.5}
    judges = {n: LogLikelihoodJudge(lambda prompt, answer: quality[answer], margin=0.0) for n in nodes}
    _, log = run_local_round(me, "Capital?", dict(zip(nodes, quality)), judges, {n.peer_id: 1.0 for n in nodes},
                             now=NOW - 100)
    blob = next(a for a in log if isinstance(a, Finished)).packet.envelope.encode()
    assert set(round_participants(blob)) >= {n.peer_id for n in nodes}
    assert round_participants(b"garbage") == ()
    s = standing_map([Rec("round", me.peer_id, NOW - 100, blob)], NOW, [me.peer_id])
    assert all(0 < s[n.peer_id] < 1 for n in nodes)  # a round is worth round_credit each


def test_verdicts_without_standing_convict_nobody_and_one_author_is_not_enough():
    sybils = [f"s{i}" for i in range(256)]
    recs = [fail(s, "honest") for s in sybils]
    assert not convicted(recs, {}, NOW)
    st = {"A": 1.0, "B": 1.0, "C": 0.3}
    assert not convicted([fail("A", "liar"), fail("A", "liar")], st, NOW)  # one author counts once, capped
    assert convicted([fail("A", "liar"), fail("B", "liar")], st, NOW) == {"liar"}
    assert conviction_weights([fail("C", "liar")], st, NOW)["liar"] == pytest.approx(0.15)
    assert convicted([fail("me", "liar")], {}, NOW, me="me") == {"liar"}  # my own check counts in full
    assert not convicted([fail("A", "A"), fail("B", "A")], st, NOW) - {"A"} and \
        conviction_weights([fail("A", "A")], st, NOW) == {}  # nobody convicts itself
    assert not convicted([fail("A", "liar", at=NOW - 7200), fail("B", "liar", at=1e11)], st, NOW)


def test_verdict_bodies_are_schema_checked_and_extensible():
    assert parse_verdict({"subject": "x", "verdict": "maybe"}) is None
    assert parse_verdict({"subject": 5, "verdict": "fail"}) is None and parse_verdict("fail") is None
    v = parse_verdict({"subject": "x", "verdict": "fail", "hop": "head", "max_err": float("nan"), "start": -1,
                       "future_field": [1, 2]})
    assert v.hop == "head" and v.max_err == 0.0 and v.start == 0
