"""The dense reference (random orthonormal embeddings in ``d`` > vocabulary, autograd) against the
token-basis fast path: Sec. 3's claim that placing the embeddings on basis vectors loses nothing."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kaol import dense, fast
from kaol.data import ANS_FREQ, ANS_RARE, make_data
from kaol.model import ModelConfig, init_params
from kaol.train import Schedule, pretrain

from .reference import SMALL, one_run

MODEL = ModelConfig(dtype=torch.float64)
SCHEDULE = Schedule(eta=(5.0, 20.0, 10.0), T1=5, T2=25, T=40)


def _fast_accuracy(params: dict[str, torch.Tensor], data, model: ModelConfig) -> float:
    """Pre-training answer accuracy of one run's token-basis parameters, from ``fast.run``'s logits."""
    v, s = data.vocab, data.pretrain
    out = fast.run(params["W"], params["V"], fast.Batch.build(s, v.size, v.rho, model.dtype), model.lam, grad=False)
    sel = (s.kind == ANS_FREQ) | (s.kind == ANS_RARE)
    return float((out.logits.argmax(-1) == s.answer)[sel].double().mean())


def test_embeddings_are_orthonormal_and_seeded() -> None:
    E = dense.embeddings(25, 75, seed=4)
    assert E.shape == (75, 25)
    assert torch.allclose(E.t() @ E, torch.eye(25, dtype=torch.float64), atol=1e-13)
    assert torch.equal(E, dense.embeddings(25, 75, seed=4))
    assert not torch.allclose(E, dense.embeddings(25, 75, seed=5))


def test_context_embedding_has_norm_rho_c() -> None:
    data = make_data(SMALL.with_(rho_c=3.5))
    E = dense.embeddings(data.vocab.size, 60)
    X = dense.embed(E, data.vocab.rho, data.pretrain.tokens, data.pretrain.mask)
    norms = X.norm(dim=-1)
    is_c = (data.pretrain.tokens == data.vocab.c) & data.pretrain.mask
    assert torch.allclose(norms[is_c], torch.tensor(3.5, dtype=torch.float64), atol=1e-13)
    assert torch.allclose(norms[~is_c & data.pretrain.mask], torch.tensor(1.0, dtype=torch.float64), atol=1e-13)
    assert float(norms[~data.pretrain.mask].abs().max()) == 0.0


def test_lift_and_project_round_trip() -> None:
    """``to_tokens(to_dense(W, V))`` returns ``(W, V)``: the part outside span(E) is invisible."""
    vocab_size = 25
    p = init_params(MODEL.with_(sigma0=1.0), vocab_size, 1, seed=0)
    E = dense.embeddings(vocab_size, 80, seed=2)
    lifted = dense.to_dense(p["W"][0], p["V"][0], E, sigma_perp=1.0, seed=9)
    W, V = dense.to_tokens(lifted, E)
    assert torch.allclose(W, p["W"][0], atol=1e-12) and torch.allclose(V, p["V"][0], atol=1e-12)
    assert float((lifted.W - E @ W @ E.t()).norm()) > 10.0      # the random part is really there


def test_dense_forward_equals_token_basis() -> None:
    """The dense logits of a lifted model equal the token-basis logits of ``fast.run`` (Sec. 2)."""
    data = make_data(SMALL)
    v, s = data.vocab, data.pretrain
    model = MODEL.with_(sigma0=0.5)
    p = one_run(init_params(model, v.size, 1, seed=1))
    E = dense.embeddings(v.size, 3 * v.size, seed=3)
    z, S = dense.forward(dense.to_dense(p["W"], p["V"], E, 0.5, seed=1),
                         dense.embed(E, v.rho, s.tokens, s.mask), s.mask, model.lam)
    out = fast.run(p["W"], p["V"], fast.Batch.build(s, v.size, v.rho, torch.float64), model.lam, grad=False)
    assert torch.allclose(z, out.logits, rtol=0, atol=1e-12)
    assert torch.allclose(S, out.S, rtol=0, atol=1e-12)


@pytest.mark.parametrize("context", [True, False], ids=["context", "three-token"])
def test_dense_pretraining_matches_fast_path(context: bool) -> None:
    """40 full-batch steps in d = 3 |vocab| with rotated embeddings and an inert random part
    give the same loss history (to 1e-9), the same accuracy and the same token-basis weights."""
    data = make_data(SMALL.with_(context=context))
    vocab_size = data.vocab.size
    res = dense.dense_pretrain(data, MODEL, SCHEDULE, d=3 * vocab_size, seed=7)
    params, hist = pretrain(data, MODEL, SCHEDULE, seed=7, log_every=1)
    loss = np.array(hist.loss)[:, 0]
    assert loss[-1] < 0.7 * loss[0]                                  # training really moved
    np.testing.assert_allclose(res.loss, loss, rtol=0, atol=1e-9)
    assert res.acc == _fast_accuracy(one_run(params), data, MODEL)
    W, V = dense.to_tokens(res.params, res.E)
    assert torch.allclose(W, params["W"][0], rtol=0, atol=1e-9)
    assert torch.allclose(V, params["V"][0], rtol=0, atol=1e-9)


def test_component_outside_span_is_inert() -> None:
    """The random part of the dense weights outside span(E) is exactly where it started."""
    data = make_data(SMALL)
    vocab_size = data.vocab.size
    res = dense.dense_pretrain(data, MODEL, Schedule(eta=(5.0, 20.0, 10.0), T1=2, T2=5, T=10), d=2 * vocab_size,
                               seed=1, emb_seed=4)
    init = init_params(MODEL, vocab_size, 1, seed=1)
    start = dense.to_dense(init["W"][0], init["V"][0], res.E, MODEL.sigma0, seed=5)
    E = res.E
    P = torch.eye(2 * vocab_size, dtype=torch.float64) - E @ E.t()
    assert torch.allclose(res.params.W - E @ E.t() @ res.params.W @ E @ E.t(),
                          start.W - E @ E.t() @ start.W @ E @ E.t(), rtol=0, atol=1e-13)
    assert torch.allclose(res.params.V @ P, start.V @ P, rtol=0, atol=1e-13)


def test_d_below_vocabulary_raises() -> None:
    data = make_data(SMALL)
    with pytest.raises(ValueError, match=r"\bd = 10\b.*vocabulary"):
        dense.dense_pretrain(data, MODEL, SCHEDULE, d=10)


def test_dense_rejects_other_architectures() -> None:
    with pytest.raises(ValueError, match="arch"):
        dense.dense_pretrain(make_data(SMALL), MODEL.with_(arch="uniform_mlp"), SCHEDULE, d=100)


def test_dense_nan_names_stage() -> None:
    """A rate that overflows float32 makes the loss NaN: the error names the stage and the fix."""
    with pytest.raises(ValueError, match=r"Stage 2.*1e\+38: lower that rate"):
        dense.dense_pretrain(make_data(SMALL), MODEL.with_(dtype=torch.float32),
                             Schedule(eta=(1.0, 1e38, 1.0), T1=2, T2=4, T=6), d=50)
