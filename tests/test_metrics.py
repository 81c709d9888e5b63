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
def ft_gradient() -> tuple[torch.Tensor, int]:
    """dL/dV of the Q&A loss after a short pre-training, for two runs with their own data (B = 2)."""
    datas = [make_data(SMALL), make_data(SMALL.with_(seed=1))]
    params, _ = pretrain(datas, MODEL, Schedule(eta=(5.0, 20.0, 10.0), T1=5, T2=20, T=30), seed=[0, 1])
    v = datas[0].vocab
    batch = fast.Batch.build([d.qa_train for d in datas], v.size, v.rho, torch.float64)
    return fast.run(params["W"], params["V"], batch, MODEL.lam, grad_W=False).gV, v.q


def _svd(M: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.linalg.svd(M, full_matrices=False)


def _check_rank1(gV: torch.Tensor) -> None:
    """``rank1`` is ``sigma_1 u_1 v_1^T`` of each run's (inputs x neurons) matrix, and its
    residual has squared norm ``sum_{k >= 2} sigma_k^2`` (Eckart-Young)."""
    R1 = metrics.rank1(gV)
    B, vocab_size, m, _ = gV.shape
    for b in range(B):
        M = gV[b].reshape(vocab_size, m * vocab_size).numpy()
        U, s, Vt = _svd(M)
        best = s[0] * np.outer(U[:, 0], Vt[0])
        got = R1[b].reshape(vocab_size, m * vocab_size).numpy()
        scale = max(s[0], 1e-300)
        np.testing.assert_allclose(got, best, rtol=0, atol=1e-10 * scale)
        assert np.linalg.matrix_rank(got, tol=1e-8 * scale) == (1 if s[0] > 0 else 0)
        resid = np.linalg.norm(M - got) ** 2
        assert resid == pytest.approx((s[1:] ** 2).sum(), rel=1e-9, abs=1e-12 * scale ** 2)


def test_rank1_is_top_singular_triplet(ft_gradient) -> None:
    gV, _ = ft_gradient
    assert float(gV.abs().max()) > 1e-6
    _check_rank1(gV)


def test_spectrum_and_alignment(ft_gradient) -> None:
    """``gradient_spectrum`` gives the singular values and ``|<u_1, e_q>|`` (Prop. 3)."""
    gV, q = ft_gradient
    sv, align = metrics.gradient_spectrum(gV, q)
    B, vocab_size, m, _ = gV.shape
    for b in range(B):
        U, s, _ = _svd(gV[b].reshape(vocab_size, m * vocab_size).numpy())
        k = min(len(s), sv.shape[1])
        np.testing.assert_allclose(sv[b, :k], s[:k], rtol=1e-10, atol=1e-14)
        assert np.all(s[k:] < 1e-12 * s[0])                            # dropped rows were zero rows
        assert align[b] == pytest.approx(abs(U[q, 0]), abs=1e-10)
    share = metrics.rank1_share(sv)
    assert np.all((share > 0) & (share <= 1))


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
    gV = torch.from_numpy((U * s) @ V.T).reshape(1, vocab_size, m, vocab_size)
    R1 = metrics.rank1(gV)[0].reshape(vocab_size, -1).numpy()
    np.testing.assert_allclose(R1, np.outer(U[:, 0], V[:, 0]), rtol=0, atol=1e-14 / gap)


@given(B=st.integers(1, 3), vocab_size=st.integers(2, 7), m=st.integers(1, 3), zero_rows=st.integers(0, 3),
       seed=st.integers(0, 10_000))
def test_rank1_property(B: int, vocab_size: int, m: int, zero_rows: int, seed: int) -> None:
    """Property: Eckart-Young holds for random gradients, including rows that are zero in every run."""
    g = torch.Generator().manual_seed(seed)
    gV = torch.randn(B, vocab_size, m, vocab_size, generator=g, dtype=torch.float64)
    gV[:, : min(zero_rows, vocab_size - 1)] = 0
    _check_rank1(gV)
