"""Exact loss and gradients of the simplified model (Sec. 2) without autograd, in the token basis.

Orthogonal embeddings make the attention output ``h = X S`` a combination of the
2-4 tokens of the input, ``h = sum_l a_l e_{t_l}`` with ``a_l = S_l rho_{t_l}``, so the
pre-activations of every neuron are ``sum_l a_l V[t_l]``: each input reads only the
2-4 rows of ``V`` (one per token, ``m x vocab_size`` values each) that its tokens select. A
compiled loop (``numba``) goes over the inputs of one run, in parallel chunks of
inputs (``Batch``); many runs are many calls, in turn or in separate processes. Per input it forms the
``m x vocab_size`` pre-activations, the logits, the loss and the gradients of the rows of ``V``
it read, so nothing of size ``inputs x m x vocab_size`` is ever stored. The attention, its
gradient and the update are compiled loops too; the update of a row of ``V`` can be taken in
the same pass, as soon as that row's gradient is complete (``run``'s ``eta``).

The gradients are the explicit form of Lemma 1. With ``g_j = lambda (p_j - y_j)``
(times the sample weight) and ``1_{jn} = 1[<v_{j,n}, h> > 0]``::

    dL/dv_{j,n} = sum_i g_{ij} 1_{ijn} h_i
    dL/dS_l     = <X^T dL/dh, e_l> with dL/dh = sum_{j,n} g_j 1_{jn} v_{j,n}
    dL/dW       = sum_i sum_l S_l (dL/dS_l - sum_k S_k dL/dS_k) x_l x_L^T

Every result is bit-identical on any x86-64 CPU and for any thread count: the loops are
compiled without fast-math (no reassociation, no fused multiply-add contraction), every
sum runs in an order fixed by the data (never by the thread count), and ``exp`` and ``log`` are our own polynomials (``_exp``,
``_log``) rather than the C library's, whose results depend on the CPU's instruction set.
"""
from __future__ import annotations

import ctypes
import math
import sys
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from numba import njit, prange

from .data import Samples

if sys.platform.startswith("linux"):
    # Every step allocates and frees buffers of 1-100 MB (logits, dL/dV rows). glibc raises its
    # mmap threshold after each such free, so later ones come from the heap, which fragments:
    # the resident memory of a book-scale grid grew to 5.6 GB over 1700 steps. A fixed 1 MB
    # threshold (M_MMAP_THRESHOLD = -3) gives every large buffer back at once (0.8 GB).
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)
    except (OSError, AttributeError):     # not glibc: nothing to tune
        pass


@dataclass
class Batch:
    """The inputs of one run: the full batch of its gradient descent (Sec. 4).

    ``w`` holds each row's weight divided by the total weight, so the loss is
    ``sum_i w[i] CE_i`` (the weighted mean of App. J).

    The compiled pass splits the rows into ``CHUNKS`` chunks that run in parallel: rows
    are ordered by their rarest token (``order``), so rows sharing a subject sit in one
    chunk and read the same rows of ``V`` while they are in cache. A token whose rows all
    fall in one chunk has its ``dL/dV`` row accumulated there directly
    (``dest[c, t] = slot[t]``); a token read by several chunks (the context, the
    relations) gets one partial row per chunk (``dest = -1 - p``), added up afterwards in
    chunk order (``sums[k]``: the slot of shared row ``k`` and its partials, -1 where a
    chunk does not read it). The chunking depends on the data only, never on the thread
    count, so the sums are the same whatever the number of threads.
    """

    tokens: torch.Tensor   # (n, L)
    mask: torch.Tensor     # (n, L)
    rho_tokens: torch.Tensor  # (n, L) rho of each of ``tokens``, 0 where ``mask`` is False
    rho: torch.Tensor      # (vocab_size,) embedding norms
    y_idx: torch.Tensor    # (n, k)
    y_prob: torch.Tensor   # (n, k)
    w: torch.Tensor        # (n,)
    kind: torch.Tensor     # (n,)
    fact: torch.Tensor     # (n,)
    vocab_size: int
    rows: torch.Tensor     # (U,) the tokens that occur in some input: the rows of V with a gradient
    slot: torch.Tensor     # (vocab_size,) position of each token in ``rows``, -1 for the others
    order: np.ndarray      # (n,) rows by rarest token
    bounds: np.ndarray     # (CHUNKS + 1,) chunk c holds order[bounds[c]:bounds[c + 1]]
    dest: np.ndarray       # (CHUNKS, vocab_size) where chunk c accumulates dL/dV[t]
    sums: np.ndarray       # (shared, 1 + CHUNKS) gV slot of each shared row, then its partials
    n_part: int            # partial rows
    start: np.ndarray      # (n + 1,) the tokens read by one chunk only whose first row is order[ii]:
    start_tok: np.ndarray  # start_tok[start[ii]:start[ii + 1]]
    done: np.ndarray       # (n + 1,) and those whose last row is order[ii]: done_tok[done[ii]:done[ii + 1]]
    done_tok: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.tokens.shape)  # type: ignore[return-value]

    @cached_property
    def arrays(self) -> tuple[np.ndarray, ...]:
        """What the compiled pass (``_run``) reads of the batch, as numpy arrays (views, made once)."""
        return (self.tokens.numpy(), self.rho_tokens.numpy(), self.y_idx.numpy(), self.y_prob.numpy(), self.w.numpy(),
                self.order, self.bounds, self.dest, self.sums, self.start, self.start_tok, self.done, self.done_tok,
                self.rows.numpy())

    @staticmethod
    def build(samples: Samples, vocab_size: int, rho: torch.Tensor, dtype: torch.dtype) -> "Batch":
        """The ``Batch`` of ``samples`` over a vocabulary of ``vocab_size`` tokens with norms ``rho``."""
        _check_inputs(samples, rho, vocab_size)
        s = samples
        w = (s.weight / math.fsum(s.weight.tolist())).to(dtype) if len(s) else s.weight.to(dtype)  # fsum: exactly rounded
        rho = rho.to(dtype)
        rho_tokens = rho[s.tokens] * s.mask
        rows = torch.unique(s.tokens[s.mask])
        slot = torch.full((vocab_size,), -1, dtype=torch.long)
        slot[rows] = torch.arange(len(rows))
        return Batch(s.tokens, s.mask, rho_tokens, rho, s.y_idx, s.y_prob.to(dtype), w, s.kind, s.fact,
                     vocab_size, rows, slot, *_chunks(s.tokens.numpy(), s.mask.numpy(), slot.numpy(), vocab_size))


