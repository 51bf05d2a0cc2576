"""Evidence of a speculative session (verify passes whose rejected rows the next pass overwrote):
the third replica checks every signature over the whole signed passes, then recomputes only the
rows that stayed in the history (up to the next step's signed ``pos``); the head claims a token
per kept row, seeded by its position; rows that do not tile are refused."""

from __future__ import annotations

import pytest
import torch

from swarmlm.crypto.identity import Identity, verify_by_peer_id
from swarmlm.node.verification import HopTaps, Tap, check_evidence, check_head_evidence, evidence, head_evidence
from swarmlm.node.wire import tap_digest

# (pos, rows): the prompt (3 rows), a pass of 3 rows keeping 2 (the next starts at 5), a pass of 2
PASSES = ((0, 3), (3, 3), (5, 2))
SAMPLING = {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "seed": 5}


def middle_hop(ident: Identity) -> HopTaps:
    hop = HopTaps(ident.peer_id, "m1", 2, 4, False)
    for step, (pos, n) in enumerate(PASSES):
        x_in, x_out = torch.randn(1, n, 8), torch.randn(1, n, 8)
        hop.taps[step] = Tap(step, pos, x_in, x_out, None, ident.sign(tap_digest("m1", step, pos, x_in, x_out, None)))
    return hop


def head_hop(ident: Identity) -> HopTaps:
    hop = HopTaps(ident.peer_id, "h1", 4, 6, True)
    for step, (pos, n) in enumerate(PASSES):
        x_in = torch.randn(1, n, 8)
        tok = 40 if step == 0 else [50 + 10 * step + j for j in range(n)]  # a verify pass: a token per row
        hop.taps[step] = Tap(step, pos, x_in, None, tok,
                             ident.sign(tap_digest("h1", step, pos, x_in, None, tok, SAMPLING)))
    return hop


def test_middle_evidence_keeps_the_rows_that_stayed():
    ident = Identity.generate()
    hop = middle_hop(ident)
    check = lambda m, s: verify_by_peer_id(ident.peer_id, m, s)  # noqa: E731
    x_in, x_out = check_evidence(evidence(hop, 2), check)
    t = hop.taps
    assert torch.equal(x_in, torch.cat([t[0].x_in, t[1].x_in[:, :2], t[2].x_in], 1))
    assert torch.equal(x_out, torch.cat([t[0].x_out, t[1].x_out[:, :2], t[2].x_out], 1))
    ev = evidence(hop, 2)
    ev["out"] = ev["out"].clone()
    ev["out"][0, 5, 0] += 1.0  # a rejected row is signed too: a client cannot alter it either
    with pytest.raises(ValueError, match="signature"):
        check_evidence(ev, check)


def test_head_evidence_claims_a_token_per_kept_row():
    ident = Identity.generate()
    check = lambda m, s: verify_by_peer_id(ident.peer_id, m, s)  # noqa: E731
    x_in, claims = check_head_evidence(head_evidence(head_hop(ident), 2, SAMPLING), check)
    assert x_in.shape == (1, 7, 8)
    assert claims == [(2, 0, 40), (3, 3, 60), (4, 4, 61), (5, 5, 70), (6, 6, 71)]


def test_steps_that_do_not_tile_are_refused():
    ident = Identity.generate()
    hop = middle_hop(ident)
    check = lambda m, s: verify_by_peer_id(ident.peer_id, m, s)  # noqa: E731
    ev = evidence(HopTaps(hop.peer, "m1", 2, 4, False, {0: hop.taps[0], 2: hop.taps[2]}), 2)
    with pytest.raises(ValueError, match="tile"):  # a gap: positions 3..4 missing
        check_evidence(ev, check)
