"""kaol.objective: the weighted cross-entropy by autograd (Sec. 3, App. J)."""
from __future__ import annotations

import math

import torch

from kaol import fast
from kaol.data import make_data
from kaol.model import ModelConfig, forward, init_params
from kaol.objective import cross_entropy, weighted_mean

from .reference import SMALL, one_run


def test_cross_entropy_of_a_uniform_target_is_the_mean_of_its_terms():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]], dtype=torch.float64)
    logp = torch.log_softmax(logits[0], -1)
    ce = cross_entropy(logits, torch.tensor([[1, 3]]), torch.tensor([[0.5, 0.5]]))
    assert ce.shape == (1,)
    assert math.isclose(float(ce[0]), float(-(logp[1] + logp[3]) / 2), rel_tol=1e-12)


def test_weighted_mean():
    ce = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    assert math.isclose(float(weighted_mean(ce, torch.tensor([1.0, 1.0, 2.0]))), 11 / 4)


def test_loss_equals_the_fast_path():
    """``weighted_mean(cross_entropy(...))`` of ``forward``'s logits is ``fast.run``'s loss, for
    each of two runs (seeds 0 and 1) on the same data."""
    data = make_data(SMALL)
    v = data.vocab
    model = ModelConfig(dtype=torch.float64)
    p = init_params(model, v.size, B=2, seed=[0, 1])
    batch = fast.Batch.build(data.pretrain, v.size, v.rho, torch.float64)
    losses = []
    for b in range(2):
        logits, _ = forward(model, one_run(p, b), batch.tokens, batch.mask, v.rho)
        loss = weighted_mean(cross_entropy(logits, batch.y_idx, batch.y_prob), batch.w)
        out = fast.run(p["W"][b], p["V"][b], batch, model.lam, grad=False)
        assert loss.shape == out.loss.shape == ()
        assert torch.allclose(loss, out.loss, rtol=0, atol=1e-12)
        losses.append(float(loss))
    assert losses[0] != losses[1]                                      # the runs differ
