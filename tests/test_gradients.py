"""The exact sparse gradients of ``kaol.fast`` (Lemma 1) against autograd on ``kaol.model.forward``
and against a per-sample numpy loop of the Lemma 1 formulas (float64 throughout)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from numba import njit

from kaol import fast
from kaol.data import DataConfig, _samples, make_data
from kaol.model import ModelConfig, forward, init_params

from .reference import SMALL, autograd_one, lemma1_loop, one_run

TOL = 1e-10          # absolute, float64; gradients are O(1e-1) at these scales


def _params(model: ModelConfig, vocab_size: int, seed: int) -> dict[str, torch.Tensor]:
    """One run's initial parameters (``init_params`` without the run axis): what ``fast.run`` takes."""
    return one_run(init_params(model, vocab_size, 1, seed))


CONFIGS = [
    pytest.param(SMALL, ModelConfig(m=3, sigma0=0.5, lam=1.0, dtype=torch.float64), id="context"),
    pytest.param(SMALL.with_(context=False), ModelConfig(m=2, sigma0=0.7, lam=2.0, dtype=torch.float64),
                 id="three-token"),
    pytest.param(SMALL.with_(rare_weight=1.0, K=3), ModelConfig(m=1, sigma0=1.0, lam=0.5, dtype=torch.float64),
                 id="unweighted-m1"),
    pytest.param(SMALL.with_(rho_c=5.0, N_r=0, K=5), ModelConfig(m=4, sigma0=0.3, dtype=torch.float64),
                 id="no-rare"),
]


@pytest.mark.parametrize("cfg,model", CONFIGS)
def test_fast_matches_autograd(cfg: DataConfig, model: ModelConfig) -> None:
    """Loss, dL/dW and dL/dV of ``fast.run`` equal autograd on the plain model (Sec. 2, Lemma 1)."""
    data = make_data(cfg)
    v = data.vocab
    p = _params(model, v.size, seed=3)
    batch = fast.Batch.build(data.pretrain, v.size, v.rho, torch.float64)
    out = fast.run(p["W"], p["V"], batch, model.lam)
    loss, gW, gV = autograd_one(model, p["W"], p["V"], data.pretrain, v.rho)
    assert out.loss.shape == () and out.gW.shape == gW.shape and out.gV.shape == gV.shape
    assert abs(float(out.loss) - loss) < TOL
    assert torch.allclose(out.gW, gW, rtol=0, atol=TOL)
    assert torch.allclose(out.gV, gV, rtol=0, atol=TOL)
    assert gW.abs().max() > 1e-3 and gV.abs().max() > 1e-3          # the comparison is not of zeros


@pytest.mark.parametrize("cfg,model", CONFIGS)
def test_fast_matches_lemma1_loop(cfg: DataConfig, model: ModelConfig) -> None:
    """``fast.run`` equals the explicit Lemma 1 formulas evaluated sample by sample in numpy."""
    data = make_data(cfg)
    v = data.vocab
    p = _params(model, v.size, seed=5)
    batch = fast.Batch.build(data.pretrain, v.size, v.rho, torch.float64)
    out = fast.run(p["W"], p["V"], batch, model.lam)
    loss, gW, gV = lemma1_loop(p["W"].numpy(), p["V"].numpy(), data.pretrain, v.rho.numpy(), model.lam)
    assert abs(float(out.loss) - loss) < TOL
    np.testing.assert_allclose(out.gW.numpy(), gW, rtol=0, atol=TOL)
    np.testing.assert_allclose(out.gV.numpy(), gV, rtol=0, atol=TOL)


