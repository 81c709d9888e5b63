"""Dense reference of the simplified model (Sec. 2) with embeddings in a large dimension ``d``.

The rest of the package works in the token basis: orthogonal embeddings (Sec. 3) are
placed on standard basis vectors, which loses nothing because the Gaussian
initialisation is rotation invariant on the input side. This module checks that
claim: each token ``t`` is embedded as ``x_t = rho_t E[:, t]``, where ``E`` (d x vocab_size) has
random orthonormal columns (QR of a seeded Gaussian), ``W`` is a dense d x d matrix,
``V`` holds ``m`` dense d-vectors ``v_{j,n}`` per output coordinate ``j`` and plain
autograd gives the gradients. The logits stay over the ``vocab_size`` vocabulary tokens.

Parameters map between the two pictures (Sec. 2: scores ``x_l^T W x_L``, MLP
pre-activations ``<v_{j,n}, h>``)::

    W_tok = E^T W_d E                        V_tok[t, n, j] = <v_{j,n}, E[:, t]>
    W_d   = E W_tok E^T + C  (E^T C E = 0)    v_{j,n} = E V_tok[:, n, j] + u_{j,n}  (E^T u = 0)

Every gradient of ``W_d`` lies in ``span(E) x span(E)`` and every gradient of ``v_{j,n}``
in ``span(E)`` (Lemma 1: they are built from the inputs ``x_l`` and ``h = X S``), so the
random components ``C`` and ``u`` never move and never act: the dense run equals the
token-basis run of ``kaol.fast`` up to rounding.
"""
from __future__ import annotations

from dataclasses import dataclass

import time

import numpy as np
import torch

from .data import ANS_FREQ, ANS_RARE, KnowledgeData, Samples
from .model import ModelConfig, init_params
from .objective import cross_entropy, weighted_mean
from .train import Schedule


@dataclass
class DenseParams:
    """Dense parameters of Sec. 2: ``W`` (d, d) and ``V`` (T_out, m, d), ``V[j, n]`` = ``v_{j,n}``."""

    W: torch.Tensor
    V: torch.Tensor


@dataclass
class DenseResult:
    """What ``dense_pretrain`` returns: the loss at every step ``0..T`` (the last after the
    final update), the accuracy on the pre-training answer samples ``(c, s, r) -> a`` at the
    end, the final dense parameters, the embeddings used and the wall time of each step
    (forward, backward and update, in seconds)."""

    loss: np.ndarray
    acc: float
    params: DenseParams
    E: torch.Tensor
    step_times: np.ndarray