CHUNKS = 4
"""Chunks of rows that the compiled pass runs in parallel (fixed: results do not depend on
the thread count)."""


def _chunks(tokens: np.ndarray, mask: np.ndarray, slot: np.ndarray, vocab_size: int) -> tuple:
    """``order``, ``bounds``, ``dest``, ``sums``, ``n_part``, ``start``, ``start_tok``, ``done`` and ``done_tok`` of
    ``Batch`` (see there)."""
    n = len(tokens)
    bounds = np.array([n * c // CHUNKS for c in range(CHUNKS + 1)])
    count = np.bincount(tokens[mask], minlength=vocab_size)
    key = np.where(mask, count[tokens] * vocab_size + tokens, count.max() * vocab_size + vocab_size).min(1)
    order = np.argsort(key, kind="stable")
    used = np.zeros((CHUNKS, vocab_size), dtype=bool)
    for c in range(CHUNKS):
        rows = order[bounds[c]:bounds[c + 1]]
        used[c, tokens[rows][mask[rows]]] = True
    dest = np.repeat(slot[None, :], CHUNKS, 0)
    shared = []
    for t in np.nonzero(used.sum(0) > 1)[0]:
        parts = [-1] * CHUNKS
        for c in np.nonzero(used[:, t])[0]:
            parts[c] = len(shared) * CHUNKS + c
            dest[c, t] = -1 - parts[c]
        shared.append([slot[t]] + parts)
    sums = np.array(shared, dtype=np.int64).reshape(-1, 1 + CHUNKS)
    first, last = np.full(vocab_size, n), np.full(vocab_size, -1)   # positions in order of the first and last
    for ii, i in enumerate(order):                                   # rows that read each token
        t = tokens[i][mask[i]]
        first[t] = np.minimum(first[t], ii)
        last[t] = ii
    own = np.nonzero(used.sum(0) == 1)[0]
    lists = []
    for pos in (first, last):
        by = own[np.argsort(pos[own], kind="stable")]
        lists += [np.searchsorted(pos[by], np.arange(n + 1)), by.astype(np.int64)]
    return (order, bounds, dest, sums, len(shared) * CHUNKS, *lists)


def _check_inputs(s: Samples, rho: torch.Tensor, vocab_size: int) -> None:
    """The compiled loop reads ``V`` at token and target ids without bounds checks: check them once
    here (ids in ``[0, vocab_size)``, finite positive norms), so a bad input is an error, not a crash."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
        raise TypeError(f"vocab_size = {vocab_size!r} must be an int >= 1 (the vocabulary size)")
    if not isinstance(s, Samples):
        raise TypeError(f"samples must be one run's Samples (e.g. data.pretrain), not {type(s).__name__}")
    if not isinstance(rho, torch.Tensor) or tuple(rho.shape) != (vocab_size,):
        raise ValueError(f"rho has shape {tuple(getattr(rho, 'shape', ()))}, not ({vocab_size},): one norm per token")
    if not bool(torch.isfinite(rho).all()) or not bool((rho > 0).all()):
        raise ValueError(f"rho must hold finite norms > 0, got min {float(rho.min()):g}, max {float(rho.max()):g}")
    if len(s) == 0:
        return
    for name, ids in (("token ids", s.tokens[s.mask]), ("target ids", s.y_idx)):
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
            raise ValueError(f"{name} must lie in [0, {vocab_size}), got [{int(ids.min())}, {int(ids.max())}]")
    if not bool(s.mask[:, -1].all()):
        raise ValueError("every input needs its last token x_L (samples are right-aligned: mask[:, -1] all True)")
    if not bool(torch.isfinite(s.y_prob).all()) or not bool(torch.isfinite(s.weight).all()) \
            or float(s.weight.sum()) <= 0:
        raise ValueError("target probabilities and weights must be finite, with a positive total weight")


@dataclass
class Pass:
    """One forward (and optionally backward) pass over a ``Batch``."""

    loss: torch.Tensor          # () weighted mean cross-entropy
    ce: torch.Tensor            # (n,) cross-entropy of each row
    S: torch.Tensor             # (n, L) attention of the last token
    logits: torch.Tensor        # (n, vocab_size)
    pred: torch.Tensor          # (n,) argmax of each row's logits (the first of equal largest)
    gW: torch.Tensor | None = None
    gV_rows: torch.Tensor | None = None   # (U, m, vocab_size): dL/dV[rows], the only rows that are not 0
    rows: torch.Tensor | None = None      # (U,) = ``Batch.rows``
    work: "_Work | None" = None           # the buffers behind ``ce``, ``logits`` and the gradients
    stepped: bool = False                 # V has taken its gradient step (``run``'s ``eta``)

    @property
    def gV(self) -> torch.Tensor | None:
        """The whole ``dL/dV`` (vocab_size, m, vocab_size), zero outside ``rows``."""
        return None if self.gV_rows is None else whole(self.gV_rows, self.rows)


@dataclass
class _Work:
    """``run``'s buffers as tensors and as the numpy views the compiled loop takes: the logits,
    cross-entropies, ``dL/dV`` rows, ``dL/dW``, the chunks' partial ``dL/dV`` rows and
    ``dL/d(score)`` of every row. ``key`` is the shapes and type they were made for."""

    key: tuple
    tensors: tuple[torch.Tensor, ...]
    arrays: tuple[np.ndarray, ...]

    @staticmethod
    def get(reuse: "Pass | None", key: tuple) -> "_Work":
        """``reuse``'s buffers if they were made for ``key`` (their values are stale), else new ones."""
        old = None if reuse is None else reuse.work
        if old is not None and old.key == key:
            return old
        (n, L, U, m, vocab_size, gW_cols, n_part), dtype = key[:-1], key[-1]
        tensors = tuple(torch.empty(shape, dtype=dtype) for shape in
                        ((n, vocab_size), (n,), (U, m, vocab_size), (vocab_size, gW_cols), (n_part, m, vocab_size),
                         (n, L)))
        return _Work(key, tensors, tuple(t.numpy() for t in tensors))


def whole(g_rows: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """A V gradient (U, m, vocab_size) given on the rows ``rows`` at its full size
    (vocab_size, m, vocab_size)."""
    _, m, vocab_size = g_rows.shape
    full = g_rows.new_zeros(vocab_size, m, vocab_size)
    full[rows] = g_rows
    return full


def attention(W: torch.Tensor, batch: Batch) -> torch.Tensor:
    """``S = softmax(X^T W x_L)`` for every row (Sec. 2), (n, L)."""
    S = torch.empty(batch.rho_tokens.shape, dtype=W.dtype)
    _attention(batch.tokens.numpy(), batch.rho_tokens.numpy(), W.detach().contiguous().numpy(), S.numpy())
    return S


def uniform_attention(batch: Batch) -> torch.Tensor:
    """``S_l = 1 / L_i`` over the ``L_i`` tokens of every row: the attention of Table 3's
    "uniform attention + MLP" (``kaol.model.forward``), which has no ``W``."""
    return (batch.mask / batch.mask.sum(-1, keepdim=True)).to(batch.rho_tokens.dtype)


def used_tokens(S: torch.Tensor, batch: Batch) -> torch.Tensor:
    """The tokens of every row (n, L) that ``run`` computes with: weight ``a_l = S_l rho_l``
    positive and at least ``NEGLIGIBLE`` times the largest of its row."""
    a = S * batch.rho_tokens
    return (a > 0) & (a >= NEGLIGIBLE * a.amax(-1, keepdim=True))


def run(W: torch.Tensor | None, V: torch.Tensor, batch: Batch, lam: float, grad: bool = True,
        grad_W: bool = True, S: torch.Tensor | None = None, reuse: Pass | None = None, loss: bool = True,
        eta: float | None = None) -> Pass:
    """Loss, logits and (if ``grad``) the exact gradients of ``W`` (vocab_size, vocab_size) and of
    the rows of ``V`` (vocab_size, m, vocab_size) that the inputs read (``Pass.gV_rows``;
    ``Pass.gV`` is the whole of it), for one run.

    ``S`` may be passed when ``W`` is fixed (fine-tuning) to skip the attention; a model without
    ``W`` (uniform attention, ``uniform_attention``) passes ``W=None``, its ``S`` and
    ``grad_W=False``. ``loss=False`` (with ``grad=False``) computes the logits and their argmax only,
    without the softmax (``Pass.loss`` and ``Pass.ce`` are then NaN): fine-tuning's evaluation
    needs no more. ``reuse``, the ``Pass`` of an earlier call on the same batch, lends its
    logits, cross-entropies and gradients as work space: they are overwritten (the training
    loops pass the previous step's, which saves the page faults of fresh buffers of several MB
    at every step). With ``eta`` (and ``grad``), ``V`` also takes its gradient step
    ``V <- V - eta dL/dV`` in place (``descend``'s arithmetic; ``W`` does not), each row as soon
    as its gradient is complete, while it is still in cache (``Pass.stepped``); the gradients
    are returned as without it.
    """
    vocab_size = batch.vocab_size
    W_shape = None if W is None else tuple(W.shape)
    if V.dim() != 3 or (V.shape[0], V.shape[2]) != (vocab_size, vocab_size) \
            or W_shape not in (None, (vocab_size, vocab_size)):
        raise ValueError(f"parameters W {W_shape} and V {tuple(V.shape)} are not one run's (vocab_size, vocab_size) "
                         f"and (vocab_size, m, vocab_size) over the batch's vocabulary of {vocab_size} tokens: "
                         f"index run b of stacked parameters with params[name][b]")
    m = V.shape[1]
    n, L = batch.shape
    if grad and not loss:
        raise ValueError("grad=True needs loss=True: the gradients come from the softmax")
    if W is None and (S is None or (grad and grad_W)):
        raise ValueError("W = None (a model without W) needs its attention S and grad_W=False")
    if V.dtype != batch.rho_tokens.dtype:
        raise ValueError(f"parameters are {V.dtype} but the batch was built for {batch.rho_tokens.dtype}")
    if eta is not None and not (grad and V.is_contiguous() and isinstance(eta, float) and math.isfinite(eta)):
        raise ValueError(f"a step in the pass (eta = {eta!r}) needs grad=True, a contiguous V and a finite float eta")
    S = attention(W, batch) if S is None else S
    work = _Work.get(reuse, (n, L, len(batch.rows) if grad else 0, m, vocab_size, vocab_size if grad and grad_W else 0,
                             batch.n_part if grad else 0, V.dtype))
    pred = torch.empty(n, dtype=torch.long)
    total = _run(*batch.arrays, S.detach().contiguous().numpy(), V.detach().contiguous().numpy(), lam, loss, grad,
                 grad and grad_W, eta is not None, 0.0 if eta is None else eta, pred.numpy(), *work.arrays)
    z, ce, gV, gW = work.tensors[:4]
    out = Pass(torch.from_numpy(np.array(total, dtype=z.numpy().dtype)), ce, S, z, pred, work=work,
               stepped=eta is not None)
    if grad:
        out.gV_rows, out.rows = gV, batch.rows
    if grad and grad_W:
        out.gW = gW
    return out


def descend(P: torch.Tensor, G: torch.Tensor, eta: float, rows: torch.Tensor | None = None) -> None:
    """The gradient step ``p <- p - eta g`` in place (Sec. 4); with ``rows``, ``G`` (U, ...)
    holds the gradient of the rows ``rows`` of ``P`` (vocab_size, ...) and only those change."""
    vocab_size = P.shape[0]
    r = np.arange(vocab_size) if rows is None else rows.numpy()
    if tuple(G.shape) != (len(r),) + tuple(P.shape[1:]) or P.dtype != G.dtype or not P.is_contiguous() \
            or (len(r) and (r.min() < 0 or r.max() >= vocab_size)):
        raise ValueError(f"descend needs one run's parameter P {tuple(P.shape)} (contiguous) and its gradient on "
                         f"rows in [0, {vocab_size}) of shape (len(rows),) + P.shape[1:] = "
                         f"{(len(r),) + tuple(P.shape[1:])} and the same dtype; got G {tuple(G.shape)} {G.dtype}")
    _descend(P.view(vocab_size, -1).numpy(), G.reshape(len(r), -1).numpy(), r, eta)


def max_abs(P: torch.Tensor, rows: torch.Tensor | None = None) -> float:
    """``max |p|`` over the parameter ``P`` or, with ``rows``, over its rows ``P[rows]`` (read in
    place: no copy of the rows, no ``|P|``); NaN when some value is not finite.

    The values are read as integers with the sign bit cleared: for IEEE numbers of one sign the
    integer order is the order of the numbers, so the largest integer is the largest ``|p|``
    (exact), and one at or above the bits of ``inf`` means an inf or a NaN. An integer maximum
    vectorises; a float one that must notice NaNs does not."""
    X = P.detach().contiguous()
    X = X.reshape(1, -1) if rows is None else X.reshape(P.shape[0], -1)
    r = np.zeros(1, dtype=np.int64) if rows is None else rows.numpy()
    x = X.numpy()
    ints = np.dtype(f"int{x.dtype.itemsize * 8}")
    inf = np.array(np.inf, dtype=x.dtype).view(ints)
    top = np.array(_max_abs(x.view(ints), r, ~np.array(np.iinfo(ints).min, dtype=ints)), dtype=ints)
    return float("nan") if top >= inf else float(top.view(x.dtype))


NEGLIGIBLE = 2.0 ** -100
"""``_row`` (and ``used_tokens``) leaves out a token whose weight ``a_l = S_l rho_l`` is below ``NEGLIGIBLE`` times the
largest weight of its row. Trained attention gives some tokens weights near ``1e-40``: their
products with ``V`` are subnormal floats, which x86 CPUs compute in microcode, about 100 times
slower than normal ones (they took half of a book pre-training step). What such a token would
add, at most ``2^-100`` of the row's largest term, lies below the last bit of every
pre-activation and gradient it enters: results are unchanged to the bit (book runs, full and
rank-1 fine-tuning, several runs compared)."""


LN2_HI, LN2_LO = 6.93147180369123816490e-01, 1.90821492927058770002e-10   # fdlibm's split of log 2
INV_LN2 = 1.44269504088896338700e+00
ROUND = 6755399441055744.0       # 1.5 * 2^52: (t + ROUND) - ROUND is t rounded to an integer, |t| < 2^51
EXP_BIAS = 4503599627371519.0    # 2^52 + 1023: the low bits of this double plus k are 1023 + k


@njit(cache=True, boundscheck=False)
def _exp(x: float) -> float:  # pragma: no cover
    """``e^x`` in float64 for ``x <= 0`` (softmax arguments), to about 1 ulp, from IEEE
    operations only: ``x = k log 2 + r`` with ``|r| <= log(2) / 2``, the degree-13 Taylor
    polynomial ``p`` of ``e^r`` in Horner form, times ``2^k`` rounded once. ``k = floor(t)`` is
    found exactly by rounding ``t`` to an integer with ``ROUND`` and stepping down where that went
    up; ``2^k`` is built from its bits where it is a normal number (``k >= -1022``: ``EXP_BIAS``
    puts ``1023 + k`` in the low bits of a double, shifted into the exponent field); below,
    ``p 2^(k + 54)`` is exact and ``2^-54`` times it rounds once, as ``p 2^k`` would; ``k = -1075``
    (``x`` below about -744.8) gives 0. Written without branches, loops, table lookups or
    float-to-integer conversions, so that loops calling it vectorise on every x86-64 CPU (a
    gather, a ``floor`` call and an int64 conversion each kept plain x86-64 or AVX2 from it)."""
    y = max(x, -745.0)                                      # e^-745 is below the smallest double
    t = y * INV_LN2 + 0.5
    k = (t + ROUND) - ROUND
    k = k - 1.0 if k > t else k                             # floor(t), exact (|t| < 2^51)
    r = (y - k * LN2_HI) - k * LN2_LO
    p = 1.0 / 6227020800.0
    p = p * r + 1.0 / 479001600.0
    p = p * r + 1.0 / 39916800.0
    p = p * r + 1.0 / 3628800.0
    p = p * r + 1.0 / 362880.0
    p = p * r + 1.0 / 40320.0
    p = p * r + 1.0 / 5040.0
    p = p * r + 1.0 / 720.0
    p = p * r + 1.0 / 120.0
    p = p * r + 1.0 / 24.0
    p = p * r + 1.0 / 6.0
    p = p * r + 0.5
    p = p * r + 1.0
    p = p * r + 1.0
    low = k < -1022.0                                       # 2^k subnormal: scale by 2^54 first
    bits = np.float64((k + 54.0 if low else k) + EXP_BIAS).view(np.int64) << 52
    e = p * np.int64(bits).view(np.float64)
    e = 0.0 if k < -1074.0 else e * (2.0 ** -54 if low else 1.0)
    return e if x == x else x                              # NaN stays NaN


@njit(cache=True, boundscheck=False)
def _sum(x: np.ndarray) -> float:  # pragma: no cover
    """``sum_j x_j`` in a fixed order that compilers can vectorise without reassociating:
    eight running sums over ``j mod 8``, then added pairwise. The sums are eight named scalars,
    which stay in registers: an array of eight would be allocated at every call (five per row)."""
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = x.dtype.type(0)
    n8 = len(x) // 8 * 8
    for j0 in range(0, n8, 8):
        s0 += x[j0]
        s1 += x[j0 + 1]
        s2 += x[j0 + 2]
        s3 += x[j0 + 3]
        s4 += x[j0 + 4]
        s5 += x[j0 + 5]
        s6 += x[j0 + 6]
        s7 += x[j0 + 7]
    for j in range(n8, n8 + 8):        # the tail into lanes 0, 1, ...; eight rotations restore the order
        s0, s1, s2, s3, s4, s5, s6, s7 = s1, s2, s3, s4, s5, s6, s7, s0 + x[j] if j < len(x) else s0
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


@njit(cache=True, boundscheck=False)
def _argmax(x: np.ndarray) -> int:  # pragma: no cover
    """The first index of the largest entry of ``x``, as ``torch.argmax`` (with a NaN in ``x``: the
    first index that holds a NaN or the largest number; a run with NaN logits has diverged and
    is stopped). The maximum is taken in eight lanes over ``j mod 8`` (exact: ``max`` does not
    round) so that the loop vectorises, held in named scalars as in ``_sum``."""
    n8 = len(x) // 8 * 8
    b0 = b1 = b2 = b3 = b4 = b5 = b6 = b7 = x[0]
    for j0 in range(0, n8, 8):
        b0 = max(b0, x[j0])
        b1 = max(b1, x[j0 + 1])
        b2 = max(b2, x[j0 + 2])
        b3 = max(b3, x[j0 + 3])
        b4 = max(b4, x[j0 + 4])
        b5 = max(b5, x[j0 + 5])
        b6 = max(b6, x[j0 + 6])
        b7 = max(b7, x[j0 + 7])
    mx = b0
    mx = max(mx, b1)
    mx = max(mx, b2)
    mx = max(mx, b3)
    mx = max(mx, b4)
    mx = max(mx, b5)
    mx = max(mx, b6)
    mx = max(mx, b7)
    for j in range(n8, len(x)):
        mx = max(mx, x[j])
    for j in range(len(x)):
        if x[j] == mx or x[j] != x[j]:
            return j
    return 0


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
def _attention(tok: np.ndarray, rho_tok: np.ndarray, W: np.ndarray, S: np.ndarray) -> None:  # pragma: no cover
    """``S_l = softmax_l(W[t_l, t_L] rho_l rho_L)`` over the real tokens (``rho_tok > 0``) of every
    row (Sec. 2), in float64, written into ``S``."""
    n, L = tok.shape
    e = np.empty(L)
    for i in range(n):
        rho_L, tL = rho_tok[i, L - 1], tok[i, L - 1]
        mx = -np.inf
        for l in range(L):
            if rho_tok[i, l] != 0:
                e[l] = W[tok[i, l], tL] * (rho_tok[i, l] * rho_L)
                mx = max(mx, e[l])
        se = 0.0
        for l in range(L):
            if rho_tok[i, l] != 0:
                e[l] = _exp(e[l] - mx)
                se += e[l]
        for l in range(L):
            S[i, l] = e[l] / se if rho_tok[i, l] != 0 else 0.0


@njit(cache=True, boundscheck=False, parallel=True)
def _run(tok: np.ndarray, rho_tok: np.ndarray, y_idx: np.ndarray, y_prob: np.ndarray, w: np.ndarray, order: np.ndarray,
         bounds: np.ndarray, dest: np.ndarray, sums: np.ndarray, start: np.ndarray, start_tok: np.ndarray,
         done: np.ndarray, done_tok: np.ndarray, rows: np.ndarray, S: np.ndarray, V: np.ndarray, lam: float,
         loss: bool, grad: bool, grad_W: bool, step: bool, eta: float, pred: np.ndarray, z: np.ndarray, ce: np.ndarray, gV: np.ndarray, gW: np.ndarray,
         part: np.ndarray, dscore: np.ndarray) -> float:  # pragma: no cover
    """The compiled pass behind ``run``, in one call.

    The rows go in parallel, one task per chunk of rows (``Batch``; per row see ``_row``): a
    chunk adds its ``dL/dV`` rows into ``gV`` (rows only it reads) or into its own partial rows
    in ``part`` (shared rows). Then, in order: the loss ``sum_i w_i CE_i`` (returned),
    ``dL/dW[t_l, t_L] += dscore_l`` in row order (Lemma 1), and the shared rows of ``dL/dV`` as
    the sum of their chunks' partials in chunk order. A row of ``gV`` or ``part`` is set to 0 by
    its chunk just before its first use (``start``; a shared row of ``gV`` before its sum), while
    it is in cache, not all of ``gV`` at once before the rows start. With ``step``, each row of
    ``V`` takes its gradient step ``V[t] += dL/dV[t] * (-eta)`` (``_descend``'s arithmetic) as
    soon as its gradient is complete: a row read by one chunk after that chunk's last row that
    reads it (``done``), a shared row after its sum."""
    gW[:] = 0
    dscore[:] = 0
    for c in prange(len(bounds) - 1):
        vocab_size, m, L = V.shape[0], V.shape[1], tok.shape[1]
        pre = np.empty((m, vocab_size), V.dtype)
        gw = np.empty(vocab_size, V.dtype)
        dS = np.empty((L, vocab_size), V.dtype)
        g = np.empty(vocab_size)
        a = np.empty(L, V.dtype)
        act = np.empty(L, np.int64)
        if grad:
            for k in range(sums.shape[0]):
                if sums[k, 1 + c] >= 0:
                    part[sums[k, 1 + c]] = 0
        for ii in range(bounds[c], bounds[c + 1]):
            if grad:
                for e in range(start[ii], start[ii + 1]):
                    gV[dest[c, start_tok[e]]] = 0
            _row(order[ii], tok, S, rho_tok, V, y_idx, y_prob, w, lam, loss, grad, grad_W, dest[c], z, pred, ce,
                 gV, part, dscore, pre, gw, dS, g, a, act)
            if step:
                for e in range(done[ii], done[ii + 1]):
                    t = done_tok[e]
                    _step_row(V[t], gV[dest[c, t]], eta)
    n, L = tok.shape
    total = 0.0
    for i in range(n):
        total += w[i] * ce[i]
    if grad_W:
        for i in range(n):
            for l in range(L):
                gW[tok[i, l], tok[i, L - 1]] += dscore[i, l]
    if grad:
        for k in prange(sums.shape[0]):
            out = gV[sums[k, 0]]
            out[:] = 0
            for c in range(sums.shape[1] - 1):
                if sums[k, 1 + c] >= 0:
                    p = part[sums[k, 1 + c]]
                    for neuron in range(out.shape[0]):
                        for j in range(out.shape[1]):
                            out[neuron, j] += p[neuron, j]
            if step:
                _step_row(V[rows[sums[k, 0]]], out, eta)
    return total


@njit(cache=True, boundscheck=False, inline="always")
def _step_row(P: np.ndarray, G: np.ndarray, eta: float) -> None:  # pragma: no cover
    """``P += G * (-eta)`` for one row of ``V`` (m, vocab_size): ``_descend``'s arithmetic."""
    st = P.dtype.type(-eta)
    for k in range(P.shape[0]):
        for j in range(P.shape[1]):
            P[k, j] += G[k, j] * st


@njit(cache=True, boundscheck=False)
def _row(i: int, tok: np.ndarray, S: np.ndarray, rho_tok: np.ndarray, V: np.ndarray, y_idx: np.ndarray,
         y_prob: np.ndarray, w: np.ndarray, lam: float, loss: bool, grad: bool, grad_S: bool, dest: np.ndarray,
         z: np.ndarray, pred: np.ndarray, ce: np.ndarray, gV: np.ndarray, part: np.ndarray, dscore: np.ndarray, pre: np.ndarray,
         gw: np.ndarray, dS: np.ndarray, g: np.ndarray, a: np.ndarray, act: np.ndarray) -> None:  # pragma: no cover
    """Row ``i``, with ``a_l = S_l rho_l``: the pre-activations ``pre[n, j] = sum_l a_l V[t_l, n, j]``,
    the logits ``z = lam sum_n ReLU(pre)`` (Sec. 2), their argmax and the cross-entropy (with
    ``loss``); with ``grad``, Lemma 1's ``dL/dV[t_l] += a_l g_j 1[pre > 0]`` (into ``gV`` or
    ``part`` as ``dest`` says) and, with ``grad_S`` (what ``dL/dW`` needs; fine-tuning with ``W``
    fixed does not, and skips a third of the backward pass's work),
    ``dscore_l = S_l (dS_l - sum_k S_k dS_k) rho_l rho_L`` with
    ``dS_l = rho_l sum_{n,j} g_j 1[pre > 0] V[t_l, n, j]`` (the scores' gradient, Lemma 1). Sums
    over ``j`` run elementwise or through ``_sum``, over ``n`` and ``l`` in index order, tokens of
    a ``NEGLIGIBLE`` weight left out (``act`` lists the others). For the one to three tokens of
    the book's inputs (``na <= 3``) both passes (``_forward``, ``_backward``) read all tokens'
    slices of ``V`` (and of ``dL/dV``) in one pass over ``j`` per two neurons, and the backward
    pass computes each pre-activation again, by the forward pass's expression (the same bits),
    which costs less than storing and reading back ``m x vocab_size`` values per row; with more
    tokens ``pre`` keeps them from the forward pass. ``pre``, ``gw``, ``dS``, ``g``, ``a``,
    ``act`` are work buffers."""
    vocab_size, m, L = V.shape[0], V.shape[1], tok.shape[1]
    zero = pre.dtype.type(0)
    na = _weights(i, S, rho_tok, a, act)
    s1, s2 = min(1, na - 1), min(2, na - 1)            # up to three tokens by name (repeated if fewer)
    t0, t1, t2 = tok[i, act[0]], tok[i, act[s1]], tok[i, act[s2]]
    a0, a1, a2 = a[act[0]], a[act[s1]], a[act[s2]]
    zi = z[i]
    zi[:] = zero
    if na > 3:
        pre[:] = zero
        for s in range(na):
            al, Vl = a[act[s]], V[tok[i, act[s]]]
            for k in range(m):
                for j in range(vocab_size):
                    pre[k, j] += al * Vl[k, j]
        for k in range(m):
            for j in range(vocab_size):
                zi[j] += max(pre[k, j], zero)
    elif na == 3:                                      # the same sums, one pass over j per two neurons
        _forward(3, zi, V[t0], V[t1], V[t2], a0, a1, a2)
    elif na == 2:
        _forward(2, zi, V[t0], V[t1], V[t2], a0, a1, a2)
    else:
        _forward(1, zi, V[t0], V[t1], V[t2], a0, a1, a2)
    for j in range(vocab_size):
        zi[j] *= lam
    pred[i] = _argmax(zi)
    if not loss:
        ce[i] = np.nan
        return
    mx = float(zi[pred[i]])
    for j in range(vocab_size):
        g[j] = _exp(zi[j] - mx)
    se = _sum(g)
    lse = mx + _log(se)
    c = 0.0
    for k in range(y_idx.shape[1]):
        c -= y_prob[i, k] * (zi[y_idx[i, k]] - lse)
    ce[i] = c
    if not grad or w[i] == 0:
        return
    scale = lam * w[i]
    for j in range(vocab_size):
        g[j] /= se                                     # p
        gw[j] = g[j] * scale
    for k in range(y_idx.shape[1]):
        g[y_idx[i, k]] -= y_prob[i, k]                 # p - y
    for k in range(y_idx.shape[1]):
        gw[y_idx[i, k]] = g[y_idx[i, k]] * scale       # gw = lam w (p - y)
    if grad_S:
        dS[:] = zero                                   # dS[s] = dS_l of the token l = act[s]
    if na <= 3:                                        # one pass for all tokens, as the forward pass
        G0, G1, G2 = _grad_rows(gV, part, dest, t0), _grad_rows(gV, part, dest, t1), _grad_rows(gV, part, dest, t2)
        V0, V1, V2, d0, d1, d2 = V[t0], V[t1], V[t2], dS[0], dS[1], dS[2]
        if na == 3 and grad_S:
            _backward(3, True, gw, V0, V1, V2, G0, G1, G2, d0, d1, d2, a0, a1, a2)
        elif na == 3:
            _backward(3, False, gw, V0, V1, V2, G0, G1, G2, d0, d1, d2, a0, a1, a2)
        elif na == 2 and grad_S:
            _backward(2, True, gw, V0, V1, V2, G0, G1, G2, d0, d1, d2, a0, a1, a2)
        elif na == 2:
            _backward(2, False, gw, V0, V1, V2, G0, G1, G2, d0, d1, d2, a0, a1, a2)
        elif grad_S:
            _backward(1, True, gw, V0, V1, V2, G0, G1, G2, d0, d1, d2, a0, a1, a2)
        else:
            _backward(1, False, gw, V0, V1, V2, G0, G1, G2, d0, d1, d2, a0, a1, a2)
    else:
        for k in range(m):
            for j in range(vocab_size):
                gj = gw[j]
                pre[k, j] = gj if pre[k, j] > 0 else zero
        for s in range(na):
            t = tok[i, act[s]]
            al, Vl, gl, dSs = a[act[s]], V[t], _grad_rows(gV, part, dest, t), dS[s]
            for k in range(m):
                for j in range(vocab_size):
                    gl[k, j] += al * pre[k, j]
            if grad_S:
                for k in range(m):
                    for j in range(vocab_size):
                        dSs[j] += pre[k, j] * Vl[k, j]
    if not grad_S:
        return
    sdS = zero                                         # dscore starts at 0 (_run): tokens left out stay 0
    for s in range(na):
        l = act[s]
        dscore[i, l] = _sum(dS[s]) * rho_tok[i, l]    # dS_l
        sdS += S[i, l] * dscore[i, l]
    rho_L = rho_tok[i, L - 1]
    for l in range(L):
        if a[l] != 0:
            dscore[i, l] = S[i, l] * (dscore[i, l] - sdS) * rho_tok[i, l] * rho_L


@njit(cache=True, boundscheck=False, inline="always")
def _pre(na: int, zero: float, a0: float, a1: float, a2: float, x0: float, x1: float, x2: float) -> float:  # pragma: no cover
    """A pre-activation ``sum_l a_l V[t_l, n, j]`` of ``na <= 3`` tokens (``x_l = V[t_l, n, j]``), summed
    in token order from 0. ``na`` is a constant at every call (the call is inlined): no branch remains."""
    p = zero + a0 * x0
    if na >= 2:
        p = p + a1 * x1
    if na >= 3:
        p = p + a2 * x2
    return p


@njit(cache=True, boundscheck=False, inline="always")
def _forward(na: int, zi: np.ndarray, V0: np.ndarray, V1: np.ndarray, V2: np.ndarray, a0: float, a1: float,
             a2: float) -> None:  # pragma: no cover
    """``zi[j] += ReLU(pre[n, j])`` for the neurons ``n`` in order, of a row of ``na <= 3`` tokens with
    slices ``V0, V1, V2`` of ``V`` (``_row``). Two neurons per pass over ``j``: each ``zi[j]`` is read and
    written once per pair, the same sums in the same order."""
    m, vocab_size = V0.shape
    zero = zi.dtype.type(0)
    k = 0
    while k + 2 <= m:
        for j in range(vocab_size):
            p = _pre(na, zero, a0, a1, a2, V0[k, j], V1[k, j], V2[k, j])
            q = _pre(na, zero, a0, a1, a2, V0[k + 1, j], V1[k + 1, j], V2[k + 1, j])
            zi[j] = (zi[j] + (zero if zero > p else p)) + (zero if zero > q else q)   # max(p, 0): NaN stays
        k += 2
    if k < m:
        for j in range(vocab_size):
            p = _pre(na, zero, a0, a1, a2, V0[k, j], V1[k, j], V2[k, j])
            zi[j] += zero if zero > p else p


@njit(cache=True, boundscheck=False, inline="always")
def _backward(na: int, grad_S: bool, gw: np.ndarray, V0: np.ndarray, V1: np.ndarray, V2: np.ndarray, G0: np.ndarray,
              G1: np.ndarray, G2: np.ndarray, d0: np.ndarray, d1: np.ndarray, d2: np.ndarray, a0: float, a1: float,
              a2: float) -> None:  # pragma: no cover
    """Lemma 1 for a row of ``na <= 3`` tokens (``_row``): with ``mk = gw[j] 1[pre[n, j] > 0]`` (``pre``
    computed again, as ``_forward`` does), ``G_l[n, j] += a_l mk`` into the tokens' gradient rows and,
    with ``grad_S``, ``d_l[j] += mk V_l[n, j]`` over the neurons in order. Two neurons per pass over
    ``j``, as ``_forward``. ``gw[j]`` is read before the test of ``pre``: a load under a condition
    needs a masked load to vectorise, which plain x86-64 lacks (LLVM then left the loop scalar
    there; read first, it vectorises four floats wide)."""
    m, vocab_size = V0.shape
    zero = gw.dtype.type(0)
    k = 0
    while k + 2 <= m:
        for j in range(vocab_size):
            x0, x1, x2 = V0[k, j], V1[k, j], V2[k, j]
            y0, y1, y2 = V0[k + 1, j], V1[k + 1, j], V2[k + 1, j]
            gj = gw[j]                                 # read whatever the signs: a select, not a branch
            mk = gj if _pre(na, zero, a0, a1, a2, x0, x1, x2) > 0 else zero
            ml = gj if _pre(na, zero, a0, a1, a2, y0, y1, y2) > 0 else zero
            G0[k, j] += a0 * mk
            G0[k + 1, j] += a0 * ml
            if grad_S:
                d0[j] = (d0[j] + mk * x0) + ml * y0
            if na >= 2:
                G1[k, j] += a1 * mk
                G1[k + 1, j] += a1 * ml
                if grad_S:
                    d1[j] = (d1[j] + mk * x1) + ml * y1
            if na >= 3:
                G2[k, j] += a2 * mk
                G2[k + 1, j] += a2 * ml
                if grad_S:
                    d2[j] = (d2[j] + mk * x2) + ml * y2
        k += 2
    if k < m:
        for j in range(vocab_size):
            x0, x1, x2, gj = V0[k, j], V1[k, j], V2[k, j], gw[j]
            mk = gj if _pre(na, zero, a0, a1, a2, x0, x1, x2) > 0 else zero
            G0[k, j] += a0 * mk
            if grad_S:
                d0[j] += mk * x0
            if na >= 2:
                G1[k, j] += a1 * mk
                if grad_S:
                    d1[j] += mk * x1
            if na >= 3:
                G2[k, j] += a2 * mk
                if grad_S:
                    d2[j] += mk * x2


@njit(cache=True, boundscheck=False, inline="always")
def _weights(i: int, S: np.ndarray, rho_tok: np.ndarray, a: np.ndarray, act: np.ndarray) -> int:  # pragma: no cover
    """Row ``i``'s token weights ``a_l = S_l rho_l`` into ``a``, those below ``NEGLIGIBLE`` times the
    largest set to 0 (left out); the positions ``l`` of the others into ``act``; returns their count."""
    L = S.shape[1]
    zero = a.dtype.type(0)
    amax = zero
    for l in range(L):
        a[l] = S[i, l] * rho_tok[i, l]
        amax = max(amax, a[l])
    na = 0
    for l in range(L):
        if a[l] < NEGLIGIBLE * amax:
            a[l] = zero                                # left out: see NEGLIGIBLE
        if a[l] != 0:
            act[na] = l
            na += 1
    return na


@njit(cache=True, boundscheck=False, inline="always")
def _grad_rows(gV: np.ndarray, part: np.ndarray, dest: np.ndarray, t: int) -> np.ndarray:  # pragma: no cover
    """Where token ``t``'s ``dL/dV`` row accumulates: its row of ``gV`` or a partial row (``Batch``)."""
    d = dest[t]
    return gV[d] if d >= 0 else part[-1 - d]


@njit(cache=True, boundscheck=False, parallel=True)
def _descend(P: np.ndarray, G: np.ndarray, rows: np.ndarray, eta: float) -> None:  # pragma: no cover
    """``P[rows[u]] -= eta G[u]`` for every row ``u`` (the step of Sec. 4), the rows in parallel
    (each element is its own update: the same result for any thread count)."""
    step = P.dtype.type(-eta)
    for u in prange(len(rows)):
        p, g = P[rows[u]], G[u]
        for k in range(P.shape[1]):
            p[k] += g[k] * step


@njit(cache=True, boundscheck=False)
def _max_abs(P: np.ndarray, rows: np.ndarray, mask: int) -> int:  # pragma: no cover
    """``max (P[rows] & mask)`` of integers (``max_abs``: the bits of floats, ``mask`` clears the sign)."""
    top = P.dtype.type(0)
    m = P.dtype.type(mask)
    for u in range(len(rows)):
        p = P[rows[u]]
        for k in range(P.shape[1]):
            top = max(top, p[k] & m)
    return top
