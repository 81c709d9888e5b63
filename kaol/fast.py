"""Exact loss and gradients of the simplified model (Sec. 2) without autograd, in the token basis.

Orthogonal embeddings make the attention output ``h = X S`` a combination of the
2-4 tokens of the input, ``h = sum_l a_l e_{t_l}`` with ``a_l = S_l rho_{t_l}``, so the
pre-activations of every neuron are ``sum_l a_l V[t_l]``: each input reads only the
2-4 rows of ``V`` (one per token, ``m x T`` values each) that its tokens select. One
compiled loop (``numba``) goes over the inputs of every run; per input it forms the
``m x T`` pre-activations in a small buffer, the logits, the loss and, from the same
buffer, the gradients of the rows of ``V`` it read, so nothing of size
``inputs x m x T`` is ever stored. The attention and its gradient stay in torch.

The gradients are the explicit form of Lemma 1. With ``g_j = lambda (p_j - y_j)``
(times the sample weight) and ``1_{jn} = 1[<v_{j,n}, h> > 0]``::

    dL/dv_{j,n} = sum_i g_{ij} 1_{ijn} h_i
    dL/dS_l     = <X^T dL/dh, e_l> with dL/dh = sum_{j,n} g_j 1_{jn} v_{j,n}
    dL/dW       = sum_i sum_l S_l (dL/dS_l - sum_k S_k dL/dS_k) x_l x_L^T

The loop is serial, so every result is bit-identical from run to run.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numba import njit

from .data import Samples


@dataclass
class Batch:
    """The inputs of ``B`` runs, padded to a common ``n`` rows.

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
    w_idx: torch.Tensor    # flat index of W[b, t_l, t_L] for every token of every row
    rows: torch.Tensor     # (U,) the tokens that occur in some input: the rows of V with a gradient
    slot: torch.Tensor     # (T,) position of each token in ``rows``, -1 for the others

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
        _check_inputs(runs, rhos, T)
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
        w_idx = ((tokens + T * torch.arange(B)[:, None, None]) * T + tokens[..., -1:]).reshape(-1)
        rows = torch.unique(tokens[mask])
        slot = torch.full((T,), -1, dtype=torch.long)
        slot[rows] = torch.arange(len(rows))
        return Batch(tokens, mask, r, rho_b, y_idx.view(B * n, k), y_prob.view(B * n, k), w, kind, fact, T,
                     w_idx, rows, slot)


def _check_inputs(runs: list[Samples], rhos: list[torch.Tensor], T: int) -> None:
    """The compiled loop reads ``V`` at token and target ids without bounds checks: check them once
    here (ids in ``[0, T)``, finite positive norms), so a bad input is an error, not a crash."""
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise TypeError(f"T = {T!r} must be an int >= 1 (the vocabulary size)")
    if not runs:
        raise ValueError("samples = []: pass at least one Samples")
    if len(rhos) != len(runs):
        raise ValueError(f"rho holds {len(rhos)} tensors for {len(runs)} runs: pass one per run (or one shared)")
    for b, (s, r) in enumerate(zip(runs, rhos)):
        if tuple(r.shape) != (T,):
            raise ValueError(f"rho[{b}] has shape {tuple(r.shape)}, not ({T},): one norm per token")
        if not bool(torch.isfinite(r).all()) or not bool((r > 0).all()):
            raise ValueError(f"rho[{b}] must hold finite norms > 0, got min {float(r.min()):g}, max {float(r.max()):g}")
        if len(s) == 0:
            continue
        for name, ids in (("token ids", s.tokens[s.mask]), ("target ids", s.y_idx)):
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= T):
                raise ValueError(f"run {b}: {name} must lie in [0, {T}), got [{int(ids.min())}, {int(ids.max())}]")
        if not bool(torch.isfinite(s.y_prob).all()) or not bool(torch.isfinite(s.weight).all()) \
                or float(s.weight.sum()) <= 0:
            raise ValueError(f"run {b}: target probabilities and weights must be finite, with a positive total weight")


@dataclass
class Pass:
    """One forward (and optionally backward) pass over a ``Batch``."""

    loss: torch.Tensor          # (B,) weighted mean cross-entropy of each run
    ce: torch.Tensor            # (B, n) cross-entropy of each row
    S: torch.Tensor             # (B, n, L) attention of the last token
    logits: torch.Tensor        # (B, n, T)
    gW: torch.Tensor | None = None
    gV_rows: torch.Tensor | None = None   # (B, U, m, T): dL/dV[:, rows], the only rows that are not 0
    rows: torch.Tensor | None = None      # (U,) = ``Batch.rows``

    @property
    def gV(self) -> torch.Tensor | None:
        """The whole ``dL/dV`` (B, T, m, T), zero outside ``rows``."""
        return None if self.gV_rows is None else whole(self.gV_rows, self.rows)


