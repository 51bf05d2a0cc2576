"""Attacks on equivariant encryption, as pure functions, so their recovery rates can be measured.

Each attack returns a guess ``plain id for every encrypted id`` (or per position) and is scored
against the truth the experimenter knows. Used by ``swarmlm bench ee-attacks`` (docs/EE.md).

1. ``frequency_attack(observed, public_counts)``: rank-match the unigram counts of an observed
   encrypted token stream against public unigram statistics (a different corpus).
2. Weight matching with the public base model's embedding table ``E`` against the EE table ``E'``:
   - ``match_permuted_rows(E, E')`` (permute mode): sorting a row's values is invariant under a
     permutation of columns; exact (bytewise) join of the sorted rows;
   - ``match_rotated_rows(E, E')`` (rotate mode): row norms and the Gram matrix are invariant under
     an orthogonal ``Q``. Stage 1 ranks by norm; stage 2 compares, inside a window of similar norms,
     the sorted inner products with the ``anchors`` largest-norm rows; stage 3 solves orthogonal
     Procrustes for ``Q`` on the most confident quarter of the matches, re-matches every row as the
     nearest row of ``E' Q^T`` (whole table, 64-d random projection), and repeats that three times.
3. ``hidden_state_attack(...)``: the vocabulary-matching inversion of "Hidden No More" (2025) on
   obfuscated activations, adapted to our transforms. A shard server sees the residual stream
   entering its first layer, ``h Q`` (or ``h[:, p]``); holding the public base model it tries every
   vocabulary token at position ``t`` after the tokens recovered so far and keeps the candidate
   whose plaintext state has the same invariants: sorted values (permute) or the norm and the inner
   products with the earlier positions' states (rotate; ``Q`` preserves them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch


def unigram_counts(ids: Sequence[int] | torch.Tensor, vocab_size: int) -> torch.Tensor:
    t = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
    return torch.bincount(t, minlength=vocab_size)[:vocab_size].to(torch.float64)


def frequency_attack(observed_enc: Sequence[int] | torch.Tensor, public_counts: torch.Tensor) -> torch.Tensor:
    """guess[enc id] = plain id: the k-th most frequent encrypted id is read as the k-th public one."""
    V = public_counts.numel()
    obs = unigram_counts(observed_enc, V)
    # ties (e.g. unseen ids) keep a fixed order; a tiny id-dependent term makes sorting deterministic
    enc_order = torch.argsort(obs - torch.arange(V, dtype=torch.float64) * 1e-12, descending=True, stable=True)
    pub_order = torch.argsort(public_counts - torch.arange(V, dtype=torch.float64) * 1e-12, descending=True,
                              stable=True)
    guess = torch.empty(V, dtype=torch.long)
    guess[enc_order] = pub_order
    return guess


@dataclass(frozen=True)
class Recovery:
    token_rate: float  # fraction of observed token occurrences read correctly
    type_rate: float  # fraction of distinct observed ids mapped correctly

    def as_dict(self) -> dict[str, float]:
        return {"token_recovery": round(self.token_rate, 4), "type_recovery": round(self.type_rate, 4)}


def score_stream(guess: torch.Tensor, perm: torch.Tensor, plain_stream: torch.Tensor) -> Recovery:
    """How much of ``plain_stream`` the guess recovers from its encryption ``perm[plain_stream]``."""
    enc = perm[plain_stream]
    ok = guess[enc] == plain_stream
    types = torch.unique(plain_stream)
    return Recovery(float(ok.double().mean()), float((guess[perm[types]] == types).double().mean()))


def score_mapping(guess: torch.Tensor, perm: torch.Tensor, weights: torch.Tensor | None = None) -> float:
    """Fraction of vocabulary rows mapped right (``guess[perm[y]] == y``), optionally weighted."""
    y = torch.arange(perm.numel())
    ok = (guess[perm] == y).double()
    if weights is None:
        return float(ok.mean())
    w = weights.to(torch.float64)
    return float((ok * w).sum() / w.sum())


def match_permuted_rows(E: torch.Tensor, E_enc: torch.Tensor) -> torch.Tensor:
    """guess[enc row] = public row with the same sorted values (exact join; -1 when none)."""
    table: dict[bytes, int] = {}
    for i, row in enumerate(torch.sort(E.float(), dim=1).values):
        table.setdefault(row.numpy().tobytes(), i)
    enc_sorted = torch.sort(E_enc.float(), dim=1).values
    return torch.tensor([table.get(r.numpy().tobytes(), -1) for r in enc_sorted], dtype=torch.long)


def _window_match(feat: torch.Tensor, feat_enc: torch.Tensor, order: torch.Tensor, order_enc: torch.Tensor,
                  window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each encrypted row, the L1-nearest public row among ``window`` norm-neighbours.

    Returns (guess, distance) per encrypted row."""
    V = feat.shape[0]
    feat, feat_enc = feat.float(), feat_enc.float()
    w = min(window, V)
    lo = (torch.arange(V) - w // 2).clamp(0, V - w)
    idx = lo.unsqueeze(1) + torch.arange(w).unsqueeze(0)  # [V, w] positions in public norm order
    guess = torch.empty(V, dtype=torch.long)
    dist = torch.empty(V, dtype=torch.float32)
    b = max(1, int(4e6 // (w * feat.shape[1])))  # keep each [b, w, F] block small
    for s in range(0, V, b):
        rows = order_enc[s:s + b]
        cand = order[idx[s:s + b]]  # [b, w]
        d = (feat_enc[rows].unsqueeze(1) - feat[cand]).abs().sum(-1)  # [b, w]
        best = d.min(1)
        guess[rows] = cand.gather(1, best.indices.unsqueeze(1)).squeeze(1)
        dist[rows] = best.values
    return guess, dist


def _nearest(feat: torch.Tensor, feat_enc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each encrypted row, the L2-nearest public row over the whole table (blocked matmuls)."""
    f, fe = feat.float(), feat_enc.float()
    sq = (f * f).sum(1)
    guess = torch.empty(fe.shape[0], dtype=torch.long)
    dist = torch.empty(fe.shape[0], dtype=torch.float32)
    for s in range(0, fe.shape[0], 2048):
        x = fe[s:s + 2048]
        d = sq.unsqueeze(0) - 2.0 * (x @ f.T)  # ||y||^2 - 2 x.y  (+ ||x||^2, constant per row)
        best = d.min(1)
        guess[s:s + 2048] = best.indices
        dist[s:s + 2048] = best.values + (x * x).sum(1)
    return guess, dist


def match_rotated_rows(E: torch.Tensor, E_enc: torch.Tensor, anchors: int = 64, window: int = 64,
                       ) -> dict[str, torch.Tensor]:
    """The three stages' guesses (``norm``, ``gram``, ``procrustes``): guess[enc row] = public row."""
    E, Ee = E.double(), E_enc.double()
    n, ne = E.norm(dim=1), Ee.norm(dim=1)
    order, order_enc = torch.argsort(n, stable=True), torch.argsort(ne, stable=True)
    out: dict[str, torch.Tensor] = {}
    g = torch.empty(E.shape[0], dtype=torch.long)
    g[order_enc] = order
    out["norm"] = g
    # Gram signatures: inner products with the largest-norm rows (an invariant set), sorted
    a, ae = order[-anchors:], order_enc[-anchors:]
    sig = torch.sort(E @ E[a].T, dim=1).values
    sig_e = torch.sort(Ee @ Ee[ae].T, dim=1).values
    scale = float(n.mean())
    feat, feat_e = torch.cat([n.unsqueeze(1) * scale, sig], 1), torch.cat([ne.unsqueeze(1) * scale, sig_e], 1)
    gram, dist = _window_match(feat, feat_e, order, order_enc, window)
    out["gram"] = gram
    # the most confident quarter of the matches -> orthogonal Procrustes for Q -> nearest rows of
    # E' Q^T (full search in a 64-d random projection); repeated, each time on the new matches
    r = torch.randn(E.shape[1], 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    guess = gram
    for _ in range(3):
        conf = dist <= torch.quantile(dist, 0.25)
        if int(conf.sum()) < E.shape[1]:
            break
        u, _, vt = torch.linalg.svd(E[guess[conf]].T @ Ee[conf])
        guess, dist = _nearest(E @ r, Ee @ (u @ vt).T @ r)
    out["procrustes"] = guess
    return out


def hidden_state_attack(states_fn: Callable[[torch.Tensor], torch.Tensor], observed: torch.Tensor,
                        vocab_size: int, mode: str, candidates: torch.Tensor | None = None,
                        batch: int = 512) -> list[int]:
    """Recover the tokens behind the encrypted states ``observed`` ``[T, d]`` one position at a time.

    ``states_fn(ids [B, t+1]) -> [B, t+1, d]`` runs the attacker's *public* model up to the observed
    layer. Returns the recovered plaintext ids.
    """
    cands = candidates if candidates is not None else torch.arange(vocab_size)
    obs = observed.double()
    rec: list[int] = []
    for t in range(obs.shape[0]):
        best, best_d = -1, float("inf")
        for s in range(0, cands.numel(), batch):
            c = cands[s:s + batch]
            ids = torch.cat([torch.tensor(rec, dtype=torch.long).expand(c.numel(), t), c.unsqueeze(1)], 1)
            h = states_fn(ids).double()
            ht, prefix = h[:, t], h[0, :t]  # causal: the prefix states are the same for every candidate
            if mode == "permute":
                d = (torch.sort(ht, 1).values - torch.sort(obs[t]).values).abs().sum(1)
            else:
                d = (ht.norm(dim=1) - obs[t].norm()).abs()
                if t:
                    d = d + (ht @ prefix.T - obs[:t] @ obs[t]).abs().sum(1)
            i = int(d.argmin())
            if float(d[i]) < best_d:
                best, best_d = int(c[i]), float(d[i])
        rec.append(best)
    return rec
