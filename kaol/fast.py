"""Exact loss and gradients of the simplified model (Sec. 2) without autograd, in the token basis.

Orthogonal embeddings make the attention output ``h = X S`` a combination of the
2-4 tokens of the input, ``h = sum_l a_l e_{t_l}`` with ``a_l = S_l rho_{t_l}``, so the
pre-activations of every neuron are ``sum_l a_l V[t_l]``: each input reads only the
2-4 rows of ``V`` (one per token, ``m x T`` values each) that its tokens select. One
compiled loop (``numba``) goes over the inputs of every run; per input it forms the
``m x T`` pre-activations in a small buffer, the logits, the loss and, from the same
buffer, the gradients of the rows of ``V`` it read, so nothing of size
``inputs x m x T`` is ever stored. The attention, its gradient and the update are
compiled loops too.

The gradients are the explicit form of Lemma 1. With ``g_j = lambda (p_j - y_j)``
(times the sample weight) and ``1_{jn} = 1[<v_{j,n}, h> > 0]``::

    dL/dv_{j,n} = sum_i g_{ij} 1_{ijn} h_i
    dL/dS_l     = <X^T dL/dh, e_l> with dL/dh = sum_{j,n} g_j 1_{jn} v_{j,n}
    dL/dW       = sum_i sum_l S_l (dL/dS_l - sum_k S_k dL/dS_k) x_l x_L^T

Every result is bit-identical on any x86-64 CPU and for any thread count: the loops are
compiled without fast-math (no reassociation, no fused multiply-add contraction), every
sum runs in a fixed order, and ``exp`` and ``log`` are our own polynomials (``_exp``,
``_log``) rather than the C library's, whose results depend on the CPU's instruction set.
"""
from __future__ import annotations

from dataclasses import dataclass

import math

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
            w[b, :m] = (s.weight / math.fsum(s.weight.tolist())).to(dtype)   # fsum: exactly rounded
        rho_b = torch.stack(rhos).to(dtype)
        r = rho_b.gather(1, tokens.view(B, -1)).view(B, n, L) * mask
        rows = torch.unique(tokens[mask])
        slot = torch.full((T,), -1, dtype=torch.long)
        slot[rows] = torch.arange(len(rows))
        return Batch(tokens, mask, r, rho_b, y_idx.view(B * n, k), y_prob.view(B * n, k), w, kind, fact, T,
                     rows, slot)


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
    S = torch.empty(batch.r.shape, dtype=W.dtype)
    _attention(batch.tokens.numpy(), batch.r.numpy(), W.detach().contiguous().numpy(), S.numpy())
    return S


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
    z = torch.empty(B, n, T, dtype=V.dtype)
    ce = torch.empty(B, n, dtype=V.dtype)
    loss = torch.empty(B, dtype=V.dtype)
    gV = torch.zeros(B, len(batch.rows) if grad else 0, m, T, dtype=V.dtype)
    gW = torch.zeros(B, T, T if grad and grad_W else 0, dtype=V.dtype)
    _rows(batch.tokens.numpy(), S.detach().contiguous().numpy(), batch.r.numpy(), V.detach().contiguous().numpy(),
          batch.y_idx.view(B, n, -1).numpy(), batch.y_prob.view(B, n, -1).numpy(), batch.w.numpy(), lam, grad,
          grad and grad_W, batch.slot.numpy(), z.numpy(), ce.numpy(), loss.numpy(), gV.numpy(), gW.numpy())
    out = Pass(loss, ce, S, z)
    if grad:
        out.gV_rows, out.rows = gV, batch.rows
    if grad and grad_W:
        out.gW = gW
    return out


def descend(P: torch.Tensor, G: torch.Tensor, eta: float, rows: torch.Tensor | None = None) -> None:
    """The gradient step ``p <- p - eta g`` in place (Sec. 4); with ``rows``, ``G`` (B, U, ...)
    holds the gradient of the rows ``rows`` of ``P`` (B, T, ...) and only those change."""
    B, T = P.shape[:2]
    rows = torch.arange(T) if rows is None else rows
    _descend(P.view(B, T, -1).numpy(), G.reshape(B, len(rows), -1).numpy(), rows.numpy(), eta)


LN2_HI, LN2_LO = 6.93147180369123816490e-01, 1.90821492927058770002e-10   # fdlibm's split of log 2
INV_LN2 = 1.44269504088896338700e+00


@njit(cache=True)
def _exp(x: float) -> float:  # pragma: no cover
    """``e^x`` in float64 for ``x <= 0`` (softmax arguments), to about 1 ulp, from IEEE
    operations only: ``x = k log 2 + r`` with ``|r| <= log(2) / 2`` and a degree-13 Taylor
    polynomial of ``e^r`` in Horner form."""
    if x < -745.2:
        return 0.0
    k = math.floor(x * INV_LN2 + 0.5)
    r = (x - k * LN2_HI) - k * LN2_LO
    p = 1.0 / 6227020800.0
    for d in (479001600.0, 39916800.0, 3628800.0, 362880.0, 40320.0, 5040.0, 720.0, 120.0, 24.0, 6.0, 2.0,
              1.0, 1.0):
        p = p * r + 1.0 / d
    return math.ldexp(p, int(k))


@njit(cache=True)
def _log(x: float) -> float:  # pragma: no cover
    """``log x`` in float64 for ``x > 0``, to about 1 ulp, from IEEE operations only:
    ``x = 2^e f`` with ``f`` in ``[sqrt(1/2), sqrt(2))`` and ``log f = 2 atanh(s)``,
    ``s = (f - 1) / (f + 1)``, ``|s| < 0.172``, by its odd series to ``s^23``."""
    f, e = math.frexp(x)
    if f < 0.7071067811865476:
        f, e = 2.0 * f, e - 1
    s = (f - 1.0) / (f + 1.0)
    s2 = s * s
    p = 1.0 / 23.0
    for d in (21.0, 19.0, 17.0, 15.0, 13.0, 11.0, 9.0, 7.0, 5.0, 3.0, 1.0):
        p = p * s2 + 1.0 / d
    return (e * LN2_HI + 2.0 * s * p) + e * LN2_LO


