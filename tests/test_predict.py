"""Fine-tuning's evaluation (``kaol.predict``) and the step taken in the pass (``fast.run``'s
``eta``): both are shortcuts, so both must give what the plain computation gives, to the bit."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kaol import fast, metrics
from kaol.data import DataConfig, make_data
from kaol.model import ModelConfig
from kaol.predict import Predictions
from kaol.train import FTConfig, Schedule, _cat, finetune, pretrain

from .reference import SMALL, one_run

DATA = DataConfig(N_f=20, N_r=10, R=5, K=2, N_ft=8)


def _setup(cfg: DataConfig = DATA, model: ModelConfig = ModelConfig(), seed: int = 0):
    data = make_data(cfg)
    params, _ = pretrain(data, model, Schedule(eta=(5.0, 20.0, 10.0), T1=5, T2=40, T=80), seed=seed)
    v = data.vocab
    train = fast.Batch.build(data.qa_train, v.size, v.rho, model.dtype)
    test = fast.Batch.build(_cat(data.qa_unseen_freq, data.qa_rare), v.size, v.rho, model.dtype)
    p = one_run(params)
    if model.arch == "uniform_mlp":
        S_train, S_test = fast.uniform_attention(train), fast.uniform_attention(test)
    else:
        S_train, S_test = fast.attention(p["W"], train), fast.attention(p["W"], test)
    return {k: t.clone() for k, t in p.items()}, train, test, S_train, S_test


def _plain(p, test, S, lam) -> np.ndarray:
    return fast.run(p.get("W"), p["V"], test, lam, grad=False, S=S, loss=False).pred.numpy()


@pytest.mark.parametrize("arch,rank1,eta", [("simplified", False, 10.0), ("simplified", True, 10.0),
                                            ("simplified", False, 200.0), ("uniform_mlp", False, 10.0)],
                         ids=["full", "rank1", "large-rate", "uniform-mlp"])
def test_predictions_equal_the_plain_argmax_at_every_step(arch: str, rank1: bool, eta: float) -> None:
    """Along fine-tuning (full or rank-1 steps, a rate that moves V[q] a lot, uniform attention),
    ``Predictions.pred`` is ``fast.run``'s argmax at every step, and it recomputes fewer rows
    than all of them."""
    model = ModelConfig(arch=arch)
    p, train, test, S_train, S_test = _setup(model=model)
    watch = Predictions(test, S_test, model.lam, train.rows)
    steps = 60
    for t in range(steps):
        np.testing.assert_array_equal(watch.pred(p["V"]), _plain(p, test, S_test, model.lam), err_msg=f"step {t}")
        o = fast.run(p.get("W"), p["V"], train, model.lam, grad_W=False, S=S_train)
        fast.descend(p["V"], metrics.rank1(o.gV_rows) if rank1 else o.gV_rows, eta, o.rows)
    assert test.shape[0] <= watch.recomputed < steps * test.shape[0]


def test_predictions_break_ties_as_the_plain_argmax() -> None:
    """Outputs j whose V columns are equal for every token give equal logits on every row: the
    argmax is the first of them, as ``fast.run``'s, while the moving rows change (equal logits
    are never proven apart, so those rows are recomputed)."""
    p, train, test, S_train, S_test = _setup()
    V = p["V"]
    z = fast.run(p["W"], V, test, 1.0, grad=False, S=S_test, loss=False).logits
    first = z.argmax(-1)
    for j in first.unique().tolist():              # the winner's column copied to j - 1 or j + 1
        k = j + 1 if j + 1 < V.shape[2] else j - 1
        V[:, :, k] = V[:, :, j]
    watch = Predictions(test, S_test, 1.0, train.rows)
    for t in range(20):
        np.testing.assert_array_equal(watch.pred(V), _plain(p, test, S_test, 1.0), err_msg=f"step {t}")
        o = fast.run(p["W"], V, train, 1.0, grad_W=False, S=S_train)
        fast.descend(V, o.gV_rows, 1.0, o.rows)
        for j in first.unique().tolist():
            k = j + 1 if j + 1 < V.shape[2] else j - 1
            V[:, :, k] = V[:, :, j]                  # ties kept on the moving rows too


@settings(max_examples=25)
@given(seed=st.integers(0, 10_000), scale=st.sampled_from([1e-7, 1e-4, 1e-2, 1.0, 30.0]),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_predictions_under_random_moves_of_the_moving_rows(seed: int, scale: float, dtype: torch.dtype) -> None:
    """Random changes of every size, on the moving rows only, in float32 and float64: always the
    plain argmax (small changes are where the rounding bound matters)."""
    model = ModelConfig(dtype=dtype)
    p, train, test, S_train, S_test = _setup(SMALL, model)
    rows = train.rows
    watch = Predictions(test, S_test, model.lam, rows)
    gen = torch.Generator().manual_seed(seed)
    for t in range(8):
        np.testing.assert_array_equal(watch.pred(p["V"]), _plain(p, test, S_test, model.lam), err_msg=f"step {t}")
        step = torch.randn((len(rows),) + tuple(p["V"].shape[1:]), generator=gen, dtype=dtype) * scale
        p["V"][rows] += step * (torch.rand(step.shape, generator=gen, dtype=dtype) < 0.3)


def test_predictions_refuse_bad_input() -> None:
    """Errors that say what is wrong: the batch, its attention, the moving ids, V."""
    p, train, test, S_train, S_test = _setup(SMALL)
    with pytest.raises(TypeError, match="fast.Batch"):
        Predictions("rows", S_test, 1.0, train.rows)
    with pytest.raises(ValueError, match="fixed attention"):
        Predictions(test, S_test[:1], 1.0, train.rows)
    with pytest.raises(ValueError, match="fixed attention"):
        Predictions(test, S_test.double(), 1.0, train.rows)
    with pytest.raises(ValueError, match="lam"):
        Predictions(test, S_test, float("nan"), train.rows)
    with pytest.raises(ValueError, match="token ids"):
        Predictions(test, S_test, 1.0, torch.tensor([0, 10 ** 6]))
    watch = Predictions(test, S_test, 1.0, train.rows)
    with pytest.raises(ValueError, match="one run's"):
        watch.pred(p["V"][None])
    with pytest.raises(ValueError, match="one run's"):
        watch.pred(p["V"].double())
    watch.pred(p["V"])
    with pytest.raises(ValueError, match="neurons"):
        watch.pred(torch.cat([p["V"], p["V"]], 1))


@pytest.mark.parametrize("uniform", [False, True], ids=["simplified", "uniform-mlp"])
def test_step_in_the_pass_equals_run_then_descend(uniform: bool) -> None:
    """``fast.run(..., eta=...)`` leaves V as ``run`` followed by ``descend`` does, to the bit, and
    returns the same loss and gradients, on pre-training's rows (subjects read by one chunk,
    relations and the context by several) and on fine-tuning's."""
    data = make_data(DATA)
    params, _ = pretrain(data, ModelConfig(), Schedule(eta=(5.0, 20.0, 10.0), T1=5, T2=20, T=30))
    p = one_run(params)
    v = data.vocab
    for samples in (data.pretrain, data.qa_train):
        batch = fast.Batch.build(samples, v.size, v.rho, torch.float32)
        W = None if uniform else p["W"]
        S = fast.uniform_attention(batch) if uniform else None
        V1, V2 = p["V"].clone(), p["V"].clone()
        a = fast.run(W, V1, batch, 1.0, grad_W=False, S=S)
        gV = a.gV_rows.clone()
        fast.descend(V1, gV, 7.0, a.rows)
        b = fast.run(W, V2, batch, 1.0, grad_W=False, S=S, eta=7.0)
        assert b.stepped and not a.stepped
        assert torch.equal(V1, V2) and not torch.equal(V2, p["V"])
        assert torch.equal(a.loss, b.loss) and torch.equal(gV, b.gV_rows)