def whole(g_rows: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """A V gradient (B, U, m, T) given on the rows ``rows`` at its full size (B, T, m, T)."""
    B, _, m, T = g_rows.shape
    full = g_rows.new_zeros(B, T, m, T)
    full[:, rows] = g_rows
    return full


def attention(W: torch.Tensor, batch: Batch) -> torch.Tensor:
    """``S = softmax(X^T W x_L)`` for every row (Sec. 2)."""
    xx = batch.r * batch.r[..., -1:]
    scores = W.reshape(-1)[batch.w_idx].view_as(xx) * xx
    return torch.softmax(scores.masked_fill(~batch.mask, float("-inf")), -1)


def run(W: torch.Tensor, V: torch.Tensor, batch: Batch, lam: float, grad: bool = True,
        grad_W: bool = True, S: torch.Tensor | None = None) -> Pass:
    """Loss, logits and (if ``grad``) the exact gradients of ``W`` (B, T, T) and of the rows of
    ``V`` (B, T, m, T) that the inputs read (``Pass.gV_rows``; ``Pass.gV`` is the whole of it).

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
    a = (S * batch.r).detach().contiguous()
    z = torch.empty(B, n, T, dtype=V.dtype)
    ce = torch.empty(B, n, dtype=V.dtype)
    gV = torch.zeros(B, len(batch.rows) if grad else 0, m, T, dtype=V.dtype)
    da = torch.zeros_like(a)
    _rows(batch.tokens.numpy(), a.numpy(), V.detach().contiguous().numpy(), batch.y_idx.view(B, n, -1).numpy(),
          batch.y_prob.view(B, n, -1).numpy(), batch.w.numpy(), lam, grad, grad and grad_W, batch.slot.numpy(),
          z.numpy(), ce.numpy(), gV.numpy(), da.numpy())
    out = Pass((batch.w * ce).sum(1), ce, S, z)
    if grad:
        out.gV_rows, out.rows = gV, batch.rows
    if grad and grad_W:
        dS = da * batch.r
        dscore = S * (dS - (S * dS).sum(-1, keepdim=True)) * batch.r * batch.r[..., -1:]
        out.gW = torch.zeros(B * T * T, dtype=V.dtype).index_add_(0, batch.w_idx, dscore.reshape(-1)).view(B, T, T)
    return out


@njit(cache=True, fastmath={"reassoc", "contract", "arcp"}, boundscheck=False)
def _rows(tok: np.ndarray, a: np.ndarray, V: np.ndarray, y_idx: np.ndarray, y_prob: np.ndarray,
          w: np.ndarray, lam: float, grad: bool, grad_a: bool, slot: np.ndarray,
          z: np.ndarray, ce: np.ndarray, gV: np.ndarray, da: np.ndarray) -> None:  # pragma: no cover
    """The loop behind ``run``: for every row ``i`` of every run ``b``, the pre-activations
    ``pre[n, j] = sum_l a_l V[b, t_l, n, j]``, the logits ``z = lam sum_n ReLU(pre)``
    (Sec. 2), the cross-entropy, and (``grad``) Lemma 1's ``dL/dV`` rows and
    ``dL/da_l = sum_{n,j} g_j 1[pre > 0] V[b, t_l, n, j]`` (``grad_a``), written into the
    output arrays ``z``, ``ce``, ``gV`` (zeroed by the caller; its row ``slot[t]`` holds
    ``dL/dV[b, t]``) and ``da``."""
    B, n, L = tok.shape
    T, m = V.shape[1], V.shape[2]
    pre = np.empty((m, T), V.dtype)
    g = np.empty(T, V.dtype)
    zero = pre.dtype.type(0)
    for b in range(B):
        for i in range(n):
            pre[:] = zero
            for l in range(L):
                al, Vl = a[b, i, l], V[b, tok[b, i, l]]
                if al != 0:
                    for q in range(m):
                        for j in range(T):
                            pre[q, j] += al * Vl[q, j]
            zi = z[b, i]
            zi[:] = zero
            for q in range(m):
                for j in range(T):
                    zi[j] += max(pre[q, j], zero)
            for j in range(T):
                zi[j] *= lam
            mx = zi.max()
            se = zero
            for j in range(T):
                g[j] = np.exp(zi[j] - mx)
                se += g[j]
            lse = mx + np.log(se)
            c = zero
            for k in range(y_idx.shape[2]):
                c -= y_prob[b, i, k] * (zi[y_idx[b, i, k]] - lse)
            ce[b, i] = c
            if not grad or w[b, i] == 0:
                continue
            g /= se                                        # p
            for k in range(y_idx.shape[2]):
                g[y_idx[b, i, k]] -= y_prob[b, i, k]       # p - y
            g *= lam * w[b, i]
            for q in range(m):                             # pre <- g_j 1[pre > 0]
                for j in range(T):
                    pre[q, j] = g[j] if pre[q, j] > 0 else zero
            for l in range(L):
                al = a[b, i, l]
                if al == 0:
                    continue
                Vl, gl = V[b, tok[b, i, l]], gV[b, slot[tok[b, i, l]]]
                acc = zero
                for q in range(m):
                    for j in range(T):
                        gl[q, j] += al * pre[q, j]
                        acc += pre[q, j] * Vl[q, j]
                if grad_a:
                    da[b, i, l] = acc