@njit(cache=True, boundscheck=False)
def _attention(tok: np.ndarray, r: np.ndarray, W: np.ndarray, S: np.ndarray) -> None:  # pragma: no cover
    """``S_l = softmax_l(W[b, t_l, t_L] rho_l rho_L)`` over the real tokens (``r > 0``) of every
    row (Sec. 2), in float64, written into ``S``."""
    B, n, L = tok.shape
    e = np.empty(L)
    for b in range(B):
        for i in range(n):
            rL, tL = r[b, i, L - 1], tok[b, i, L - 1]
            mx = -np.inf
            for l in range(L):
                if r[b, i, l] != 0:
                    e[l] = W[b, tok[b, i, l], tL] * (r[b, i, l] * rL)
                    mx = max(mx, e[l])
            se = 0.0
            for l in range(L):
                if r[b, i, l] != 0:
                    e[l] = _exp(e[l] - mx)
                    se += e[l]
            for l in range(L):
                S[b, i, l] = e[l] / se if r[b, i, l] != 0 else 0.0


@njit(cache=True, boundscheck=False)
def _rows(tok: np.ndarray, S: np.ndarray, r: np.ndarray, V: np.ndarray, y_idx: np.ndarray, y_prob: np.ndarray,
          w: np.ndarray, lam: float, grad: bool, grad_W: bool, slot: np.ndarray, z: np.ndarray, ce: np.ndarray,
          loss: np.ndarray, gV: np.ndarray, gW: np.ndarray) -> None:  # pragma: no cover
    """The loop behind ``run``: for every row ``i`` of every run ``b``, with ``a_l = S_l rho_l``,
    the pre-activations ``pre[n, j] = sum_l a_l V[b, t_l, n, j]``, the logits
    ``z = lam sum_n ReLU(pre)`` (Sec. 2), the cross-entropy and the loss ``sum_i w_i CE_i``;
    with ``grad``, Lemma 1's ``dL/dV`` rows (row ``slot[t]`` of ``gV``, zeroed by the caller,
    holds ``dL/dV[b, t]``) and (``grad_W``) ``dL/dW[b, t_l, t_L] += S_l (dS_l - sum_k S_k dS_k)
    rho_l rho_L`` with ``dS_l = rho_l sum_{n,j} g_j 1[pre > 0] V[b, t_l, n, j]``."""
    B, n, L = tok.shape
    T, m = V.shape[1], V.shape[2]
    pre = np.empty((m, T), V.dtype)
    g = np.empty(T)
    a = np.empty(L, V.dtype)
    dS = np.empty(L, V.dtype)
    zero = pre.dtype.type(0)
    for b in range(B):
        total = 0.0
        for i in range(n):
            pre[:] = zero
            for l in range(L):
                a[l] = S[b, i, l] * r[b, i, l]
                al, Vl = a[l], V[b, tok[b, i, l]]
                if al != 0:
                    for k in range(m):
                        for j in range(T):
                            pre[k, j] += al * Vl[k, j]
            zi = z[b, i]
            zi[:] = zero
            for k in range(m):
                for j in range(T):
                    zi[j] += max(pre[k, j], zero)
            for j in range(T):
                zi[j] *= lam
            mx = float(zi.max())
            se = 0.0
            for j in range(T):
                g[j] = _exp(zi[j] - mx)
                se += g[j]
            lse = mx + _log(se)
            c = 0.0
            for k in range(y_idx.shape[2]):
                c -= y_prob[b, i, k] * (zi[y_idx[b, i, k]] - lse)
            ce[b, i] = c
            total += w[b, i] * ce[b, i]
            if not grad or w[b, i] == 0:
                continue
            for j in range(T):
                g[j] /= se                                     # p
            for k in range(y_idx.shape[2]):
                g[y_idx[b, i, k]] -= y_prob[b, i, k]           # p - y
            gw = lam * w[b, i]
            for k in range(m):                                 # pre <- g_j 1[pre > 0]
                for j in range(T):
                    pre[k, j] = g[j] * gw if pre[k, j] > 0 else zero
            sdS = zero
            for l in range(L):
                al = a[l]
                dS[l] = zero
                if al == 0:
                    continue
                Vl, gl = V[b, tok[b, i, l]], gV[b, slot[tok[b, i, l]]]
                acc = zero
                for k in range(m):
                    for j in range(T):
                        gl[k, j] += al * pre[k, j]
                        acc += pre[k, j] * Vl[k, j]
                dS[l] = acc * r[b, i, l]
                sdS += S[b, i, l] * dS[l]
            if grad_W:
                rL, tL = r[b, i, L - 1], tok[b, i, L - 1]
                for l in range(L):
                    if a[l] != 0:
                        gW[b, tok[b, i, l], tL] += S[b, i, l] * (dS[l] - sdS) * r[b, i, l] * rL
        loss[b] = total


@njit(cache=True, boundscheck=False)
def _descend(P: np.ndarray, G: np.ndarray, rows: np.ndarray, eta: float) -> None:  # pragma: no cover
    """``P[b, rows[u]] -= eta G[b, u]`` for every run ``b`` and row ``u`` (the step of Sec. 4)."""
    step = P.dtype.type(-eta)
    for b in range(P.shape[0]):
        for u in range(len(rows)):
            p, g = P[b, rows[u]], G[b, u]
            for k in range(P.shape[2]):
                p[k] += g[k] * step