def test_runs_with_own_data_match_autograd() -> None:
    """Runs with their own data, context norm ``rho_c`` and row count, each passed to ``fast.run``
    alone (as ``kaol.train`` does), give that run's autograd loss and gradients; trained in one
    call they equal each run trained alone (``tests/test_train.py``)."""
    model = ModelConfig(m=3, sigma0=0.5, dtype=torch.float64)
    datas = [make_data(SMALL.with_(K=k, seed=s, rho_c=r)) for k, s, r in [(2, 0, 5.0), (3, 1, 2.0), (1, 2, 5.0),
                                                                          (5, 3, 8.0)]]
    v = datas[0].vocab
    assert len({d.vocab.size for d in datas}) == 1 and len({len(d.pretrain) for d in datas}) == 4
    params = init_params(model, v.size, len(datas), seed=11)
    for b, d in enumerate(datas):
        p = one_run(params, b)
        out = fast.run(p["W"], p["V"], fast.Batch.build(d.pretrain, v.size, d.vocab.rho, torch.float64), model.lam)
        loss, gW, gV = autograd_one(model, p["W"], p["V"], d.pretrain, d.vocab.rho)
        assert abs(float(out.loss) - loss) < TOL
        assert torch.allclose(out.gW, gW, rtol=0, atol=TOL)
        assert torch.allclose(out.gV, gV, rtol=0, atol=TOL)


def test_qa_gradient_with_fixed_attention() -> None:
    """Fine-tuning passes the fixed attention ``S`` and skips dL/dW (Lemma 17): dL/dV is unchanged."""
    model = ModelConfig(m=3, sigma0=0.5, dtype=torch.float64)
    data = make_data(SMALL)
    v = data.vocab
    p = _params(model, v.size, seed=2)
    batch = fast.Batch.build(data.qa_train, v.size, v.rho, torch.float64)
    S = fast.attention(p["W"], batch)
    out = fast.run(p["W"], p["V"], batch, model.lam, grad_W=False, S=S)
    assert out.gW is None
    loss, _, gV = autograd_one(model, p["W"], p["V"], data.qa_train, v.rho)
    assert abs(float(out.loss) - loss) < TOL
    assert torch.allclose(out.gV, gV, rtol=0, atol=TOL)


def test_negligible_tokens_left_out_exactly() -> None:
    """Attention that puts weights below ``NEGLIGIBLE`` (subnormal in float32) on some tokens, as
    trained attention does: ``fast.run`` in float32 still equals float64 autograd on the whole
    model to float32 rounding, and the tokens left out get no ``dL/dW``."""
    model = ModelConfig(m=3, sigma0=0.5, dtype=torch.float32)
    data = make_data(SMALL)
    v = data.vocab
    p = _params(model, v.size, seed=4)
    p["W"][v.c, :] = -20.0             # the context weighs about e^-(20 rho_c) of the others
    batch = fast.Batch.build(data.pretrain, v.size, v.rho, torch.float32)
    S = fast.attention(p["W"], batch)
    a = S * batch.rho_tokens
    tiny = (a > 0) & ~fast.used_tokens(S, batch)
    assert tiny.sum() >= 10 and bool((a[tiny] < torch.finfo(torch.float32).tiny).any())   # subnormal weights
    out = fast.run(p["W"], p["V"], batch, model.lam)
    m64 = model.with_(dtype=torch.float64)
    loss, gW, gV = autograd_one(m64, p["W"].double(), p["V"].double(), data.pretrain, v.rho)
    assert abs(float(out.loss) - loss) < 1e-6 * loss
    assert torch.allclose(out.gV.double(), gV, rtol=0, atol=1e-6 * float(gV.abs().max()))
    assert torch.allclose(out.gW.double(), gW, rtol=0, atol=1e-6 * float(gW.abs().max()))
    assert float(out.gW[v.c].abs().max()) == 0.0        # the context row of W: only tiny-weight terms


