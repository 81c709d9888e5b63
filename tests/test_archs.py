"""The three other architectures of App. A / Table 3: attention-only, uniform attention + MLP,
and a standard one-layer transformer (shapes, attention, and that gradient descent trains them)."""
from __future__ import annotations

import pytest
import torch

from kaol.data import make_data
from kaol.model import ARCHS, ModelConfig, forward, init_params
from kaol.train import Schedule, pretrain

from .reference import SMALL, one_run

OTHERS = [a for a in ARCHS if a != "simplified"]


@pytest.mark.parametrize("context", [True, False], ids=["context", "three-token"])
@pytest.mark.parametrize("arch", ARCHS)
def test_forward_shapes_and_attention(arch: str, context: bool) -> None:
    """Logits (n, vocab_size); attention (n, L) is a distribution over the real tokens only."""
    data = make_data(SMALL.with_(context=context))
    v, s = data.vocab, data.pretrain
    model = ModelConfig(arch=arch, dtype=torch.float64, sigma0=0.3)
    params = init_params(model, v.size, B=2, seed=0)
    logits, S = zip(*(forward(model, one_run(params, b), s.tokens, s.mask, v.rho) for b in range(2)))
    n, L = s.tokens.shape
    for b in range(2):
        assert logits[b].shape == (n, v.size) and S[b].shape == (n, L)
        assert torch.isfinite(logits[b]).all()
        assert torch.allclose(S[b].double().sum(-1), torch.ones(n, dtype=torch.float64), atol=1e-6)
        assert float(S[b][~s.mask].abs().max()) == 0.0
    assert not torch.equal(logits[0], logits[1])                       # runs have their own seeds


def test_uniform_mlp_attention_is_uniform() -> None:
    """Uniform attention + MLP (App. A): ``S_l = 1 / (number of real tokens)``, whatever ``V``."""
    data = make_data(SMALL)
    s = data.pretrain
    model = ModelConfig(arch="uniform_mlp", dtype=torch.float64, sigma0=1.0)
    _, S = forward(model, one_run(init_params(model, data.vocab.size, 1, 5)), s.tokens, s.mask, data.vocab.rho)
    count = s.mask.sum(-1, keepdim=True).double()
    assert torch.allclose(S.double(), s.mask.double() / count, rtol=0, atol=1e-7)
    assert set(count.flatten().tolist()) == {2.0, 3.0}


@pytest.mark.parametrize("context", [True, False], ids=["context", "three-token"])
@pytest.mark.parametrize("arch", OTHERS)
def test_gradient_descent_lowers_loss(arch: str, context: bool) -> None:
    """Ten full-batch steps at rate 1 (autograd path of ``kaol.train``) lower the loss by >= 5%."""
    data = make_data(SMALL.with_(context=context))
    params, hist = pretrain(data, ModelConfig(arch=arch, dtype=torch.float64), Schedule.constant(1.0, 10), log_every=1)
    loss = [float(x[0]) for x in hist.loss]
    assert loss[-1] < 0.95 * loss[0]
    assert set(params) == set(init_params(ModelConfig(arch=arch), data.vocab.size))


@pytest.mark.parametrize("arch", ARCHS)
def test_attention_dtype_follows_model(arch: str) -> None:
    """Logits and attention come in the model's dtype (a float64 run stays float64)."""
    data = make_data(SMALL)
    model = ModelConfig(arch=arch, dtype=torch.float64)
    logits, S = forward(model, one_run(init_params(model, data.vocab.size)), data.pretrain.tokens,
                        data.pretrain.mask, data.vocab.rho)
    assert logits.dtype == torch.float64 and S.dtype == torch.float64
