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
    U, s, _ = torch.linalg.svd(M.double(), full_matrices=False)
    iq = (rows == q).nonzero()
    return s.numpy(), float(U[iq[0, 0], 0].abs()) if len(iq) else 0.0


def rank1(gV: torch.Tensor) -> torch.Tensor:
    """Best rank-1 approximation ``sigma_1 u_1 v_1^T`` of one run's V gradient (Eckart-Young, App. H),
    (vocab_size, m, vocab_size) or given on some rows only (U, m, vocab_size): zero rows do not
    change it.

    With ``M`` the (inputs x neurons) matrix, ``u_1`` is the top eigenvector of the small Gram
    matrix ``G = M M^T`` (inputs x inputs) and ``sigma_1 u_1 v_1^T = u_1 u_1^T M``: the same matrix
    as from an SVD of ``M``. ``_rank1`` finds ``u_1`` by repeated squaring of ``G`` in float64
    with every sum in a fixed order, so the result is the same on every CPU. A gradient with an
    inf or NaN is refused (ValueError): it has no rank-1 approximation.
    """
    _check_one_run(gV)
    out = torch.empty_like(gV)
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
    bad = 0.0
    for i in range(R):
        Mi = M[i]
        for c in range(K):
            nonzero[i] |= Mi[c] != 0
            bad += Mi[c] - Mi[c]                   # 0 unless some value is inf or NaN
        if not nonzero[i]:
            out[i] = 0
    if bad != 0:
        return False
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
    (the same to the bit)."""
    U = A.shape[0]
    out[:] = 0
    for i in range(U):
        o = out[i]
        for c in range(U):
            x, a = A[i, c], A[c]
            for e in range(U - i):
                o[i + e] += x * a[i + e]
    _mirror(out)
    out /= np.abs(out).max()
    moved = 0.0
    for i in range(U):
        for k in range(U):
            moved = max(moved, abs(out[i, k] - A[i, k]))
    return moved


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
