"""The fine-tuning gradient's spectrum (Prop. 3) and its best rank-1 approximation (App. H,
Eckart-Young) against a plain numpy SVD."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from kaol import fast, metrics
from kaol.data import make_data
from kaol.model import ModelConfig
from kaol.train import Schedule, pretrain

from .reference import SMALL

MODEL = ModelConfig(dtype=torch.float64)


@pytest.fixture(scope="module")
def ft_passes() -> tuple[list[fast.Pass], int]:
    """The Q&A pass with dL/dV after a short pre-training, of each of two runs with their own data."""
    datas = [make_data(SMALL), make_data(SMALL.with_(seed=1))]
    params, _ = pretrain(datas, MODEL, Schedule(eta=(5.0, 20.0, 10.0), T1=5, T2=20, T=30), seed=[0, 1])
    v = datas[0].vocab
    return [fast.run(params["W"][b], params["V"][b], fast.Batch.build(d.qa_train, v.size, d.vocab.rho, torch.float64),
                     MODEL.lam, grad_W=False) for b, d in enumerate(datas)], v.q


def _svd(M: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.linalg.svd(M, full_matrices=False)


def _check_rank1(gV: torch.Tensor) -> None:
    """``rank1`` is ``sigma_1 u_1 v_1^T`` of one run's (inputs x neurons) matrix, and its
    residual has squared norm ``sum_{k >= 2} sigma_k^2`` (Eckart-Young)."""
    R1 = metrics.rank1(gV)
    M = gV.reshape(gV.shape[0], -1).numpy()
    U, s, Vt = _svd(M)
    best = s[0] * np.outer(U[:, 0], Vt[0])
    got = R1.reshape(gV.shape[0], -1).numpy()
    scale = max(s[0], 1e-300)
    np.testing.assert_allclose(got, best, rtol=0, atol=1e-10 * scale)
    assert np.linalg.matrix_rank(got, tol=1e-8 * scale) == (1 if s[0] > 0 else 0)
    resid = np.linalg.norm(M - got) ** 2
    assert resid == pytest.approx((s[1:] ** 2).sum(), rel=1e-9, abs=1e-12 * scale ** 2)


def test_rank1_is_top_singular_triplet(ft_passes) -> None:
    """Also on the gradient given on its rows only (``Pass.gV_rows``, what rank-1 fine-tuning
    passes): the same rows, bit for bit."""
    outs, _ = ft_passes
    for out in outs:
        assert float(out.gV.abs().max()) > 1e-6
        _check_rank1(out.gV)
        assert torch.equal(metrics.rank1(out.gV_rows), metrics.rank1(out.gV)[out.rows])


def test_spectrum_and_alignment(ft_passes) -> None:
    """``gradient_spectrum`` gives the singular values over the run's own non-zero rows of dL/dV
    and ``|<u_1, e_q>|`` (Prop. 3)."""
    outs, q = ft_passes
    for out in outs:
        sv, align = metrics.gradient_spectrum(out.gV, q)
        vocab_size, m, _ = out.gV.shape
        U, s, _ = _svd(out.gV.reshape(vocab_size, m * vocab_size).numpy())
        assert len(sv) == len(out.rows)                                  # one per input token of the Q&A set
        np.testing.assert_allclose(sv, s[:len(sv)], rtol=1e-10, atol=1e-14)
        assert np.all(s[len(sv):] < 1e-12 * s[0])                        # dropped rows were zero rows
        assert align == pytest.approx(abs(U[q, 0]), abs=1e-10)
        assert 0 < metrics.rank1_share(sv) <= 1
        sv_rows, align_rows = metrics.gradient_spectrum(out.gV_rows, q, out.rows)   # as fine-tuning calls it
        assert np.array_equal(sv_rows, sv) and align_rows == align


@pytest.mark.parametrize("gap", [1e-1, 1e-4, 1e-7])
def test_rank1_nearly_degenerate(gap: float) -> None:
    """Top two singular values ``1`` and ``sqrt(1 - gap)`` (``lambda_2 / lambda_1 = 1 - gap``, as
    late in fine-tuning at paper scale, where a power iteration on the Gram matrix stalled):
    still the top singular triplet, to the accuracy the gap allows."""
    rng = np.random.default_rng(0)
    vocab_size, m = 12, 3
    U, _ = np.linalg.qr(rng.standard_normal((vocab_size, vocab_size)))
    V, _ = np.linalg.qr(rng.standard_normal((m * vocab_size, vocab_size)))
    s = np.concatenate([[1.0, math.sqrt(1 - gap)], np.linspace(0.5, 0.01, vocab_size - 2)])
    gV = torch.from_numpy((U * s) @ V.T).reshape(vocab_size, m, vocab_size)
    R1 = metrics.rank1(gV).reshape(vocab_size, -1).numpy()
    np.testing.assert_allclose(R1, np.outer(U[:, 0], V[:, 0]), rtol=0, atol=1e-14 / gap)


@given(U=st.integers(1, 7), vocab_size=st.integers(2, 7), m=st.integers(1, 3), zero_rows=st.integers(0, 3),
       seed=st.integers(0, 10_000))
def test_rank1_property(U: int, vocab_size: int, m: int, zero_rows: int, seed: int) -> None:
    """Property: Eckart-Young holds for random gradients given on ``U`` rows (the whole
    ``vocab_size`` or ``Pass.gV_rows``), including zero rows."""
    g = torch.Generator().manual_seed(seed)
    gV = torch.randn(U, m, vocab_size, generator=g, dtype=torch.float64)
    gV[: min(zero_rows, U - 1)] = 0
    _check_rank1(gV)


def _plain_gram(M: np.ndarray) -> np.ndarray:
    """``M M^T`` with every entry summed over the columns in index order, all products included."""
    U = len(M)
    G = np.zeros((U, U))
    for i in range(U):
        for k in range(U):
            s = 0.0
            for c in range(M.shape[1]):
                s += float(M[i, c]) * float(M[k, c])
            G[i, k] = s
    return G


@given(U=st.integers(1, 12), K=st.integers(1, 30), zero=st.floats(0, 0.9), seed=st.integers(0, 10_000))
def test_gram_and_square_keep_the_plain_order(U: int, K: int, zero: float, seed: int) -> None:
    """Property: ``_gram`` (upper triangle only, mirrored; eight columns at a time; all-zero blocks
    of a row skipped) equals the plain sum in column order to the bit, on float32 gradients with
    runs of zeros like ReLU masks and widths that are not a multiple of 8; ``_square`` equals the
    plain ``A @ A`` in index order, rescaled, to the bit."""
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((U, K)).astype(np.float32)
    M[rng.random((U, K)) < zero] = 0
    M[:, rng.random(K) < zero / 2] = 0                   # whole columns off, as a dead output j
    rows = np.arange(U)
    G = metrics._gram(M, rows)
    assert np.array_equal(G, _plain_gram(M))
    if np.abs(G).max() > 0:
        A = G / np.abs(G).max()
        out = np.empty_like(A)
        moved = metrics._square(A, out)
        A2 = _plain_gram(A)                              # A symmetric: A A^T = A^2, summed in index order
        assert np.array_equal(out, A2 / np.abs(A2).max())
        assert moved == np.abs(out - A).max()


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_rank1_refuses_non_finite_gradients(bad: float) -> None:
    gV = torch.randn(4, 2, 5)
    gV[2, 1, 3] = bad
    with pytest.raises(ValueError, match="non-finite"):
        metrics.rank1(gV)


def test_rank1_into_its_own_gradient() -> None:
    """``rank1(g, out=g)`` (what the training loops do) writes over ``g`` the same matrix that
    ``rank1(g)`` returns, zero rows included; a wrong ``out`` is refused."""
    g = torch.randn(6, 3, 11, generator=torch.Generator().manual_seed(4), dtype=torch.float32)
    g[2] = 0
    expect = metrics.rank1(g)
    assert metrics.rank1(g, out=g) is g and torch.equal(g, expect)
    for bad in (torch.empty(6, 3, 10), torch.empty(6, 3, 11, dtype=torch.float64), torch.empty(6, 11, 3).transpose(1, 2)):
        with pytest.raises(ValueError, match="out must be"):
            metrics.rank1(g, out=bad)
