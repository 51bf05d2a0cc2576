"""Verified shards at the head: token gaps (greedy and seeded sampling), head evidence and its
forgery, and an in-process swarm whose LM-head hop lies (``--fault wrong-head``) checked at a low
fraction: no wrong token is ever counted as verified, a caught head liar gets a signed verdict and
other clients stop routing through it."""

from __future__ import annotations

import random
import time

import pytest
import torch
import trio

from swarmlm.consensus.standing import WITNESS_KIND, witness_body
from swarmlm.crypto.identity import Identity, verify_by_peer_id
from swarmlm.models.generate import generate, load_chain
from swarmlm.models.registry import resolve
from swarmlm.models.sampling import SamplingParams
from swarmlm.models.tokenizer import Tokenizer
from swarmlm.node.generation import GenerationRequest
from swarmlm.node.verification import HopTaps, Tap, check_head_evidence, head_evidence, sample_gap, tolerance
from swarmlm.node.wire import tap_digest

from helpers import running_nodes, swarm_client

MODEL = "builtin:tiny"


def test_sample_gap_greedy_and_seeded():
    logits = torch.tensor([1.0, 5.0, 4.9999, -3.0])
    assert sample_gap(logits, 1, None, 7) == (1, 0.0)
    tok, gap = sample_gap(logits, 2, {"temperature": 0.0}, 7)  # a near-tie: a tiny gap
    assert tok == 1 and 0 < gap < 1e-4
    assert sample_gap(logits, 3, None, 7)[1] > 1.0  # another token: far beyond any tolerance
    assert sample_gap(logits, 99, None, 7)[1] == float("inf")
    wide = torch.zeros(64)
    sampling = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "seed": 12345}
    drawn = [sample_gap(wide, 0, sampling, pos)[0] for pos in range(32)]
    assert len(set(drawn)) > 8  # the seed is per position: positions draw differently
    for pos, own in enumerate(drawn):
        assert sample_gap(wide, own, sampling, pos) == (own, 0.0)
        other = (own + 32) % 64  # half the vocabulary away in the CDF: mass ~0.5 off
        assert sample_gap(wide, other, sampling, pos)[1] > tolerance("fp32")


def test_head_evidence_round_trip_and_forgery():
    ident = Identity.generate()
    sampling = {"temperature": 0.7, "top_k": 0, "top_p": 1.0, "seed": 99}
    hop = HopTaps(ident.peer_id, "h1", 3, 6, True)
    pos = 0
    for step, (n, tok) in enumerate(((5, 11), (1, 12), (1, 13))):
        x_in = torch.randn(1, n, 8)
        hop.taps[step] = Tap(step, pos, x_in, None, tok,
                             ident.sign(tap_digest("h1", step, pos, x_in, None, tok, sampling)))
        pos += n
    ev = head_evidence(hop, 2, sampling)
    check = lambda m, s: verify_by_peer_id(ident.peer_id, m, s)  # noqa: E731
    x_in, claims = check_head_evidence(ev, check)
    assert x_in.shape == (1, 7, 8) and claims == [(4, 0, 11), (5, 5, 12), (6, 6, 13)]
    forged = dict(ev, steps=[list(r) for r in ev["steps"]])
    forged["steps"][1][3] = 40  # a client cannot blame the head for a token it did not sign
    with pytest.raises(ValueError, match="signature"):
        check_head_evidence(forged, check)
    with pytest.raises(ValueError, match="signature"):  # nor for sampling parameters it did not use
        check_head_evidence(dict(ev, sampling={**sampling, "temperature": 0.0}), check)


# two replicas of every range: a round confirms a hop only against another replica, and a token
# counts as verified only when every hop of its position was confirmed
SPECS = [["--model", MODEL, "--layers", "0:3"], ["--model", MODEL, "--layers", "3:6", "--fault", "wrong-head"],
         ["--model", MODEL, "--layers", "3:6"], ["--model", MODEL, "--layers", "3:6"],
         ["--model", MODEL, "--layers", "0:3"]]


async def test_a_head_liar_never_gets_a_wrong_token_verified(tmp_path):
    params = SamplingParams(max_new_tokens=16)
    tok = Tokenizer.from_dir(resolve(MODEL))
    want = generate(load_chain(MODEL, 1), tok.encode("head"), params, tok).token_ids
    async with running_nodes(tmp_path, SPECS) as nodes:
        liar = nodes[1].peer_id
        # the honest replicas earned standing: the bootstrap (every client's anchor here) witnessed
        # their work (what its client publishes after generations; see tests/test_sybil_swarm.py)
        honest = [n.peer_id for n in nodes if n.peer_id != liar]
        nodes[0].state.add_record(WITNESS_KIND, witness_body({p: 1024 for p in honest}, time.time() - 60, time.time()))
        async with swarm_client(nodes[0]) as client:
            client.options.check_fraction = 0.1  # sampled: the liar's first wrong token comes long before a check
            client.options.standing_steps = 0
            client.options.verdict_ban_s = 0.0  # every run starts on the liar (verdicts must not steer it)
            client.options.prefer = (liar,)
            client.rng = random.Random(3)
            runs = detected = verified = 0
            for _ in range(6):
                client.bans.until.clear()
                client.verify_stats.clear()
                async with client.generate(GenerationRequest(model=MODEL, prompt="head", params=params)) as gen:
                    [c async for c in gen]
                runs += 1
                for a, b in gen.verified:  # every token counted as verified is the honest one
                    assert gen.token_ids[a:b] == want[a:b], (gen.verified, gen.token_ids, want)
                verified += gen.summary.verified_tokens
                if liar in client.verify_stats.get("detected", []):
                    detected += 1
                    assert gen.token_ids == want  # caught: rolled back and regenerated on an honest head
                else:
                    assert gen.summary.verified_tokens == 0  # never checked: nothing claimed verified
            assert detected >= 1 and verified >= 1, (detected, verified)
            # the tie-breaker re-checked the head's signed tokens and published a verdict
            client.options.verdict_ban_s = 3600.0
            with trio.fail_after(20):
                while liar not in client.convicted():
                    await trio.sleep(0.1)
            rec = next(r for r in client.state.records(kind="verdict") if r.body["subject"] == liar)
            assert rec.body["end"] == 6 and rec.author in (nodes[2].peer_id, nodes[3].peer_id)
            async with swarm_client(nodes[0]) as other:  # a fresh client never plans through it
                with trio.fail_after(20):
                    while liar not in other.convicted():
                        await trio.sleep(0.1)
                for _ in range(10):
                    assert liar not in other.plan(MODEL, 32).peer_ids()