def embeddings(vocab_size: int, d: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Random orthonormal embedding directions ``E`` (d x vocab_size), from the QR of a seeded Gaussian.

    Sec. 3 asks for mutually orthogonal embeddings in ``d >= |vocab|`` dimensions; the
    norms ``rho`` are applied separately (``embed``), so ``E`` has unit-norm columns.
    """
    if vocab_size <= 0:
        raise ValueError(f"vocabulary size vocab_size = {vocab_size} must be positive")
    if d < vocab_size:
        raise ValueError(f"embedding dimension d = {d} is below the vocabulary size vocab_size = {vocab_size}: "
                         f"that many orthogonal embeddings need d >= vocab_size (Sec. 3)")
    g = torch.Generator().manual_seed(seed)
    Q, R = torch.linalg.qr(torch.randn(d, vocab_size, generator=g, dtype=torch.float64))
    Q = Q * torch.sign(torch.diagonal(R))[None, :]          # a unique, Haar-distributed frame
    return Q.to(dtype)


def embed(E: torch.Tensor, rho: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Input matrices ``X`` as (n, L, d): ``x_l = rho_{t_l} E[:, t_l]``, zero on padding (Sec. 2)."""
    scaled = E * rho.to(E.dtype)[None, :]                     # (d, vocab_size): the context column times rho_c
    return scaled.t()[tokens] * mask[..., None].to(E.dtype)


def _orth_complement(E: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """Project the columns of ``M`` (d, k) onto the orthogonal complement of ``span(E)``."""
    return M - E @ (E.t() @ M)


def to_dense(W_tok: torch.Tensor, V_tok: torch.Tensor, E: torch.Tensor, sigma_perp: float = 0.0,
             seed: int = 0) -> DenseParams:
    """Lift token-basis ``W_tok`` (vocab_size, vocab_size) and ``V_tok`` (vocab_size, m, vocab_size) of one run
    to dense parameters.

    With ``sigma_perp > 0`` a random N(0, sigma_perp^2) part outside ``span(E)`` is added
    (``E^T C E = 0`` for ``W``, ``E^T u = 0`` for each neuron), which must stay inert.
    """
    d, vocab_size = E.shape
    _check_shapes(W_tok, V_tok, vocab_size)
    m = V_tok.shape[1]
    W = E @ W_tok.to(E.dtype) @ E.t()
    V = torch.einsum("dt,tnj->jnd", E, V_tok.to(E.dtype))
    if sigma_perp > 0:
        g = torch.Generator().manual_seed(seed)
        G = sigma_perp * torch.randn(d, d, generator=g, dtype=E.dtype)
        W = W + G - E @ (E.t() @ G @ E) @ E.t()
        U = sigma_perp * torch.randn(d, vocab_size * m, generator=g, dtype=E.dtype)
        V = V + _orth_complement(E, U).t().reshape(vocab_size, m, d)
    return DenseParams(W, V)


def to_tokens(p: DenseParams, E: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-basis ``W_tok = E^T W E`` (vocab_size, vocab_size) and ``V_tok[t, n, j] = <v_{j,n}, E[:, t]>``
    (vocab_size, m, vocab_size)."""
    return E.t() @ p.W @ E, torch.einsum("dt,jnd->tnj", E, p.V)


def _check_shapes(W_tok: torch.Tensor, V_tok: torch.Tensor, vocab_size: int) -> None:
    if W_tok.shape != (vocab_size, vocab_size) or V_tok.dim() != 3 or V_tok.shape[0] != vocab_size \
            or V_tok.shape[2] != vocab_size:
        raise ValueError(f"token-basis parameters of one run need W (vocab_size, vocab_size) and V (vocab_size, m, "
                         f"vocab_size) with vocab_size = {vocab_size}, "
                         f"got W {tuple(W_tok.shape)} and V {tuple(V_tok.shape)}")


def forward(p: DenseParams, X: torch.Tensor, mask: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (n, vocab_size) and attention (n, L) of the simplified model, plain dense (Sec. 2).

    ``S = softmax(X^T W x_L)``, ``h = X S``, ``F_j = sum_n ReLU(<v_{j,n}, h>)``, ``z = lambda F``.
    """
    q = X[:, -1] @ p.W.t()                                    # (n, d): W x_L
    scores = torch.einsum("nld,nd->nl", X, q).masked_fill(~mask, float("-inf"))
    S = torch.softmax(scores, -1)
    h = torch.einsum("nl,nld->nd", S, X)
    pre = torch.einsum("nd,jkd->njk", h, p.V)                 # (n, T_out, m): <v_{j,k}, h>
    return lam * pre.clamp_min(0).sum(-1), S


def loss(p: DenseParams, X: torch.Tensor, s: Samples, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted mean cross-entropy ``sum_i w_i CE_i / sum_i w_i`` (Sec. 3, App. J) and the logits."""
    z, _ = forward(p, X, s.mask, lam)
    return weighted_mean(cross_entropy(z, s.y_idx, s.y_prob), s.weight), z


def answer_accuracy(z: torch.Tensor, s: Samples) -> float:
    """Share of the answer samples ``(c, s_i, r_k) -> a_i`` whose argmax is ``a_i`` (Sec. 3)."""
    sel = (s.kind == ANS_FREQ) | (s.kind == ANS_RARE)
    return float((z.argmax(-1) == s.answer)[sel].double().mean())


def dense_pretrain(data: KnowledgeData, model: ModelConfig, schedule: Schedule, d: int, seed: int = 0,
                   emb_seed: int = 1, sigma_perp: float | None = None) -> DenseResult:
    """Full-batch gradient descent (Sec. 4) on the dense model, with autograd.

    The initial token-basis parameters are those of ``kaol.model.init_params(model, vocab_size, 1,
    seed)``, lifted with ``to_dense`` plus an inert part outside ``span(E)`` of scale
    ``sigma_perp`` (default ``model.sigma0``); the run must then reproduce
    ``kaol.train.pretrain(data, model, schedule, seed)``.
    """
    if model.arch != "simplified":
        raise ValueError(f"the dense reference is the simplified model of Sec. 2, not arch = {model.arch!r}")
    vocab_size, s = data.vocab.size, data.pretrain
    E = embeddings(vocab_size, d, emb_seed, model.dtype)
    X = embed(E, data.vocab.rho, s.tokens, s.mask)
    tok = init_params(model, vocab_size, 1, seed)
    sp = model.sigma0 if sigma_perp is None else sigma_perp
    p = to_dense(tok["W"][0], tok["V"][0], E, sp, seed=emb_seed + 1)
    W, V = p.W.requires_grad_(True), p.V.requires_grad_(True)
    losses, times = [], []
    for t in range(schedule.T + 1):
        start = time.perf_counter()
        L, z = loss(DenseParams(W, V), X, s, model.lam)
        losses.append(float(L.detach()))
        if not torch.isfinite(L.detach()):
            last = max(t - 1, 0)                                  # the update that produced this loss
            raise ValueError(f"dense pre-training (Stage {schedule.stage(last)}) loss became {losses[-1]} at "
                             f"step {t} after a step at learning rate {schedule.rate(last)}: lower that rate")
        if t == schedule.T:
            break
        gW, gV = torch.autograd.grad(L, [W, V])
        with torch.no_grad():
            W -= schedule.rate(t) * gW
            V -= schedule.rate(t) * gV
        times.append(time.perf_counter() - start)
    return DenseResult(np.array(losses), answer_accuracy(z.detach(), s), DenseParams(W.detach(), V.detach()), E,
                       np.array(times))
