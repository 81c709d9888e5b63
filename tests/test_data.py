"""The synthetic data of Sec. 3 (and the three-token variant of App. A): sample counts, splits,
and the entropy ``H`` (App. A) / ``H_w`` (App. J) as the loss of the exact conditional law."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from kaol.data import ANS_FREQ, ANS_RARE, CTX_FREQ, CTX_RARE, DataConfig, entropy, make_data

from .reference import SMALL, optimal_probs, weighted_ce


def _unweighted(data) -> torch.Tensor:
    """Row weights without the App. J factor: the number of merged samples."""
    s = data.pretrain
    rare = (s.kind == CTX_RARE) | (s.kind == ANS_RARE)
    return s.weight / torch.where(rare, torch.tensor(data.cfg.w_rare, dtype=torch.float64), torch.ones(()))


@pytest.mark.parametrize("cfg", [SMALL, SMALL.with_(context=False), DataConfig(), DataConfig(K=1),
                                 SMALL.with_(rare_weight=2.5, K=4)], ids=["small", "three-token", "book", "K1", "w2.5"])
def test_entropy_is_loss_of_exact_conditional(cfg: DataConfig) -> None:
    """``entropy(cfg)`` is the weighted CE of the exact next-token law on ``data.pretrain``
    (App. J), and ``entropy(cfg, weighted=False)`` the plain mean CE over the samples (Sec. 3)."""
    data = make_data(cfg)
    P = optimal_probs(data, data.pretrain)
    assert weighted_ce(P, data.pretrain, data.pretrain.weight) == pytest.approx(entropy(cfg), rel=1e-12, abs=1e-15)
    assert weighted_ce(P, data.pretrain, _unweighted(data)) == pytest.approx(entropy(cfg, weighted=False),
                                                                          rel=1e-12, abs=1e-15)


def test_targets_are_the_exact_conditional() -> None:
    """Each merged row's target distribution is the empirical law of its input (Sec. 3)."""
    data = make_data(SMALL)
    s = data.pretrain
    P = optimal_probs(data, s)
    Y = torch.zeros_like(P).scatter_add_(1, s.y_idx, s.y_prob)
    assert torch.equal(P, Y)


def test_appendix_a_value() -> None:
    """App. A: K = 5 and only frequent pairs give H = log(5)/2 = 0.8047."""
    cfg = DataConfig(N_f=100, N_r=0, R=20, K=5, N_ft=50)
    assert entropy(cfg, weighted=False) == pytest.approx(math.log(5) / 2, rel=1e-14)
    assert round(entropy(cfg, weighted=False), 4) == 0.8047
    assert entropy(cfg) == entropy(cfg, weighted=False)                # no rare samples: no weighting


def test_appendix_j_values() -> None:
    """App. J at N_f=100, N_r=50, K=4: H_w = N_f log K / (2 (N_f + N_r)) = 0.462, unweighted H = 0.616."""
    cfg = DataConfig(N_f=100, N_r=50, K=4)
    assert entropy(cfg) == pytest.approx(100 * math.log(4) / 300, rel=1e-14)
    assert round(entropy(cfg), 3) == 0.462
    assert round(entropy(cfg, weighted=False), 3) == 0.616


def test_empty_splits() -> None:
    """N_r = 0 (App. A's setting), N_ft = 0 and N_ft = N_f are valid configurations whose
    empty Q&A splits must still build (N_ft = 0 is refused by ``finetune``, not ``make_data``)."""
    for cfg in (DataConfig(N_f=10, N_r=0, R=5, K=5, N_ft=5), DataConfig(N_f=10, N_r=3, R=5, K=2, N_ft=0),
                DataConfig(N_f=10, N_r=3, R=5, K=2, N_ft=10)):
        data = make_data(cfg)
        assert (len(data.qa_train), len(data.qa_unseen_freq), len(data.qa_rare)) == (
            cfg.N_ft, cfg.N_f - cfg.N_ft, cfg.N_r)


