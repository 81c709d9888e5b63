"""What the chapters measure: losses by sample type, attention masses, MLP features (Prop. 2),
the fine-tuning gradient's spectrum (Prop. 3) and its best rank-1 approximation (App. H)."""
from __future__ import annotations

import functools
import math

import numpy as np
import torch
from numba import njit

from .data import ANS_FREQ, ANS_RARE, CTX_FREQ, CTX_RARE, KnowledgeData, Vocab
from .fast import Batch

FEATURES = ("s->a", "r->a", "s->r", "c->r")
"""Feature strengths tracked by ``features``: ``x->y`` is ``sum_n <v_{y,n}, e_x>``, the
push of input token x on the logit of y, averaged over the facts' pairs."""


def loss_by_kind(ce: torch.Tensor, batch: Batch) -> np.ndarray:
    """Weighted mean cross-entropy of each sample kind (``kaol.data.KIND_NAMES``), (5,); NaN if absent.
    Sums are exactly rounded (``math.fsum``), so the result does not depend on the CPU."""
    out = np.full(5, np.nan)
    wce, w, kind = (batch.w * ce).double().numpy(), batch.w.double().numpy(), batch.kind.numpy()
    for k in range(5):
        sel = kind == k
        tot = math.fsum(w[sel])
        if tot > 0:
            out[k] = math.fsum(wce[sel]) / tot
    return out


def token_kinds(v: Vocab) -> torch.Tensor:
    """Code of each token: 0 = c, 1 = s, 2 = r, 3 = a or q."""
    return torch.tensor(_token_kinds(v))


@functools.lru_cache(maxsize=64)
def _token_kinds(v: Vocab) -> tuple[int, ...]:
    """``token_kinds`` as a tuple, once per vocabulary (pre-training logs it every few steps)."""
    codes = {"c": 0, "s": 1, "r": 2, "a": 3, "q": 3}
    return tuple(codes[v.kind_of(t)] for t in range(v.size))


def attention_mass(S: torch.Tensor, batch: Batch, v: Vocab) -> np.ndarray:
    """Mean attention on the c, s and r tokens (2, 3): row 0 for the ``(c, s)`` inputs,
    row 1 for the ``(c, s, r)`` inputs (Prop. 1). Sums over a row's tokens run in order,
    over rows exactly rounded (``math.fsum``)."""
    tk = (token_kinds(v)[batch.tokens] * batch.mask + 3 * ~batch.mask).numpy()
    Sd, kind = S.double().numpy(), batch.kind.numpy()
    out = np.zeros((2, 3))
    for c in range(3):
        mass = np.zeros(kind.shape)
        for l in range(Sd.shape[1]):
            mass += np.where(tk[:, l] == c, Sd[:, l], 0.0)
        for row, kinds in enumerate([(CTX_FREQ, CTX_RARE), (ANS_FREQ, ANS_RARE)]):
            sel = (kind == kinds[0]) | (kind == kinds[1])
            out[row, c] = math.fsum(mass[sel]) / max(int(sel.sum()), 1)
    return out


def features(V: torch.Tensor, d: KnowledgeData) -> np.ndarray:
    """Feature strengths of ``FEATURES`` of one run (4,), from its ``V`` (vocab_size, m, vocab_size) on
    ``d``: each ``sum_n V[x, n, y]`` is summed over ``n`` in order, the mean over pairs exactly rounded."""
    def mean(x: np.ndarray, y: np.ndarray) -> float:
        cols = V[torch.from_numpy(x), :, torch.from_numpy(y)].double().numpy()       # (pairs, m)
        F = cols[:, 0].copy()
        for n in range(1, cols.shape[1]):
            F += cols[:, n]
        return math.fsum(F.tolist()) / len(F)

    v = d.vocab
    facts = np.arange(d.cfg.N)
    pair_i = np.repeat(facts, [len(ks) for ks in d.phrases])          # the pairs (i, k), fact by fact
    pair_k = np.concatenate(d.phrases).astype(np.int64)
    relations = np.arange(d.cfg.R)
    return np.array([mean(v.s(facts), v.a(facts)), mean(v.r(pair_k), v.a(pair_i)), mean(v.s(pair_i), v.r(pair_k)),
                     mean(np.full(d.cfg.R, v.c), v.r(relations)) if v.context else np.nan])