def test_every_gradient_row_steps_once() -> None:
    """``Batch``'s ``done`` lists every token read by one chunk only, once, at the position of its
    last row; with the shared tokens (``sums``) that is every row of ``dL/dV``."""
    data = make_data(DATA)
    v = data.vocab
    for samples in (data.pretrain, data.qa_train, data.qa_unseen_freq):
        b = fast.Batch.build(samples, v.size, v.rho, torch.float32)
        shared = b.rows.numpy()[b.sums[:, 0]]
        assert sorted(b.done_tok.tolist() + shared.tolist()) == sorted(b.rows.tolist())
        tok, mask = b.tokens.numpy(), b.mask.numpy()
        for ii in range(len(b.order)):
            for t in b.done_tok[b.done[ii]:b.done[ii + 1]]:
                later = b.order[ii + 1:]
                assert t in tok[b.order[ii]][mask[b.order[ii]]] and t not in tok[later][mask[later]]


def test_step_in_the_pass_refuses_bad_input() -> None:
    data = make_data(SMALL)
    params, _ = pretrain(data, ModelConfig(), Schedule(eta=(5.0, 20.0, 10.0), T1=1, T2=2, T=3))
    p = one_run(params)
    batch = fast.Batch.build(data.pretrain, data.vocab.size, data.vocab.rho, torch.float32)
    with pytest.raises(ValueError, match="grad=True"):
        fast.run(p["W"], p["V"], batch, 1.0, grad=False, eta=1.0)
    with pytest.raises(ValueError, match="contiguous"):
        fast.run(p["W"], p["V"].transpose(1, 2).contiguous().transpose(1, 2), batch, 1.0, eta=1.0)
    for eta in (float("inf"), 1, "1.0"):
        with pytest.raises(ValueError, match="finite float"):
            fast.run(p["W"], p["V"], batch, 1.0, eta=eta)


