"""Exact loss and gradients of the simplified model (Sec. 2) without autograd, in the token basis.

Orthogonal embeddings make the attention output ``h = X S`` a combination of the
2-4 tokens of the input, ``h = sum_l a_l e_{t_l}`` with ``a_l = S_l rho_{t_l}``. Stacked
over all inputs of all runs, the weights ``a`` form a sparse matrix ``A`` with L
entries per row, and the MLP pre-activations of every neuron are ``A @ V`` (one
sparse product that reads only the columns of ``V`` the inputs use). Runs are
stacked block-diagonally: run ``b`` owns rows ``b n .. (b+1) n`` of ``A`` and rows
``b T .. (b+1) T`` of ``V``.

The gradients are the explicit form of Lemma 1. With ``g_j = lambda (p_j - y_j)``
(times the sample weight) and ``1_{jn} = 1[<v_{j,n}, h> > 0]``::

    dL/dv_{j,n} = sum_i g_{ij} 1_{ijn} h_i
    dL/dS_l     = <X^T dL/dh, e_l> with dL/dh = sum_{j,n} g_j 1_{jn} v_{j,n}
    dL/dW       = sum_i sum_l S_l (dL/dS_l - sum_k S_k dL/dS_k) x_l x_L^T
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .data import Samples

warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
warnings.filterwarnings("ignore", message=".*Sparse invariant checks are implicitly disabled.*")


@dataclass
class Batch:
    """The inputs of ``B`` runs, padded to a common ``n`` rows, with the sparse structure.

    ``w`` holds each row's weight divided by its run's total weight, so the loss of
    run ``b`` is ``sum_i w[b, i] CE_i`` (the weighted mean of App. J).
    """

    tokens: torch.Tensor   # (B, n, L)
    mask: torch.Tensor     # (B, n, L)
    r: torch.Tensor        # (B, n, L) rho of each token, 0 on padding
    rho: torch.Tensor      # (B, T) embedding norms of each run
    y_idx: torch.Tensor    # (B*n, k)
    y_prob: torch.Tensor   # (B*n, k)
    w: torch.Tensor        # (B, n)
    kind: torch.Tensor     # (B, n), -1 on padding rows
    fact: torch.Tensor     # (B, n)
    T: int
    crow: torch.Tensor     # CSR structure of A, (B n) x (B T)
    col: torch.Tensor
    t_perm: torch.Tensor   # CSR structure of A^T: its values are A's values [t_perm]
    t_crow: torch.Tensor
    t_col: torch.Tensor
    w_idx: torch.Tensor    # flat index of W[b, t_l, t_L] for every entry of A

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.tokens.shape)  # type: ignore[return-value]

    @staticmethod
    def build(samples: Samples | list[Samples], T: int, rho: torch.Tensor | list[torch.Tensor],
              dtype: torch.dtype, B: int | None = None) -> "Batch":
        """Stack one ``Samples`` per run (or one shared by ``B`` runs) into a ``Batch``;
        ``rho`` holds the embedding norms, shared or one tensor per run."""
        runs = samples if isinstance(samples, list) else [samples] * (B or 1)
        rhos = rho if isinstance(rho, list) else [rho] * len(runs)
        B, n, L = len(runs), max(len(s) for s in runs), max(s.tokens.shape[1] for s in runs)
        k = max(s.y_idx.shape[1] for s in runs)
        tokens = torch.zeros(B, n, L, dtype=torch.long)
        mask = torch.zeros(B, n, L, dtype=torch.bool)
        mask[:, :, -1] = True                      # padding rows: one dummy token, weight 0
        y_idx = torch.zeros(B, n, k, dtype=torch.long)
        y_prob = torch.zeros(B, n, k, dtype=dtype)
        w = torch.zeros(B, n, dtype=dtype)
        kind = torch.full((B, n), -1, dtype=torch.long)
        fact = torch.full((B, n), -1, dtype=torch.long)
        for b, s in enumerate(runs):
            m, kk, ll = len(s), s.y_idx.shape[1], s.tokens.shape[1]
            tokens[b, :m, L - ll:], mask[b, :m, L - ll:] = s.tokens, s.mask
            mask[b, :m, :L - ll] = False
            kind[b, :m], fact[b, :m] = s.kind, s.fact
            y_idx[b, :m, :kk], y_prob[b, :m, :kk] = s.y_idx, s.y_prob.to(dtype)
            w[b, :m] = (s.weight / s.weight.sum()).to(dtype)
        rho_b = torch.stack(rhos).to(dtype)
        r = rho_b.gather(1, tokens.view(B, -1)).view(B, n, L) * mask
        col = (tokens + T * torch.arange(B)[:, None, None]).reshape(-1)
        crow = torch.arange(0, B * n * L + 1, L)
        row = torch.arange(B * n).repeat_interleave(L)
        t_perm = torch.argsort(col, stable=True)
        t_crow = torch.zeros(B * T + 1, dtype=torch.long)
        t_crow[1:] = torch.bincount(col, minlength=B * T).cumsum(0)
        w_idx = (col.view(B, n, L) * T + tokens[..., -1:]).reshape(-1)
        return Batch(tokens, mask, r, rho_b, y_idx.view(B * n, k), y_prob.view(B * n, k), w, kind, fact, T,
                     crow, col, t_perm, t_crow, row[t_perm], w_idx)


@dataclass
class Pass:
    """One forward (and optionally backward) pass over a ``Batch``."""

    loss: torch.Tensor          # (B,) weighted mean cross-entropy of each run
    ce: torch.Tensor            # (B, n) cross-entropy of each row
    S: torch.Tensor             # (B, n, L) attention of the last token
    logits: torch.Tensor        # (B, n, T)
    gW: torch.Tensor | None = None
    gV: torch.Tensor | None = None


def attention(W: torch.Tensor, batch: Batch) -> torch.Tensor:
    """``S = softmax(X^T W x_L)`` for every row (Sec. 2)."""
    B, T = W.shape[:2]
    xx = batch.r * batch.r[..., -1:]
    scores = W.reshape(-1)[batch.w_idx].view_as(xx) * xx
    return torch.softmax(scores.masked_fill(~batch.mask, float("-inf")), -1)


def run(W: torch.Tensor, V: torch.Tensor, batch: Batch, lam: float, grad: bool = True,
        grad_W: bool = True, S: torch.Tensor | None = None) -> Pass:
    """Loss, logits and (if ``grad``) the exact gradients of ``W`` (B, T, T) and ``V`` (B, T, m, T).

    ``S`` may be passed when ``W`` is fixed (fine-tuning) to skip the attention.
    """
    B, T, m, _ = V.shape
    n, L = batch.shape[1:]
    if (B, T) != (batch.shape[0], batch.T) or W.shape != (B, T, T) or V.shape[3] != T:
        raise ValueError(f"parameters W {tuple(W.shape)} and V {tuple(V.shape)} do not fit a batch of "
                         f"{batch.shape[0]} runs over a vocabulary of {batch.T} tokens")
    if V.dtype != batch.r.dtype:
        raise ValueError(f"parameters are {V.dtype} but the batch was built for {batch.r.dtype}")
    S = attention(W, batch) if S is None else S
    a = (S * batch.r).reshape(-1)
    Vf = V.reshape(B * T, m * T)
    # Rows of A @ V: the embedding bag sums the L rows of V an input uses, weighted by a.
    act = F.embedding_bag(batch.col.view(B * n, L), Vf, per_sample_weights=a.view(B * n, L), mode="sum")
    act = act.clamp_min_(0).view(B * n, m, T)                    # ReLU(<v_{j,n}, h>), in place
    z = lam * act.sum(1)
    logp = torch.log_softmax(z, -1)
    ce = -(batch.y_prob * logp.gather(1, batch.y_idx)).sum(1).view(B, n)
    out = Pass((batch.w * ce).sum(1), ce, S, z.view(B, n, T))
    if not grad:
        return out
    g = logp.exp_().scatter_add_(1, batch.y_idx, -batch.y_prob)   # p - y
    g.mul_(lam * batch.w.view(-1, 1))
    dpre = act.sign_().mul_(g[:, None, :]).view(B * n, m * T)    # g_j 1[<v_{j,n}, h> > 0], in place
    At = torch.sparse_csr_tensor(batch.t_crow, batch.t_col, a[batch.t_perm], (B * T, B * n))
    out.gV = (At @ dpre).view(B, T, m, T)
    if grad_W:
        pattern = torch.sparse_csr_tensor(batch.crow, batch.col, torch.zeros_like(a), (B * n, B * T))
        da = torch.sparse.sampled_addmm(pattern, dpre, Vf.t(), beta=0.0).values().view(B, n, L)
        dS = da * batch.r
        dscore = S * (dS - (S * dS).sum(-1, keepdim=True)) * batch.r * batch.r[..., -1:]
        out.gW = torch.zeros(B * T * T, dtype=V.dtype).index_add_(0, batch.w_idx, dscore.reshape(-1)).view(B, T, T)
    return out
