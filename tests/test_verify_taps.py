"""Verification taps off the token loop: a step never waits for taps, a spot-checked hop sends them
in batches (held back until the batch is full or the client flushes them), every tap is still
signed, and its signature checked before a round reads it; a head whose signed token is not the token it answered, or a first
hop that signed another input than it was sent, is caught."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import trio

from swarmlm.crypto.identity import verify_by_peer_id
from swarmlm.node.client.failover import Bans
from swarmlm.node.client.session import HopFailed, HopPlan, PipelineSession
from swarmlm.node.client.verify import HopCheck, VerificationFailed, Verifier
from swarmlm.node.verification import HopTaps, Tap
from swarmlm.node.wire import tap_digest

from helpers import running_nodes, swarm_client

MODEL = "builtin:tiny"
SPECS = [["--model", MODEL, "--layers", "0:3"], ["--model", MODEL, "--layers", "3:6"]]
SAMPLING = {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "seed": 7}


async def test_batched_taps_are_held_until_the_batch_is_full_or_flushed(tmp_path):
    async with running_nodes(tmp_path, SPECS) as nodes, swarm_client(nodes[0]) as client:
        for n in nodes:
            assert await client.ensure_connected(n.peer_id)
        hops = [HopPlan(nodes[0].peer_id, 0, 3), HopPlan(nodes[1].peer_id, 3, 6)]
        async with PipelineSession(client.host.rpc, MODEL, hops, 32, SAMPLING, tap=True, tap_batch=[4, 4]) as sess:
            res = await sess.step(torch.tensor([[1, 2, 3, 4]]), 0)  # steps 0..2 answered: taps held back
            tokens = [res.token]
            for pos in (4, 5):
                tokens.append((await sess.step(torch.tensor([[tokens[-1]]]), pos)).token)
            assert not any(h.taps for h in sess.taps)  # nothing sent before a batch of 4 is full
            await sess.flush_taps()
            with trio.fail_after(30):
                await sess.taps_through(2)
            for h in sess.taps:  # each stored tap is the hop's own signed step
                assert sorted(h.taps) == [0, 1, 2]
                for t in h.taps.values():
                    digest = tap_digest(h.session_id, t.step, t.pos, t.x_in, t.x_out, t.token,
                                        SAMPLING if h.head else None)
                    assert verify_by_peer_id(h.peer, digest, t.sig)
            assert [sess.taps[1].taps[s].token for s in range(3)] == tokens == [sess.answered[s] for s in range(3)]
            # the first hop's outputs are, bit for bit, the head's inputs
            assert all(torch.equal(sess.taps[0].taps[s].x_out, sess.taps[1].taps[s].x_in) for s in range(3))
            for pos in (6, 7, 8, 9):  # a full batch of 4 comes without a flush
                tokens.append((await sess.step(torch.tensor([[tokens[-1]]]), pos)).token)
            with trio.fail_after(30):
                await sess.taps_through(6)
            assert all(sorted(h.taps) == list(range(7)) for h in sess.taps)
            sess.check_signatures(2)  # the taps a round through step 2 reads: all signed by their hops
            t5 = sess.taps[0].taps[5]
            sess.taps[0].taps[5] = Tap(5, t5.pos, t5.x_in, t5.x_out + 1, t5.token, t5.sig)  # not what it signed
            with pytest.raises(HopFailed, match="bad signature"):
                sess.check_signatures(6)


def _tap(step: int, token: int | None) -> Tap:
    return Tap(step, step, torch.zeros(1, 1, 8), None, token, b"s" * 64)


def test_a_head_signing_another_token_or_a_first_hop_another_input_is_caught():
    client = SimpleNamespace(bans=Bans(60.0), verify_stats={})
    v = Verifier(client, MODEL, SAMPLING, 16, 0.1, False, lambda end, ok: None)
    head = HopTaps("HEAD", "sid", 3, 6, True, {0: _tap(0, 5), 1: _tap(1, 9)})
    v.hops = [HopCheck(head)]
    v.sess = SimpleNamespace(answered={0: 5, 1: 9}, sent={0: torch.zeros(1, 1, 8), 1: torch.zeros(1, 1, 8)})
    v._check_links(0, 1)  # the same tokens and inputs: fine
    v.sess.answered[1] = 8  # it answered 8 but signed 9
    with pytest.raises(VerificationFailed, match="answered a token at step 1"):
        v._check_links(0, 1)
    assert "HEAD" in client.bans.active()
    v.sess.answered[1], client.bans.until = 9, {}
    v.sess.sent[1] = torch.ones(1, 1, 8)  # it computed (and signed) another input than it was sent
    with pytest.raises(VerificationFailed, match="another input of step 1"):
        v._check_links(0, 1)
