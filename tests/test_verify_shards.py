"""Verified shards: taps, tolerances, evidence (pure), and in-process swarms with a node that lies
(``--fault wrong-activations``): detection, tie-break, signed verdict, ban, reputation, correct answers,
and the detection rate for several check fractions (printed; see docs/RELIABILITY.md)."""

from __future__ import annotations

import random
import time

import pytest
import torch
import trio

from swarmlm.consensus.standing import WITNESS_KIND, witness_body
from swarmlm.crypto.identity import Identity, verify_by_peer_id
from swarmlm.models.generate import generate, load_chain
from swarmlm.models.kvcache import KVCacheManager
from swarmlm.models.sampling import SamplingParams
from swarmlm.models.tokenizer import Tokenizer
from swarmlm.models.registry import resolve
from swarmlm.node.generation import GenerationRequest
from swarmlm.node.verification import HopTaps, Tap, check_evidence, evidence, relative_error, tolerance
from swarmlm.node.wire import tap_digest

from helpers import running_nodes, swarm_client

MODEL = "builtin:tiny"
torch.set_num_threads(1)


def local_tokens(prompt: str, params: SamplingParams) -> list[int]:
    tok = Tokenizer.from_dir(resolve(MODEL))
    return generate(load_chain(MODEL, 1), tok.encode(prompt), params, tok).token_ids


def test_prefill_vs_decode_noise_is_far_below_the_tolerance():
    """The cross-run noise the tolerance must absorb: one prefill vs token-by-token decode (fp32)."""
    first, mid, _ = load_chain(MODEL, 3)  # the middle shard: hidden states in, hidden states out
    ids = torch.tensor([list(range(3, 40))])
    x = first.forward(ids, KVCacheManager(first.cache_layout(), 4096).open("e", 64), 0)
    mgr = KVCacheManager(mid.cache_layout(), 4096)
    a = mid.forward(x, mgr.open("a", 64), 0)
    sb = mgr.open("b", 64)
    b = torch.cat([mid.forward(x[:, i:i + 1], sb, i) for i in range(x.shape[1])], dim=1)
    noise = relative_error(b, a)
    print(f"\nprefill vs decode relative error (fp32): {noise:.2e}; tolerance {tolerance('fp32'):.0e}")
    assert noise * 20 < tolerance("fp32")
    assert relative_error(b + torch.randn_like(b) * b.abs().mean(), a) > tolerance("fp32")


def test_evidence_round_trip_and_forgery():
    ident = Identity.generate()
    hop = HopTaps(ident.peer_id, "s1", 2, 4, False)
    pos = 0
    for step, n in enumerate((5, 1, 1)):
        x_in, x_out = torch.randn(1, n, 8), torch.randn(1, n, 8)
        sig = ident.sign(tap_digest("s1", step, pos, x_in, x_out, None))
        hop.taps[step] = Tap(step, pos, x_in, x_out, None, sig)
        pos += n
    ev = evidence(hop, 2)
    x_in, x_out = check_evidence(ev, lambda m, s: verify_by_peer_id(ident.peer_id, m, s))
    assert x_in.shape == (1, 7, 8) and torch.equal(x_out[:, 5:6], hop.taps[1].x_out)
    ev["out"] = ev["out"].clone()
    ev["out"][0, 6, 0] += 1.0  # a client cannot blame a server for an output it did not sign
    with pytest.raises(ValueError, match="signature"):
        check_evidence(ev, lambda m, s: verify_by_peer_id(ident.peer_id, m, s))


def test_tolerance_rules():
    assert tolerance("bf16") > tolerance("fp16") > tolerance("fp32")
    assert tolerance("fp32", measured_noise=1e-3) == pytest.approx(2e-2)


SPECS = [["--model", MODEL, "--layers", "0:2"], ["--model", MODEL, "--layers", "2:4", "--fault", "wrong-activations"],
         ["--model", MODEL, "--layers", "2:4"], ["--model", MODEL, "--layers", "2:4"],
         ["--model", MODEL, "--layers", "4:6"]]


def route_through(client, liar, honest):
    """The first plan of each generation goes through ``liar`` (failover re-plans normally)."""
    from swarmlm.node.client.routing import plan_route

    def plan(model, need, prefer=()):
        return plan_route(client.servers(model), client.n_layers(model), need_cache_tokens=need,
                          banned=client.bans.active() | set(honest))

    client.plan = plan


async def _generate(client, prompt, params):
    async with client.generate(GenerationRequest(model=MODEL, prompt=prompt, params=params)) as gen:
        text = "".join([c.text async for c in gen])
    return gen, text