@pytest.mark.parametrize("context", [True, False], ids=["context", "three-token"])
def test_uniform_mlp_matches_autograd(context: bool) -> None:
    """Uniform attention + MLP (Table 3) trains on the exact path with ``W=None`` and its uniform
    ``S``: loss, logits and dL/dV equal autograd on ``kaol.model.forward``."""
    model = ModelConfig(arch="uniform_mlp", m=3, sigma0=0.5, dtype=torch.float64)
    data = make_data(SMALL.with_(context=context))
    v, s = data.vocab, data.pretrain
    p = _params(model, v.size, seed=4)
    batch = fast.Batch.build(s, v.size, v.rho, torch.float64)
    out = fast.run(None, p["V"], batch, model.lam, grad_W=False, S=fast.uniform_attention(batch))
    V = p["V"].clone().requires_grad_(True)
    logits, S = forward(model, {"V": V}, s.tokens, s.mask, v.rho)
    w = s.weight / s.weight.sum()
    ce = -(s.y_prob * torch.log_softmax(logits, -1).gather(1, s.y_idx)).sum(1)
    loss = (w * ce).sum()
    (gV,) = torch.autograd.grad(loss, [V])
    assert out.gW is None and torch.equal(out.S, S)
    assert abs(float(out.loss) - float(loss.detach())) < TOL
    assert torch.allclose(out.logits, logits.detach(), rtol=0, atol=TOL)
    assert torch.allclose(out.gV, gV, rtol=0, atol=TOL) and gV.abs().max() > 1e-3


def test_model_without_W_needs_its_attention() -> None:
    """``W=None`` (uniform attention + MLP) without ``S``, or asking for dL/dW, is an error."""
    model = ModelConfig(arch="uniform_mlp", m=2, dtype=torch.float64)
    data = make_data(SMALL)
    v = data.vocab
    V = _params(model, v.size, seed=0)["V"]
    batch = fast.Batch.build(data.pretrain, v.size, v.rho, torch.float64)
    with pytest.raises(ValueError, match="needs its attention S and grad_W=False"):
        fast.run(None, V, batch, model.lam, grad_W=False)
    with pytest.raises(ValueError, match="needs its attention S and grad_W=False"):
        fast.run(None, V, batch, model.lam, S=fast.uniform_attention(batch))


def test_extra_input_coordinates_get_no_gradient() -> None:
    """Tokens that no input uses (the ``q`` token in pre-training) get zero rows of dL/dV and
    zero rows and columns of dL/dW: their coordinates are inert (Sec. 3, Lemma 17)."""
    model = ModelConfig(m=2, sigma0=0.5, dtype=torch.float64)
    data = make_data(SMALL)
    v = data.vocab
    p = _params(model, v.size, seed=0)
    out = fast.run(p["W"], p["V"], fast.Batch.build(data.pretrain, v.size, v.rho, torch.float64), model.lam)
    assert float(out.gV[v.q].abs().max()) == 0.0
    assert float(out.gW[v.q].abs().max()) == 0.0 and float(out.gW[:, v.q].abs().max()) == 0.0


def test_gradient_rows_are_the_input_tokens() -> None:
    """``fast.run`` returns dL/dV on ``Batch.rows`` only: exactly the tokens some input uses
    (no answer token in pre-training, only subjects and ``q`` in fine-tuning), and the
    training step updates just those rows of ``V`` by ``-eta dL/dV``."""
    from kaol.train import _descend, _step
    model = ModelConfig(m=2, sigma0=0.5, dtype=torch.float64)
    data = make_data(SMALL.with_(N_ft=2))
    v = data.vocab
    p = _params(model, v.size, seed=0)
    for samples in (data.pretrain, data.qa_train):
        batch = fast.Batch.build(samples, v.size, v.rho, torch.float64)
        assert batch.shape == tuple(samples.tokens.shape)               # the run's own rows, no padding
        assert batch.rows.tolist() == sorted(set(samples.tokens[samples.mask].tolist()))
        out = fast.run(p["W"], p["V"], batch, model.lam)
        unused = torch.ones(v.size, dtype=torch.bool)
        unused[batch.rows] = False
        assert float(out.gV[unused].abs().max()) == 0.0
    assert batch.rows.tolist() == sorted({v.q, *(v.s(int(i)) for i in data.ft)})
    new = {k: t.clone() for k, t in p.items()}
    step = _step(model, new, batch, grad_W=False)
    _descend(new, step, 0.5)
    assert torch.equal(new["V"], p["V"] - 0.5 * out.gV)


