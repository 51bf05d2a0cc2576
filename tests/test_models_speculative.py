"""Speculative decoding, the pure parts: prompt-lookup drafts, the acceptance rules, adaptive k, and
greedy speculative decoding on builtin:tiny equal to plain decoding (KV caches rolled back)."""

from __future__ import annotations

import pytest
import torch

from swarmlm.models.generate import generate, load_chain
from swarmlm.models.sampling import SamplingParams
from swarmlm.models.speculative import AdaptiveK, PromptLookup, accept_exact, accept_sampled, speculative_generate


def test_prompt_lookup_drafts_what_followed_the_last_ngram():
    d = PromptLookup(max_ngram=2)
    toks = [5, 6, 7, 8, 9, 1, 6, 7]
    assert d.draft(toks, 3) == [8, 9, 1]  # "6 7" was followed by 8 9 1
    assert d.draft([1, 2, 3], 4) == []  # nothing repeats
    assert d.draft([4, 9, 4, 1, 4], 2) == [1, 4]  # the most recent occurrence of "4" wins
    assert d.draft(toks, 0) == []


def test_accept_exact_keeps_the_matching_prefix():
    assert accept_exact([3, 4, 5], [3, 4, 9, 7]) == 2
    assert accept_exact([3, 4], [3, 4, 8]) == 2
    assert accept_exact([], [1]) == 0
    with pytest.raises(ValueError):
        accept_exact([1], [1])


def test_accept_sampled_keeps_the_target_distribution():
    """A one-hot draft (prompt lookup) that is often wrong: the first token's law must stay p."""
    p = torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.2, 0.6]])
    q = torch.tensor([[0.0, 0.0, 1.0]])  # always drafts token 2
    gen = torch.Generator().manual_seed(7)
    counts = torch.zeros(3)
    n = 6000
    for _ in range(n):
        a, nxt = accept_sampled(p, q, [2], gen)
        counts[2 if a == 1 else nxt] += 1
    freq = counts / n
    assert torch.allclose(freq, p[0], atol=0.025), freq
    a, nxt = accept_sampled(torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]), q, [2], gen)
    assert (a, nxt) == (1, 0)  # a certain draft is kept; the bonus token comes from the last row


def test_adaptive_k_follows_acceptance():
    ad = AdaptiveK(k_min=1, k_max=8, k=4)
    for _ in range(10):
        ad.update(ad.k, ad.k)
    assert ad.k == 8 and ad.acceptance == 1.0
    for _ in range(15):
        ad.update(ad.k, 0)
    assert ad.k == 1


@pytest.mark.parametrize("n_shards", [1, 2])
def test_greedy_speculative_equals_plain_decoding(n_shards):
    shards = load_chain("builtin:tiny", n_shards)
    prompt = [1, 5, 9, 13, 67, 67, 3, 4, 60, 69, 99, 5, 9, 13, 5, 9, 2, 7, 5, 9]
    params = SamplingParams(max_new_tokens=24)
    plain = generate(shards, prompt, params, eos_ids=[]).token_ids
    spec, stats = speculative_generate(shards, prompt, params, eos_ids=[])
    assert spec == plain
    assert 0 < stats.accepted < stats.proposed  # drafts were kept and drafts were rejected (rolled back)
    assert stats.passes < len(plain)
