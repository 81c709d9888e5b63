"""Fine-tuning's evaluation: the argmax of every test row's logits at every step (Sec. 4),
recomputed only where the step could have changed it.

Fine-tuning updates the rows of ``V`` of the tokens it trains on: the subjects of the
fine-tuned facts and the question token ``q``. A test row ``(s', q)`` of an unseen fact reads
``V[s']``, which never changes, and ``V[q]``, which does; its attention is fixed (``W`` does not
train). So between two steps its logits ``z_j = lam sum_n ReLU(a_s V[s', n, j] + a_q V[q, n, j])``
move by at most ``lam a_q sum_n |change of V[q, n, j]|`` (ReLU is 1-Lipschitz): a row whose
largest logit leads every other by more than these moves, plus the rounding of the float sums on
both sides, keeps its argmax, and is not recomputed. ``Predictions.pred`` returns exactly
``fast.run(...).pred`` (the same argmax, ties to the first index, a row recomputed whenever the
bound does not prove it unchanged), tested against it at every step. In the book's
fine-tuning (``DataConfig()``, 200 steps) about 3 of its 100 test rows are recomputed per
step (11 at five times the rate), and the evaluation of 200 steps takes 8-11 ms against
about 19 ms for the plain pass (``benchmarks/README.md``). ``web/kaol.js`` does the same in
the reader's browser.

The rounding bound: each product ``a_l V[t_l, n, j]`` reaches ``z_j`` through at most
``m + L + 2`` roundings (its product, the adds of the pre-activation and of the neuron sum, the
scaling by ``lam``), so the computed ``z_j`` lies within ``gamma_k lam P_j`` of the exact one,
``P_j = sum_n sum_l |a_l V[t_l, n, j]|``, ``gamma_k = k u / (1 - k u)`` (Higham, Accuracy and
Stability of Numerical Algorithms, Sec. 3.1), with ``u`` the unit roundoff of ``V``'s type;
``ERR_SLOTS`` counts the roundings generously, and an absolute term covers underflow.
"""
from __future__ import annotations

import numpy as np
import torch
from numba import njit

from . import fast
from .fast import _row, _weights

ERR_SLOTS = 4
"""Roundings counted on top of ``m + 2 L`` (at least ``m + L + 2`` are needed, see above)."""


class Predictions:
    """The argmax of the logits of every row of ``batch`` (``fast.run``'s ``pred``) for parameters
    ``V`` that change, between calls of ``pred``, only at the rows of ``V`` of the tokens
    ``moving`` (fine-tuning's rows: ``fast.Batch.rows`` of its training batch); the attention
    ``S`` is fixed. See the module's docstring."""

    def __init__(self, batch: fast.Batch, S: torch.Tensor, lam: float, moving: torch.Tensor) -> None:
        if not isinstance(batch, fast.Batch):
            raise TypeError(f"batch must be a fast.Batch, not {type(batch).__name__}")
        n, L = batch.shape
        if not isinstance(S, torch.Tensor) or tuple(S.shape) != (n, L) or S.dtype != batch.rho_tokens.dtype:
            raise ValueError(f"S must be the batch's fixed attention, ({n}, {L}) {batch.rho_tokens.dtype}, "
                             f"got {tuple(getattr(S, 'shape', ()))} {getattr(S, 'dtype', None)}")
        if not np.isfinite(lam):
            raise ValueError(f"lam = {lam} must be finite")
        vocab_size = batch.vocab_size
        ids = moving.numpy() if isinstance(moving, torch.Tensor) else np.asarray(moving)
        if ids.ndim != 1 or (len(ids) and (ids.min() < 0 or ids.max() >= vocab_size)):
            raise ValueError(f"moving must list token ids in [0, {vocab_size}), got {ids}")
        mov_ids = np.intersect1d(ids, batch.rows.numpy())       # moving tokens that some row reads
        self.batch, self.lam = batch, float(lam)
        self.S = S.contiguous().numpy()
        self.mov_ids = mov_ids.astype(np.int64)
        self.mov = np.full(vocab_size, -1, dtype=np.int64)
        self.mov[self.mov_ids] = np.arange(len(mov_ids))
        self.old: np.ndarray | None = None                     # V[mov_ids] at the last call
        self.C = np.zeros((len(mov_ids), vocab_size))          # sum over calls of sum_n |change of V[t, n, j]|
        self.R = np.zeros(len(mov_ids))                        # sum over calls of max_j of the same
        self.z = np.empty((n, vocab_size), dtype=batch.rho_tokens.numpy().dtype)   # logits when last computed
        self.err = np.full((n, vocab_size), np.nan)            # their rounding bound (NaN: not yet computed)
        self.lo, self.hi = np.full(n, np.nan), np.full(n, np.nan)   # largest logit minus, others plus 2 err
        self.C_at, self.R_at = np.zeros((n, L, vocab_size)), np.zeros((n, L))   # C and R when last computed
        self.out = np.zeros(n, dtype=np.int64)
        self.recomputed = 0                                    # rows computed, over all calls

    def pred(self, V: torch.Tensor) -> np.ndarray:
        """The argmax of every row's logits under ``V`` (vocab_size, m, vocab_size), an (n,) array
        (overwritten at the next call)."""
        b = self.batch
        if V.dim() != 3 or (V.shape[0], V.shape[2]) != (b.vocab_size, b.vocab_size) or V.dtype != b.rho_tokens.dtype:
            raise ValueError(f"V {tuple(V.shape)} {V.dtype} is not one run's (vocab_size, m, vocab_size) parameter over "
                             f"the batch's {b.vocab_size} tokens in {b.rho_tokens.dtype}")
        Vn = V.detach().contiguous().numpy()
        if self.old is None:
            self.old = Vn[self.mov_ids].copy()
            m, L = Vn.shape[1], b.shape[1]
            u = np.finfo(Vn.dtype).eps / 2
            k = m + 2 * L + ERR_SLOTS
            self.gamma = k * u / (1 - k * u)
            self.tiny = (2 * m * L + m + ERR_SLOTS) * float(np.finfo(Vn.dtype).smallest_subnormal) * max(1.0, abs(self.lam))
            self.arrays = (b.tokens.numpy(), b.rho_tokens.numpy(), self.S)
        elif Vn.shape[1] != self.old.shape[1]:
            raise ValueError(f"V has {Vn.shape[1]} neurons per output, not the {self.old.shape[1]} of the first call")
        self.recomputed += _predict(*self.arrays, Vn, self.lam, self.gamma, self.tiny, self.mov_ids, self.mov, self.old,
                                    self.C, self.R, self.z, self.err, self.lo, self.hi, self.C_at, self.R_at, self.out)
        return self.out