@given(N_f=st.integers(1, 4), N_r=st.integers(0, 3), R=st.integers(1, 4), K=st.integers(1, 4),
       context=st.booleans(), m=st.integers(1, 3), sigma0=st.floats(0.05, 1.0), lam=st.floats(0.3, 3.0),
       rho_c=st.floats(0.5, 8.0), seed=st.integers(0, 1000))
def test_fast_matches_lemma1_property(N_f: int, N_r: int, R: int, K: int, context: bool, m: int,
                                      sigma0: float, lam: float, rho_c: float, seed: int) -> None:
    """Property: for random small configurations, ``fast.run`` equals the Lemma 1 loop."""
    cfg = DataConfig(N_f=N_f, N_r=N_r, R=R, K=min(K, R), N_ft=0, rho_c=rho_c, context=context, seed=seed)
    model = ModelConfig(m=m, sigma0=sigma0, lam=lam, dtype=torch.float64)
    data = make_data(cfg)
    v = data.vocab
    p = _params(model, v.size, seed)
    out = fast.run(p["W"], p["V"], fast.Batch.build(data.pretrain, v.size, v.rho, torch.float64), lam)
    loss, gW, gV = lemma1_loop(p["W"].numpy(), p["V"].numpy(), data.pretrain, v.rho.numpy(), lam)
    assert abs(float(out.loss) - loss) < 1e-9 * max(1.0, loss)
    np.testing.assert_allclose(out.gW.numpy(), gW, rtol=0, atol=TOL)
    np.testing.assert_allclose(out.gV.numpy(), gV, rtol=0, atol=TOL)


@given(lengths=st.lists(st.integers(1, 6), min_size=1, max_size=12), m=st.integers(1, 3),
       sigma0=st.floats(0.05, 1.0), seed=st.integers(0, 1000))
def test_long_and_repeated_inputs_match_lemma1(lengths: list[int], m: int, sigma0: float, seed: int) -> None:
    """Property: inputs of up to six tokens (the book's have two or three, which ``fast`` takes in
    one fused pass; longer ones take its general path), a token repeated within an input included,
    give the Lemma 1 loop's loss and gradients."""
    vocab_size, L = 9, max(lengths)
    gen = torch.Generator().manual_seed(seed)
    rows = [(torch.randint(0, vocab_size, (n,), generator=gen).tolist(),
             {int(torch.randint(0, vocab_size, (), generator=gen)): 1}, 1.0 + i % 3, 0, i)
            for i, n in enumerate(lengths)]
    samples = _samples(rows, L)
    rho = 0.5 + torch.rand(vocab_size, generator=gen, dtype=torch.float64)
    model = ModelConfig(m=m, sigma0=sigma0, dtype=torch.float64)
    p = _params(model, vocab_size, seed)
    batch = fast.Batch.build(samples, vocab_size, rho, torch.float64)
    out = fast.run(p["W"], p["V"], batch, model.lam)
    loss, gW, gV = lemma1_loop(p["W"].numpy(), p["V"].numpy(), samples, rho.numpy(), model.lam)
    assert abs(float(out.loss) - loss) < 1e-9 * max(1.0, loss)
    np.testing.assert_allclose(out.gW.numpy(), gW, rtol=0, atol=TOL)
    np.testing.assert_allclose(out.gV.numpy(), gV, rtol=0, atol=TOL)
    no_W = fast.run(p["W"], p["V"], batch, model.lam, grad_W=False)       # skips dL/dS: the rest to the bit
    assert no_W.gW is None and torch.equal(no_W.gV_rows, out.gV_rows) and torch.equal(no_W.ce, out.ce)


@given(n=st.integers(0, 40), dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 10_000),
       zeros=st.booleans())