def _check_one_run(gV: torch.Tensor) -> None:
    """A V gradient must be one run's, (rows, m, vocab_size): index run b of stacked gradients first."""
    if not isinstance(gV, torch.Tensor) or gV.dim() != 3:
        raise ValueError(f"expected one run's V gradient (rows, m, vocab_size), got shape "
                         f"{tuple(getattr(gV, 'shape', ()))}: index run b of stacked gradients with g[b]")


def _as_matrix(gV: torch.Tensor, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The V gradient as (inputs, neurons) restricted to its non-zero input rows, and the tokens of
    those rows; ``gV`` is the whole gradient, or with ``rows`` its rows ``rows`` only (``Pass.gV_rows``)."""
    M = gV.reshape(gV.shape[0], -1)
    keep = torch.nonzero(M.abs().sum(1) > 0).squeeze(1)
    return M[keep], keep if rows is None else rows[keep]


def gradient_spectrum(gV: torch.Tensor, q: int, rows: torch.Tensor | None = None) -> tuple[np.ndarray, float]:
    """Singular values of one run's V gradient (vocab_size, m, vocab_size) seen as a (neurons x inputs)
    matrix, and the alignment ``|<u_1, e_q>|`` of its top right singular vector with ``q`` (Prop. 3).
    With ``rows``, ``gV`` (U, m, vocab_size) holds the gradient of the rows ``rows`` only (the others
    are zero), as ``fast.run`` gives it: the result is the same."""
    _check_one_run(gV)
    if rows is not None and (not isinstance(rows, torch.Tensor) or tuple(rows.shape) != (gV.shape[0],)):
        raise ValueError(f"rows must be a tensor of the {gV.shape[0]} token ids that gV's rows belong to, "
                         f"got shape {tuple(getattr(rows, 'shape', ()))}")
    M, rows = _as_matrix(gV, rows)
    _, s, Vh = torch.linalg.svd(M.double().T, full_matrices=False)   # M^T is tall: LAPACK's faster case (2x)
    iq = (rows == q).nonzero()
    return s.numpy(), float(Vh[0, iq[0, 0]].abs()) if len(iq) else 0.0


def rank1(gV: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Best rank-1 approximation ``sigma_1 u_1 v_1^T`` of one run's V gradient (Eckart-Young, App. H),
    (vocab_size, m, vocab_size) or given on some rows only (U, m, vocab_size): zero rows do not
    change it.

    With ``M`` the (inputs x neurons) matrix, ``u_1`` is the top eigenvector of the small Gram
    matrix ``G = M M^T`` (inputs x inputs) and ``sigma_1 u_1 v_1^T = u_1 u_1^T M``: the same matrix
    as from an SVD of ``M``. ``_rank1`` finds ``u_1`` by repeated squaring of ``G`` in float64
    with every sum in a fixed order, so the result is the same on every CPU. A gradient with an
    inf or NaN is refused (ValueError): it has no rank-1 approximation.

    ``out``, a contiguous tensor of ``gV``'s shape and type, receives the result (it may be
    ``gV`` itself, which is then overwritten: the training loops do that, and save a fresh
    buffer of several MB per step); by default a new tensor does.
    """
    _check_one_run(gV)
    if out is None:
        out = torch.empty_like(gV)
    elif not isinstance(out, torch.Tensor) or out.shape != gV.shape or out.dtype != gV.dtype or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous tensor of gV's shape {tuple(gV.shape)} and type {gV.dtype}")
    gV = gV.contiguous()
    if not _rank1(gV.reshape(gV.shape[0], -1).numpy(), out.view(gV.shape[0], -1).numpy()):
        raise ValueError("the gradient holds non-finite values (inf or NaN): its rank-1 approximation is undefined; "
                         "the run has diverged, lower the learning rate")
    return out


SQUARINGS = 64
"""At most this many squarings of the Gram matrix in ``_rank1`` (``G^(2^64)``)."""


@njit(cache=True, boundscheck=False)
def _rank1(M: np.ndarray, out: np.ndarray) -> bool:  # pragma: no cover
    """``out = u u^T M`` with ``u`` the top eigenvector of ``G = M M^T`` restricted to the non-zero
    rows of ``M`` (see ``rank1``); ``False`` (and ``out`` undefined) when ``M`` is not finite.

    ``A = G / max|G|`` is squared (and rescaled) until it stops moving (by less than 1e-14):
    after ``s`` squarings ``A ~ G^(2^s)``, whose second direction has shrunk by
    ``(lambda_2 / lambda_1)^(2^s)``, so the number of squarings grows only with
    ``log(1 / (1 - lambda_2 / lambda_1))``. Late in fine-tuning the top two directions of the
    gradient nearly coincide (``lambda_2 / lambda_1 = 0.9997``), where a power iteration on
    ``G`` needs 10^5 steps; squaring needs 18. ``A`` then is ``u u^T`` up to scale (or, if
    ``lambda_1 = lambda_2`` exactly, the projector on their span), and ``u`` is its column of
    largest diagonal, normalised."""
    R, K = M.shape
    nonzero = np.zeros(R, dtype=np.bool_)
    for i in range(R):
        Mi = M[i]
        count, bad = 0, 0
        for c in range(K):                         # integer counts: the loop vectorises
            count += 1 if Mi[c] != 0 else 0
            bad += 0 if Mi[c] - Mi[c] == 0 else 1  # x - x is 0 unless x is inf or NaN
        if bad:
            return False
        nonzero[i] = count > 0
        if not nonzero[i]:
            out[i] = 0
    rows = np.flatnonzero(nonzero)
    U = len(rows)
    if U == 0:
        return True
    A = _gram(M, rows)
    A /= np.abs(A).max()
    A2 = np.empty_like(A)
    for _ in range(SQUARINGS):
        moved = _square(A, A2)
        A, A2 = A2, A
        if moved < 1e-14:
            break
    top = 0
    for i in range(U):
        if A[i, i] > A[top, top]:
            top = i
    u = A[:, top] / math.sqrt(_dot(A[:, top], A[:, top]))
    coef = np.zeros(K)                             # u^T M
    for k in range(U):
        Mk = M[rows[k]]
        for c in range(K):
            coef[c] += u[k] * Mk[c]
    for k in range(U):
        ok = out[rows[k]]
        for c in range(K):
            ok[c] = u[k] * coef[c]
    return True


@njit(cache=True, boundscheck=False)
def _gram(M: np.ndarray, rows: np.ndarray) -> np.ndarray:  # pragma: no cover
    """``G = M[rows] M[rows]^T`` (U x U) in float64, each ``G[i, k]`` summed over the columns of
    ``M`` in index order.

    Eight columns at a time, added one after another (so the order is the same): they are
    copied into ``Mt`` (8 x U, float64), the transpose of ``M[rows]``'s eight columns, and ``G``
    (180 KB at U = 151) goes through the cache once per eight columns, not per column, which
    made it 2.5x faster. Only ``k >= i`` is summed, then mirrored: ``G[k, i]`` would add the
    same products in the same order, so ``G`` is the same to the bit at half the work. A row
    whose eight values are all 0 is skipped: adding ``0 * m = +-0`` leaves a sum as it is (a sum
    that starts at +0 is never -0), so this too is exact, and in fine-tuning's gradients half of
    these blocks are 0 (the ReLU masks of Lemma 1 are 0 on runs of outputs ``j``). The inner
    loops run over ``i + e`` for ``e`` in ``range(U - i)``: numba does not vectorise ``range(i, U)``."""
    K, U = M.shape[1], len(rows)
    G = np.zeros((U, U))
    Mt = np.zeros((8, U))
    live = np.zeros(U, dtype=np.bool_)
    for c in range(0, K, 8):
        w = min(8, K - c)            # the last block may be narrower: its other rows stay 0
        for k in range(U):
            Mk = M[rows[k]]
            live[k] = False
            for e in range(w):
                Mt[e, k] = Mk[c + e]
                live[k] |= Mk[c + e] != 0
        if w < 8:
            for e in range(w, 8):
                Mt[e] = 0
        m0, m1, m2, m3, m4, m5, m6, m7 = Mt[0], Mt[1], Mt[2], Mt[3], Mt[4], Mt[5], Mt[6], Mt[7]
        for i in range(U):
            if not live[i]:          # x0 .. x7 all 0: every g[k] would stay as it is (M is finite)
                continue
            x0, x1, x2, x3, x4, x5, x6, x7 = m0[i], m1[i], m2[i], m3[i], m4[i], m5[i], m6[i], m7[i]
            g = G[i]
            for e in range(U - i):
                k = i + e
                g[k] = (((((((g[k] + x0 * m0[k]) + x1 * m1[k]) + x2 * m2[k]) + x3 * m3[k]) + x4 * m4[k])
                        + x5 * m5[k]) + x6 * m6[k]) + x7 * m7[k]
    _mirror(G)
    return G


@njit(cache=True, boundscheck=False)
def _square(A: np.ndarray, out: np.ndarray) -> float:  # pragma: no cover
    """``out = A^2 / max|A^2|`` of a symmetric matrix ``A``, each sum in index order, and how far
    it moved, ``max|out - A|``. As in ``_gram``, only ``k >= i`` is summed and then mirrored
    (the same to the bit), and eight terms of the sums are added per pass over a row (in the
    same order), so the row is loaded and stored once per eight, not per term."""
    U = A.shape[0]
    U8 = U // 8 * 8
    out[:] = 0
    for i in range(U):
        o = out[i]
        for c in range(0, U8, 8):    # eight terms of each sum at a time, added one after another
            x0, x1, x2, x3, x4, x5, x6, x7 = A[i, c], A[i, c + 1], A[i, c + 2], A[i, c + 3], A[i, c + 4], \
                A[i, c + 5], A[i, c + 6], A[i, c + 7]
            a0, a1, a2, a3, a4, a5, a6, a7 = A[c], A[c + 1], A[c + 2], A[c + 3], A[c + 4], A[c + 5], A[c + 6], A[c + 7]
            for e in range(U - i):
                k = i + e
                o[k] = (((((((o[k] + x0 * a0[k]) + x1 * a1[k]) + x2 * a2[k]) + x3 * a3[k]) + x4 * a4[k])
                        + x5 * a5[k]) + x6 * a6[k]) + x7 * a7[k]
        for c in range(U8, U):
            x, a = A[i, c], A[c]
            for e in range(U - i):
                o[i + e] += x * a[i + e]
    top = 0.0                        # max|A^2| and then max|out - A| over the upper triangle: the same
    zero = np.zeros(U)               # maxima as over the whole symmetric matrices (exact: max does not round)
    for i in range(U):
        top = max(top, _amax_diff(out[i, i:], zero[i:]))
    out /= top
    moved = 0.0
    for i in range(U):
        moved = max(moved, _amax_diff(out[i, i:], A[i, i:]))
    _mirror(out)
    return moved


@njit(cache=True, boundscheck=False)
def _amax_diff(x: np.ndarray, y: np.ndarray) -> float:  # pragma: no cover
    """``max_k |x_k - y_k|`` of finite values, in eight lanes so that the loop vectorises (``max``
    does not round: the same in any order)."""
    b0 = b1 = b2 = b3 = b4 = b5 = b6 = b7 = 0.0
    n8 = len(x) // 8 * 8
    for j in range(0, n8, 8):
        b0 = max(b0, abs(x[j] - y[j]))
        b1 = max(b1, abs(x[j + 1] - y[j + 1]))
        b2 = max(b2, abs(x[j + 2] - y[j + 2]))
        b3 = max(b3, abs(x[j + 3] - y[j + 3]))
        b4 = max(b4, abs(x[j + 4] - y[j + 4]))
        b5 = max(b5, abs(x[j + 5] - y[j + 5]))
        b6 = max(b6, abs(x[j + 6] - y[j + 6]))
        b7 = max(b7, abs(x[j + 7] - y[j + 7]))
    for j in range(n8, len(x)):
        b0 = max(b0, abs(x[j] - y[j]))
    return max(max(max(b0, b1), max(b2, b3)), max(max(b4, b5), max(b6, b7)))


@njit(cache=True, boundscheck=False)
def _mirror(G: np.ndarray) -> None:  # pragma: no cover
    """Copy the upper triangle of the square ``G`` onto the lower one."""
    for i in range(G.shape[0]):
        for k in range(i):
            G[i, k] = G[k, i]


@njit(cache=True)
def _dot(x: np.ndarray, y: np.ndarray) -> float:  # pragma: no cover
    """``<x, y>`` summed in index order."""
    s = 0.0
    for i in range(len(x)):
        s += x[i] * y[i]
    return s


def rank1_share(sv: np.ndarray) -> np.ndarray:
    """``sigma_1^2 / sum_k sigma_k^2``: the share of the gradient's energy in its top direction."""
    return sv[..., 0] ** 2 / (sv ** 2).sum(-1)