@njit(cache=True, boundscheck=False)
def _drift(V: np.ndarray, ids: np.ndarray, old: np.ndarray, C: np.ndarray, R: np.ndarray) -> None:  # pragma: no cover
    """Add ``sum_n |V[t, n, j] - old|`` to ``C[u, j]`` and its largest over ``j`` to ``R[u]`` for the
    ``u``-th moving token ``t = ids[u]``, in float64; then ``old <- V[ids]``."""
    for u in range(len(ids)):
        Vt, Ot = V[ids[u]], old[u]
        most = 0.0
        for j in range(V.shape[2]):
            d = 0.0
            for n in range(V.shape[1]):
                d += abs(float(Vt[n, j]) - float(Ot[n, j]))
            C[u, j] += d
            most = max(most, d)
        R[u] += most
        Ot[:] = Vt


SLACK = 1e-9
"""Relative slack on the moves, for the float64 rounding of their sums (at most about
``1e-12`` of the running totals ``C`` over thousands of steps)."""


@njit(cache=True, boundscheck=False)
def _unchanged(i: int, tok: np.ndarray, a: np.ndarray, mov: np.ndarray, C: np.ndarray, R: np.ndarray,
               z: np.ndarray, err: np.ndarray, lo: np.ndarray, hi: np.ndarray, C_at: np.ndarray, R_at: np.ndarray,
               pred: np.ndarray, lam: float, gamma: float, move: np.ndarray) -> bool:  # pragma: no cover
    """Whether row ``i``'s argmax ``pred[i]`` is proven unchanged: its stored largest logit, less
    its rounding bound (then and now) and its move, still exceeds every other logit plus theirs.
    First with the largest move of any ``j`` (``R``), then, if that does not prove it, ``j`` by ``j``
    (``move``: work space). A NaN anywhere proves nothing. The moves since the row was computed:
    ``lam sum_l a_l (C[t_l, j] - C_at[i, l, j])``, with a slack for the rounding of ``C``."""
    scale = abs(lam) * (1 + SLACK) * (1 + gamma)
    B = 0.0
    for l in range(tok.shape[1]):
        u = mov[tok[i, l]]
        if u >= 0 and a[l] != 0:
            B += float(a[l]) * ((R[u] - R_at[i, l]) + 1e-12 * R[u])
    B *= scale
    if lo[i] - B > hi[i] + B:
        return True
    vocab_size = z.shape[1]
    move[:] = 0.0
    for l in range(tok.shape[1]):
        u = mov[tok[i, l]]
        if u >= 0 and a[l] != 0:
            al, Cu, Ca = float(a[l]), C[u], C_at[i, l]
            for j in range(vocab_size):
                move[j] += al * ((Cu[j] - Ca[j]) + 1e-12 * Cu[j])
    p, zi, ei = pred[i], z[i], err[i]
    top = zi[p] - 2 * ei[p] - scale * move[p]
    above = 0                                          # logits j != p that may reach the top (p itself is not below it)
    for j in range(vocab_size):
        above += 0 if zi[j] + 2 * ei[j] + scale * move[j] < top else 1
    return above == 1 and top == top