def _check_counts(cfg: DataConfig) -> None:
    """Sample counts, merged rows, phrasings and splits of one data draw (Sec. 3)."""
    data = make_data(cfg)
    s = data.pretrain
    assert data.n_samples == 2 * (cfg.N_f * cfg.K + cfg.N_r)
    assert len(s) == cfg.N_f * (1 + cfg.K) + 2 * cfg.N_r                 # one (c,s) row per fact
    assert float(_unweighted(data).sum()) == pytest.approx(data.n_samples, abs=1e-9)
    kinds = np.bincount(s.kind.numpy(), minlength=5)
    assert kinds[CTX_FREQ] == cfg.N_f and kinds[CTX_RARE] == cfg.N_r
    assert kinds[ANS_FREQ] == cfg.N_f * cfg.K and kinds[ANS_RARE] == cfg.N_r
    for i, ks in enumerate(data.phrases):
        assert len(set(ks.tolist())) == len(ks) == (cfg.K if i < cfg.N_f else 1)
        assert all(0 <= k < cfg.R for k in ks)
    assert (len(data.ft), len(data.unseen_freq), len(data.rare)) == (cfg.N_ft, cfg.N_f - cfg.N_ft, cfg.N_r)
    assert sorted(data.ft.tolist() + data.unseen_freq.tolist()) == list(range(cfg.N_f))
    assert data.rare.tolist() == list(range(cfg.N_f, cfg.N))
    assert s.tokens.shape[1] == (4 if cfg.context else 3) - 1
    assert data.vocab.size == 2 * cfg.N + cfg.R + 1 + int(cfg.context)


@pytest.mark.parametrize("cfg", [SMALL, DataConfig(), SMALL.with_(context=False, K=5)], ids=["small", "book", "3tok"])
def test_sample_counts(cfg: DataConfig) -> None:
    _check_counts(cfg)


@given(N_f=st.integers(1, 30), N_r=st.integers(0, 20), R=st.integers(1, 12), K=st.integers(1, 12),
       N_ft=st.integers(0, 30), context=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_sample_counts_property(N_f: int, N_r: int, R: int, K: int, N_ft: int, context: bool, seed: int) -> None:
    """Property: the counts of Sec. 3 hold for any valid configuration."""
    _check_counts(DataConfig(N_f=N_f, N_r=N_r, R=R, K=min(K, R), N_ft=min(N_ft, N_f), context=context,
                             seed=seed))


@given(N_f=st.integers(1, 20), N_r=st.integers(0, 10), R=st.integers(1, 8), K=st.integers(1, 8),
       w=st.one_of(st.none(), st.floats(0.1, 10.0)), seed=st.integers(0, 1000))
def test_entropy_property(N_f: int, N_r: int, R: int, K: int, w: float | None, seed: int) -> None:
    """Property: the closed form of ``entropy`` is the loss of the exact law, weighted or not."""
    cfg = DataConfig(N_f=N_f, N_r=N_r, R=R, K=min(K, R), N_ft=0, rare_weight=w, seed=seed)
    data = make_data(cfg)
    P = optimal_probs(data, data.pretrain)
    assert weighted_ce(P, data.pretrain, data.pretrain.weight) == pytest.approx(entropy(cfg), rel=1e-12, abs=1e-15)
    assert weighted_ce(P, data.pretrain, _unweighted(data)) == pytest.approx(entropy(cfg, weighted=False),
                                                                          rel=1e-12, abs=1e-15)


def test_qa_samples() -> None:
    """Q&A samples are ``(s_i, q) -> a_i`` for the facts of each split (Sec. 3)."""
    data = make_data(SMALL)
    v = data.vocab
    for facts, s in [(data.ft, data.qa_train), (data.unseen_freq, data.qa_unseen_freq), (data.rare, data.qa_rare)]:
        assert s.tokens.tolist() == [[v.s(int(i)), v.q] for i in facts]
        assert s.answer.tolist() == [v.a(int(i)) for i in facts]


def test_same_seed_same_data() -> None:
    a, b, c = make_data(SMALL), make_data(SMALL), make_data(SMALL.with_(seed=1))
    assert torch.equal(a.pretrain.tokens, b.pretrain.tokens) and np.array_equal(a.ft, b.ft)
    assert any(not np.array_equal(x, y) for x, y in zip(a.phrases, c.phrases))