def test_finetune_steps_in_the_pass_and_watches_bit_for_bit() -> None:
    """``finetune`` (which evaluates with ``Predictions`` and takes V's step in the pass) gives
    what the plain loop gives: evaluate with ``fast.run``, then the step with ``descend``."""
    data = make_data(DATA)
    model, cfg = ModelConfig(), FTConfig(eta=10.0, steps=25)
    params, _ = pretrain(data, model, Schedule(eta=(5.0, 20.0, 10.0), T1=5, T2=40, T=80))
    out, hist = finetune(params, data, model, cfg)
    p, train, test, S_train, S_test = _setup(model=model)
    losses, preds = [], []
    for t in range(cfg.steps + 1):
        preds.append(_plain(p, test, S_test, model.lam))
        o = fast.run(p["W"], p["V"], train, model.lam, grad=t < cfg.steps, grad_W=False, S=S_train)
        losses.append(float(o.loss))
        if t < cfg.steps:
            fast.descend(p["V"], o.gV_rows, cfg.eta, o.rows)
    assert torch.equal(out["V"][0], p["V"])
    np.testing.assert_array_equal(hist.pred[:, 0], np.array(preds))
    np.testing.assert_array_equal(hist.loss[:, 0], np.array(losses, dtype=np.float32))


def test_predictions_in_a_fresh_process(tmp_path) -> None:
    """``Predictions.pred`` as the first compiled call of a fresh process, twice with one numba
    cache (the second run loads the compiled code from it), with more test rows than one
    chunk: the cached path that chapter 4 takes when its pre-trainings come from kaol's cache.
    (A first version, in which compiled code called a parallel function, crashed there in CI
    with a null function pointer, numba issues 4807 and 8578; ``_predict`` is one thread now.)"""
    script = """
import numpy as np, torch
from kaol import fast
from kaol.data import DataConfig, make_data
from kaol.model import ModelConfig, init_params
from kaol.predict import Predictions
from kaol.train import _cat
d = make_data(DataConfig(N_f=20, N_r=10, R=5, K=2, N_ft=8))
v = d.vocab
p = {k: t[0] for k, t in init_params(ModelConfig(), v.size, 1, 0).items()}
train = fast.Batch.build(d.qa_train, v.size, v.rho, torch.float32)
test = fast.Batch.build(_cat(d.qa_unseen_freq, d.qa_rare), v.size, v.rho, torch.float32)
assert test.shape[0] >= 8
S = fast.attention(p["W"], test)
got = Predictions(test, S, 1.0, train.rows).pred(p["V"]).copy()
assert np.array_equal(got, fast.run(p["W"], p["V"], test, 1.0, grad=False, S=S, loss=False).pred.numpy())
print("ok")
"""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    for run in ("compiles", "loads"):
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env)
        assert done.returncode == 0 and done.stdout.strip() == "ok", f"{run}: {done.stderr[-2000:]}"