@njit(cache=True, boundscheck=False)
def _predict(tok: np.ndarray, rho_tok: np.ndarray, S: np.ndarray, V: np.ndarray, lam: float, gamma: float,
             tiny: float, mov_ids: np.ndarray, mov: np.ndarray, old: np.ndarray, C: np.ndarray, R: np.ndarray,
             z: np.ndarray, err: np.ndarray, lo: np.ndarray, hi: np.ndarray, C_at: np.ndarray, R_at: np.ndarray,
             pred: np.ndarray) -> int:  # pragma: no cover
    """``Predictions.pred``'s compiled part: the moves since the last call (``_drift``), then the
    rows not proven unchanged (``_unchanged``) are recomputed (``_compute``); returns how many.
    One thread: after the first call only a few rows are recomputed, and a compiled function
    that calls a parallel one is what numba's cache has crashed on (numba issues 4807, 8578)."""
    _drift(V, mov_ids, old, C, R)
    n, L = tok.shape
    todo = np.empty(n, np.int64)
    a = np.empty(L, V.dtype)
    act = np.empty(L, np.int64)
    move = np.empty(V.shape[0])
    nt = 0
    for i in range(n):
        _weights(i, S, rho_tok, a, act)
        if not _unchanged(i, tok, a, mov, C, R, z, err, lo, hi, C_at, R_at, pred, lam, gamma, move):
            todo[nt] = i
            nt += 1
    _compute(todo[:nt], tok, rho_tok, S, V, lam, gamma, tiny, mov, C, R, z, err, lo, hi, C_at, R_at, pred)
    return nt


@njit(cache=True, boundscheck=False)
def _compute(rows: np.ndarray, tok: np.ndarray, rho_tok: np.ndarray, S: np.ndarray, V: np.ndarray, lam: float,
             gamma: float, tiny: float, mov: np.ndarray, C: np.ndarray, R: np.ndarray, z: np.ndarray, err: np.ndarray,
             lo: np.ndarray, hi: np.ndarray, C_at: np.ndarray, R_at: np.ndarray, pred: np.ndarray
             ) -> None:  # pragma: no cover
    """The rows ``rows``: logits and argmax from ``fast._row`` (the arithmetic of
    ``fast.run``, so the same to the bit), the rounding bound ``err_j = gamma lam P_j + tiny``,
    ``lo``, ``hi``, and the current ``C`` and ``R`` of their moving tokens."""
    n, L = tok.shape
    vocab_size, m = V.shape[0], V.shape[1]
    pre = np.empty((m, vocab_size), V.dtype)
    g = np.empty(vocab_size)
    a = np.empty(L, V.dtype)
    act = np.empty(L, np.int64)
    none1, none2, none3 = np.empty(0, V.dtype), np.empty((0, 0), V.dtype), np.empty((0, 0, 0), V.dtype)
    ce = np.empty(n, V.dtype)
    P = np.empty(vocab_size)
    for k in range(len(rows)):                         # no loss, no gradient: the targets are not read
        i = rows[k]
        _row(i, tok, S, rho_tok, V, np.empty((0, 0), np.int64), none2, none1, lam, False, False, False,
             np.empty(0, np.int64), z, pred, ce, none3, none3, none2, pre, none1, none2, g, a, act)
        P[:] = 0.0
        for l in range(L):
            if a[l] != 0:
                Vl, al = V[tok[i, l]], abs(float(a[l]))
                for n_ in range(m):
                    for j in range(vocab_size):
                        P[j] += al * abs(float(Vl[n_, j]))
        best, rest = -np.inf, -np.inf
        for j in range(vocab_size):
            err[i, j] = gamma * abs(lam) * P[j] * (1 + 1e-12) + tiny
            if j == pred[i]:
                best = z[i, j] - 2 * err[i, j]
            else:
                rest = max(rest, z[i, j] + 2 * err[i, j])
        lo[i], hi[i] = best, rest
        for l in range(L):
            u = mov[tok[i, l]]
            if u >= 0:
                C_at[i, l] = C[u]
                R_at[i, l] = R[u]
