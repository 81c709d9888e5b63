"""Independent references for the tests: Lemma 1 as a per-sample numpy loop, the autograd
loss of ``kaol.model.forward`` on one run's samples, small shared configurations and one
run's parameters out of stacked runs."""
from __future__ import annotations

import numpy as np
import torch

from kaol.data import DataConfig, KnowledgeData, Samples
from kaol.model import ModelConfig, forward
from kaol.objective import cross_entropy, weighted_mean

SMALL = DataConfig(N_f=6, N_r=3, R=5, K=2, N_ft=3)
"""A small data set (vocabulary of 25 tokens) that keeps every test fast."""


def one_run(params: dict[str, torch.Tensor], b: int = 0) -> dict[str, torch.Tensor]:
    """Run ``b``'s parameters out of ``B`` runs stacked along a leading axis (``init_params``,
    ``pretrain``): what ``kaol.model.forward`` and ``kaol.fast.run`` take."""
    return {k: p[b] for k, p in params.items()}


def lemma1_loop(W: np.ndarray, V: np.ndarray, s: Samples, rho: np.ndarray, lam: float
                ) -> tuple[float, np.ndarray, np.ndarray]:
    """Loss and gradients of one run by the explicit formulas of Lemma 1, one sample at a time.

    ``W`` (vocab_size, vocab_size), ``V`` (vocab_size, m, vocab_size) with ``V[:, n, j] = v_{j,n}``. For each
    row, with weight ``w = weight / sum(weight)`` and ``g_j = w lambda (p_j - y_j)``::

        dL/dv_{j,n} += g_j 1[<v_{j,n}, h> > 0] h
        dL/dh        = sum_{j,n} g_j 1[<v_{j,n}, h> > 0] v_{j,n}
        dL/dW       += sum_l S_l (<dL/dh, x_l> - <dL/dh, h>) x_l x_L^T
    """
    vocab_size, m, _ = V.shape
    weights = s.weight.numpy() / s.weight.numpy().sum()
    loss, gW, gV = 0.0, np.zeros_like(W), np.zeros_like(V)
    for i in range(len(s)):
        toks = s.tokens[i][s.mask[i]].numpy()
        X = np.stack([rho[t] * np.eye(vocab_size)[t] for t in toks], 1)   # (vocab_size, L) in the token basis
        xL = X[:, -1]
        scores = X.T @ W @ xL
        S = np.exp(scores - scores.max())
        S /= S.sum()
        h = X @ S
        pre = np.einsum("tnj,t->jn", V, h)                               # <v_{j,n}, h>
        z = lam * np.maximum(pre, 0).sum(1)
        p = np.exp(z - z.max())
        p /= p.sum()
        y = np.zeros(vocab_size)
        y[s.y_idx[i].numpy()] += s.y_prob[i].numpy()
        loss += weights[i] * -(y * np.log(p)).sum()
        g = weights[i] * lam * (p - y)
        act = (pre > 0).astype(float)                                    # (T_out, m)
        gV += np.einsum("jn,t->tnj", g[:, None] * act, h)
        dh = np.einsum("jn,tnj->t", g[:, None] * act, V)
        for l in range(X.shape[1]):
            gW += S[l] * (dh @ X[:, l] - dh @ h) * np.outer(X[:, l], xL)
    return loss, gW, gV


def autograd_one(model: ModelConfig, W: torch.Tensor, V: torch.Tensor, s: Samples, rho: torch.Tensor
                 ) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Loss (weighted mean CE, App. J) and autograd gradients of one run's samples, via ``kaol.model.forward``."""
    Wl, Vl = W.detach().clone().requires_grad_(True), V.detach().clone().requires_grad_(True)
    logits, _ = forward(model, {"W": Wl, "V": Vl}, s.tokens, s.mask, rho)
    loss = weighted_mean(cross_entropy(logits, s.y_idx, s.y_prob), s.weight)
    gW, gV = torch.autograd.grad(loss, [Wl, Vl])
    return float(loss.detach()), gW, gV


def optimal_probs(data: KnowledgeData, s: Samples) -> torch.Tensor:
    """The exact conditional distribution of the next token for each row of ``s`` (Sec. 3),
    built from the facts' phrasings: ``(c, s_i)`` -> uniform over the phrases of fact ``i``,
    ``(c, s_i, r_k)`` -> ``a_i``."""
    v, vocab_size = data.vocab, data.vocab.size
    P = torch.zeros(len(s), vocab_size, dtype=torch.float64)
    for row in range(len(s)):
        toks = s.tokens[row][s.mask[row]].tolist()
        last = toks[-1]
        if v.kind_of(last) == "s":
            i = last - v.s(0)
            ks = data.phrases[i]
            P[row, [v.r(int(k)) for k in ks]] = 1.0 / len(ks)
        else:
            subj = [t for t in toks if v.kind_of(t) == "s"][0]
            P[row, v.a(subj - v.s(0))] = 1.0
    return P


def weighted_ce(P: torch.Tensor, s: Samples, weights: torch.Tensor) -> float:
    """``sum_i w_i CE(y_i, P_i) / sum_i w_i``, with ``0 log 0 = 0`` where the target has no mass."""
    logP = torch.log(P.gather(1, s.y_idx).clamp_min(1e-300))
    ce = -(s.y_prob * torch.where(s.y_prob > 0, logP, torch.zeros_like(logP))).sum(1)
    return float((weights * ce).sum() / weights.sum())
