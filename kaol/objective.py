"""The pre-training objective, by autograd: the weighted mean cross-entropy of Sec. 3 / App. J.

``kaol.fast.run`` computes this loss and its Lemma 1 gradients without autograd; the
functions here are the plain-torch definition it is checked against (chapter 1, the
tests) and the loss of the dense model (``kaol.dense``).
"""
from __future__ import annotations

import torch


def cross_entropy(logits: torch.Tensor, y_idx: torch.Tensor, y_prob: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each row against its target distribution (Eq. (9)'s ``ell``).

    ``logits`` is ``(..., n, vocab_size)``; row ``i``'s target puts ``y_prob[i]`` on the tokens
    ``y_idx[i]`` (``(n, k)`` as in ``kaol.fast.Batch``): ``-sum_j y_prob[i, j] log p(y_idx[i, j])``,
    shape ``(..., n)``.
    A merged row (``kaol.data``: ``K`` samples with one input) has a uniform target.
    """
    logp = torch.log_softmax(logits, -1)
    k = y_idx.shape[-1]
    idx = y_idx.reshape(*logp.shape[:-1], k)
    return -(y_prob.reshape(idx.shape).to(logp.dtype) * logp.gather(-1, idx)).sum(-1)


def weighted_mean(ce: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``sum_i w_i ce_i / sum_i w_i`` over the last axis: App. J's weighted loss of Eq. (9)."""
    w = weight.to(ce.dtype)
    return (w * ce).sum(-1) / w.sum(-1)