def test_sum_adds_in_its_documented_order(n: int, dtype: type, seed: int, zeros: bool) -> None:
    """Property: ``fast._sum`` is, to the bit, eight running sums over ``j mod 8`` added pairwise
    (signed zeros included): the order every result of the book depends on."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(n) * 10.0 ** rng.integers(-6, 6, n)).astype(dtype)
    if zeros:
        x[rng.random(n) < 0.5] = -0.0
    s = [dtype(0)] * 8
    for j, v in enumerate(x):
        s[j % 8] = s[j % 8] + v
    expected = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]))
    assert np.asarray(fast._sum(x), dtype).tobytes() == np.asarray(expected, dtype).tobytes()


@njit
def _exps(x: np.ndarray) -> np.ndarray:  # pragma: no cover
    out = np.empty_like(x)
    for i in range(len(x)):
        out[i] = fast._exp(x[i])
    return out


def test_exp_is_its_polynomial_rounded_once() -> None:
    """``fast._exp`` is, to the bit, its documented polynomial ``p`` times ``2^k`` with one
    rounding (here ``p`` from numpy's float64 operations, one at a time, times ``2^k`` from
    ``np.ldexp``, exact), from 0 down past its underflow to 0 (``k = -1075``), at every ``k`` and
    next to each boundary between two ``k``; NaN stays NaN; and it is within 2 ulp of ``math.exp``."""
    edges = (np.arange(-1076.0, 1.0) - 0.5) * (fast.LN2_HI + fast.LN2_LO)
    x = np.concatenate([np.linspace(-750.0, 0.0, 400_001), edges, np.nextafter(edges, -np.inf),
                        np.nextafter(edges, np.inf), [-np.inf, -0.0, 0.0, -5e-324, -1e300]])
    x = x[x <= 0]
    y = np.maximum(x, -745.0)
    k = np.floor(y * fast.INV_LN2 + 0.5)
    r = (y - k * fast.LN2_HI) - k * fast.LN2_LO
    p = np.full_like(r, 1.0 / 6227020800.0)
    for d in (479001600.0, 39916800.0, 3628800.0, 362880.0, 40320.0, 5040.0, 720.0, 120.0, 24.0, 6.0, 2.0, 1.0, 1.0):
        p = p * r + 1.0 / d
    expected = p * np.ldexp(1.0, k.astype(int))           # 2^-1075 is 0 in float64
    got = _exps(x)
    assert got.tobytes() == expected.tobytes()
    assert np.isnan(_exps(np.array([np.nan]))[0])
    exact = np.exp(x)
    normal = exact > np.finfo(np.float64).tiny
    assert np.all(np.abs(got[normal] - exact[normal]) <= 2 * np.spacing(exact[normal]))


def test_argmax_and_logits_only() -> None:
    """``Pass.pred`` is ``torch.argmax`` of the logits (the first of equal largest: columns 3 and
    5 of ``V`` are made equal and the largest); ``loss=False`` gives the same logits and argmax
    without the softmax (NaN loss) and refuses ``grad``."""
    model = ModelConfig(m=2, sigma0=0.5, dtype=torch.float32)
    data = make_data(SMALL)
    v = data.vocab
    p = _params(model, v.size, seed=6)
    p["V"][..., 3] = p["V"][..., 5] = 1.0
    batch = fast.Batch.build(data.pretrain, v.size, v.rho, torch.float32)
    full = fast.run(p["W"], p["V"], batch, model.lam, grad=False)
    top = full.logits.amax(-1, keepdim=True)
    assert bool(((full.logits == top).sum(-1) == 2).all())             # a tie in every row
    assert torch.equal(full.pred, full.logits.argmax(-1)) and bool((full.pred == 3).all())
    only = fast.run(p["W"], p["V"], batch, model.lam, grad=False, loss=False)
    assert torch.equal(only.logits, full.logits) and torch.equal(only.pred, full.pred)
    assert bool(only.loss.isnan()) and bool(only.ce.isnan().all())
    with pytest.raises(ValueError, match="grad=True needs loss=True"):
        fast.run(p["W"], p["V"], batch, model.lam, loss=False)
    x = np.array([0.0, 3.0, 1.0, 3.0, 2.0, 0.5, 3.0, 1.0, 2.0, 3.0], np.float32)
    assert fast._argmax(x) == 1 and fast._argmax(x[::-1].copy()) == 0
    x[7] = np.nan
    assert fast._argmax(x) in (1, 7)                                    # diverged: a NaN or the largest
