"""What the chapters measure: losses by sample type, attention masses, MLP features (Prop. 2),
the fine-tuning gradient's spectrum (Prop. 3) and its best rank-1 approximation (App. H)."""
from __future__ import annotations

import numpy as np
import torch

from .data import ANS_FREQ, ANS_RARE, CTX_FREQ, CTX_RARE, KnowledgeData, Vocab
from .fast import Batch

FEATURES = ("s->a", "r->a", "s->r", "c->r")
"""Feature strengths tracked by ``features``: ``x->y`` is ``sum_n <v_{y,n}, e_x>``, the
push of input token x on the logit of y, averaged over the facts' pairs."""


def loss_by_kind(ce: torch.Tensor, batch: Batch) -> np.ndarray:
    """Weighted mean cross-entropy of each sample kind (``kaol.data.KIND_NAMES``), (B, 5); NaN if absent."""
    out = np.full((ce.shape[0], 5), np.nan)
    for k in range(5):
        sel = batch.kind == k
        w = (batch.w * sel).sum(1)
        ok = w > 0
        out[ok.numpy(), k] = ((batch.w * ce * sel).sum(1)[ok] / w[ok]).numpy()
    return out


def token_kinds(v: Vocab) -> torch.Tensor:
    """Code of each token: 0 = c, 1 = s, 2 = r, 3 = a or q."""
    codes = {"c": 0, "s": 1, "r": 2, "a": 3, "q": 3}
    return torch.tensor([codes[v.kind_of(t)] for t in range(v.size)])


def attention_mass(S: torch.Tensor, batch: Batch, v: Vocab) -> np.ndarray:
    """Mean attention on the c, s and r tokens (B, 2, 3): row 0 for the ``(c, s)`` inputs,
    row 1 for the ``(c, s, r)`` inputs (Prop. 1)."""
    tk = token_kinds(v)[batch.tokens] * batch.mask + 3 * ~batch.mask
    out = np.zeros((S.shape[0], 2, 3))
    for row, kinds in enumerate([(CTX_FREQ, CTX_RARE), (ANS_FREQ, ANS_RARE)]):
        sel = (batch.kind == kinds[0]) | (batch.kind == kinds[1])
        cnt = sel.sum(1).clamp_min(1)
        for c in range(3):
            out[:, row, c] = (((S * (tk == c)).sum(-1) * sel).sum(1) / cnt).numpy()
    return out


def features(V: torch.Tensor, runs: list[KnowledgeData]) -> np.ndarray:
    """Feature strengths of ``FEATURES`` for each run (B, 4), from ``V`` (B, T, m, T)."""
    F = V.sum(2)                                    # (B, T_in, T_out): sum over the m neurons
    out = np.zeros((len(runs), len(FEATURES)))
    for b, d in enumerate(runs):
        v, f = d.vocab, F[b]
        facts = np.arange(d.cfg.N)
        pairs = [(i, int(k)) for i in facts for k in d.phrases[i]]
        si = torch.tensor([v.s(i) for i, _ in pairs])
        rk = torch.tensor([v.r(k) for _, k in pairs])
        ai = torch.tensor([v.a(i) for i, _ in pairs])
        out[b, 0] = f[torch.tensor([v.s(int(i)) for i in facts]), torch.tensor([v.a(int(i)) for i in facts])].mean()
        out[b, 1] = f[rk, ai].mean()
        out[b, 2] = f[si, rk].mean()
        out[b, 3] = f[v.c, torch.tensor([v.r(k) for k in range(d.cfg.R)])].mean() if v.context else np.nan
    return out


def _as_matrix(gV: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The V gradient as (B, inputs, neurons) restricted to the input rows that are non-zero."""
    M = gV.reshape(gV.shape[0], gV.shape[1], -1)
    rows = torch.nonzero(M.abs().sum((0, 2)) > 0).squeeze(1)
    return M[:, rows], rows


def gradient_spectrum(gV: torch.Tensor, q: int) -> tuple[np.ndarray, np.ndarray]:
    """Singular values of the V gradient seen as a (neurons x inputs) matrix, and the
    alignment ``|<u_1, e_q>|`` of its top right singular vector with ``q`` (Prop. 3)."""
    M, rows = _as_matrix(gV)
    U, s, _ = torch.linalg.svd(M.double(), full_matrices=False)
    iq = (rows == q).nonzero()
    align = U[:, iq[0, 0], 0].abs() if len(iq) else torch.zeros(M.shape[0])
    return s.numpy(), align.numpy()


def rank1(gV: torch.Tensor) -> torch.Tensor:
    """Best rank-1 approximation ``sigma_1 u_1 v_1^T`` of each run's V gradient (Eckart-Young, App. H),
    (B, T, m, T) or given on some rows only (B, U, m, T): zero rows do not change it.

    With ``M`` the (inputs x neurons) matrix, ``u_1`` is the top eigenvector of the small Gram
    matrix ``M M^T`` (inputs x inputs, eigendecomposed in float64) and ``sigma_1 u_1 v_1^T =
    u_1 u_1^T M``: the same matrix as from an SVD of ``M``, about 9x faster at book scale.
    """
    M, rows = _as_matrix(gV)
    _, U = torch.linalg.eigh((M @ M.transpose(1, 2)).double())
    u = U[..., -1:].to(M.dtype)
    out = gV.new_zeros(gV.shape[0], gV.shape[1], M.shape[2])
    out[:, rows] = u @ (u.transpose(1, 2) @ M)
    return out.view_as(gV)


def rank1_share(sv: np.ndarray) -> np.ndarray:
    """``sigma_1^2 / sum_k sigma_k^2``: the share of the gradient's energy in its top direction."""
    return sv[..., 0] ** 2 / (sv ** 2).sum(-1)