async def test_a_lying_server_is_detected_reported_banned_and_the_answer_is_correct(tmp_path):
    from swarmlm.consensus.reputation import Verdict, compute_reputation

    params = SamplingParams(max_new_tokens=10)
    want = local_tokens("verify me", params)
    async with running_nodes(tmp_path, SPECS) as nodes:
        liar = nodes[1].peer_id
        # the honest replicas earned standing: the bootstrap (every node's anchor) and node 4 witnessed
        # their work (what their clients publish after generations; see tests/test_sybil_*.py)
        honest = [n.peer_id for n in nodes if n.peer_id != liar]
        for n in (nodes[0], nodes[4]):
            n.state.add_record(WITNESS_KIND, witness_body({p: 1024 for p in honest}, time.time() - 60, time.time()))
        async with swarm_client(nodes[0]) as client:
            client.options.check_fraction = 1.0
            route_through(client, liar, [nodes[2].peer_id, nodes[3].peer_id])
            gen, text = await _generate(client, "verify me", params)
            assert gen.token_ids == want  # rolled back to the verified prefix, replayed on an honest replica
            st = client.verify_stats
            assert liar in st["detected"] and st["verdicts"] >= 1, st
            assert liar in client.bans.active()
            assert liar not in [h.peer_id for h in gen.summary.route]
            # the tie-breaker published a signed verdict record; it spreads through the swarm state
            with trio.fail_after(20):
                while liar not in client.convicted():
                    await trio.sleep(0.1)
            recs = [r for r in client.state.records(kind="verdict") if r.body["subject"] == liar]
            # both replicas that re-computed the hop checked the evidence and signed a verdict
            assert {r.author for r in recs} == {nodes[2].peer_id, nodes[3].peer_id}
            assert all(r.body["verdict"] == "fail" and len(r.body["evidence"]) == 64 for r in recs)
            # routing avoids it swarm-wide: a fresh client without local bans never plans through it
            async with swarm_client(nodes[4]) as other:
                with trio.fail_after(20):
                    while liar not in other.convicted():
                        await trio.sleep(0.1)
                for _ in range(10):
                    assert liar not in other.plan(MODEL, 32).peer_ids()
            # and it loses reputation (the fold consensus uses), deterministically
            now = time.time()
            verdicts = [Verdict(r.body["subject"], r.created, r.key, r.author) for r in client.state.records(kind="verdict")]
            rep = compute_reputation([], now, anchors=[liar], verdicts=verdicts)
            assert rep.score(liar) < rep.params.anchor_score and rep.nodes[liar].slashed == 2  # one per reporter
            # a healthy route verifies clean
            del client.plan
            client.verify_stats.clear()
            gen2, _ = await _generate(client, "verify me", params)
            assert gen2.token_ids == want and not client.verify_stats.get("mismatches")


FRACTIONS = (0.05, 0.1, 0.25, 0.5)


async def test_detection_rate_vs_check_fraction(tmp_path):
    params = SamplingParams(max_new_tokens=8)
    want = local_tokens("rate", params)
    runs = 20
    rows = {}
    async with running_nodes(tmp_path, SPECS) as nodes:
        liar = nodes[1].peer_id
        # the honest replicas earned standing: the bootstrap (every node's anchor) and node 4 witnessed
        # their work (what their clients publish after generations; see tests/test_sybil_*.py)
        honest = [n.peer_id for n in nodes if n.peer_id != liar]
        for n in (nodes[0], nodes[4]):
            n.state.add_record(WITNESS_KIND, witness_body({p: 1024 for p in honest}, time.time() - 60, time.time()))
        async with swarm_client(nodes[0]) as client:
            route_through(client, liar, [nodes[2].peer_id, nodes[3].peer_id])
            client.options.verdict_ban_s = 0.0  # measure each run on its own: verdicts must not steer routing
            client.options.standing_steps = 0  # pure sampling: no server is checked on every step first
            client.rng = random.Random(9)
            for f in FRACTIONS:
                client.options.check_fraction = f
                detected = correct = 0
                for _ in range(runs):
                    client.bans.until.clear()
                    client.verify_stats.clear()
                    gen, _ = await _generate(client, "rate", params)
                    hit = liar in client.verify_stats.get("detected", [])
                    detected += hit
                    correct += gen.token_ids == want
                    if hit:
                        assert gen.token_ids == want  # after detection the answer is right
                rows[f] = (detected, correct)
    print("\ncheck fraction | detected / runs | correct answers | expected 1-(1-f)^8 (8 steps)")
    for f, (d, c) in rows.items():
        print(f"{f:>14} | {d:>8} / {runs} | {c:>15} | {1 - (1 - f) ** 8:.2f}")
    assert rows[0.5][0] >= rows[0.05][0] and rows[0.5][0] >= runs // 2
