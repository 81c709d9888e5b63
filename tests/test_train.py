"""Training (Sec. 4, App. H): determinism, runs trained together equal single runs, and bad
inputs that raise a ValueError naming the parameter (or the run) at fault."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kaol.data import DataConfig, make_data
from kaol.mechanism import run_pred, unseen_facts
from kaol.model import ModelConfig, init_params
from kaol.train import FTConfig, Schedule, finetune, pretrain

from .reference import SMALL

SCHEDULE = Schedule(eta=(5.0, 20.0, 10.0), T1=5, T2=20, T=30)
FT = FTConfig(eta=10.0, steps=15)
ROOT = Path(__file__).resolve().parents[1]


def _pt_ft(data, model: ModelConfig, seed, B=None, rank1: bool = False):
    params, ph = pretrain(data, model, SCHEDULE, seed=seed, B=B, log_every=1)
    ft, fh = finetune(params, data, model, FTConfig(eta=FT.eta, steps=FT.steps, rank1=rank1))
    return params, ph, ft, fh


@pytest.mark.parametrize("rank1", [False, True], ids=["full", "rank1"])
def test_same_seed_identical_histories(rank1: bool) -> None:
    """Two pre-training + fine-tuning runs with one seed agree exactly, bit for bit."""
    data = make_data(SMALL)
    a, b = _pt_ft(data, ModelConfig(), 3, rank1=rank1), _pt_ft(data, ModelConfig(), 3, rank1=rank1)
    for k in a[0]:
        assert torch.equal(a[0][k], b[0][k]) and torch.equal(a[2][k], b[2][k])
    for x, y in zip(a[1].arrays().values(), b[1].arrays().values()):
        assert np.array_equal(x, y, equal_nan=True)
    for f in ("loss", "acc_freq", "acc_rare", "pred", "sv0", "align_q"):
        assert np.array_equal(getattr(a[3], f), getattr(b[3], f))
    c = _pt_ft(data, ModelConfig(), 4, rank1=rank1)
    assert not np.array_equal(np.array(a[1].loss), np.array(c[1].loss))    # the seed matters


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_runs_equal_each_run_alone(dtype: torch.dtype) -> None:
    """B = 4 runs (seeds 0..3, each with its own data: row count, context norm ``rho_c`` and
    ``N_ft``) trained in one call equal each run trained alone, bit for bit: parameters and
    every curve. Runs of different sizes are padded as ``FTHistory`` says: ``pred`` with -1
    past a run's unseen facts, ``sv0`` with 0 past its own singular values (one per input
    token of its Q&A set: the ``N_ft`` subjects and ``q``)."""
    model = ModelConfig(dtype=dtype)
    datas = [make_data(SMALL.with_(seed=s, K=k, rho_c=r, N_ft=n))
             for s, k, r, n in [(0, 2, 5.0, 3), (1, 3, 2.0, 1), (2, 1, 5.0, 3), (3, 5, 8.0, 5)]]
    seeds = [0, 1, 2, 3]
    n_unseen = [len(unseen_facts(d)) for d in datas]
    assert len({len(d.pretrain) for d in datas}) == 4 and len(set(n_unseen)) == 3
    pb, hb = pretrain(datas, model, SCHEDULE, seed=seeds, log_every=1)
    fb, fhb = finetune(pb, datas, model, FT)
    assert fhb.pred.shape == (FT.steps + 1, 4, max(n_unseen))
    assert fhb.sv0.shape == (4, max(d.cfg.N_ft for d in datas) + 1)
    for b, (d, s) in enumerate(zip(datas, seeds)):
        p1, h1 = pretrain(d, model, SCHEDULE, seed=s, log_every=1)
        f1, fh1 = finetune(p1, d, model, FT)
        for k in pb:
            assert torch.equal(pb[k][b], p1[k][0]) and torch.equal(fb[k][b], f1[k][0])
        assert hb.steps == h1.steps
        for name in ("loss", "loss_by_kind", "attn", "features"):
            assert np.array_equal(np.asarray(getattr(hb, name))[:, b], np.asarray(getattr(h1, name))[:, 0],
                                  equal_nan=True)
        for name in ("loss", "acc_freq", "acc_rare"):
            assert np.array_equal(getattr(fhb, name)[:, b], getattr(fh1, name)[:, 0], equal_nan=True)
        n, r = n_unseen[b], d.cfg.N_ft + 1
        assert fh1.pred.shape[2] == n and fh1.sv0.shape[1] == r
        assert np.array_equal(fhb.pred[:, b, :n], fh1.pred[:, 0]) and bool((fhb.pred[:, b, n:] == -1).all())
        assert np.array_equal(run_pred(fhb.pred[-1], b, d), fh1.pred[-1, 0])
        assert np.array_equal(fhb.sv0[b, :r], fh1.sv0[0]) and bool((fhb.sv0[b, r:] == 0).all())
        assert fhb.align_q[b] == fh1.align_q[0] and fhb.n_freq[b] == fh1.n_freq[0]


def test_rare_count_per_run() -> None:
    """Runs with one vocabulary size may split it differently (N_f = 6, N_r = 3 against N_f = 7,
    N_r = 2): each run's OOD accuracy ``acc`` weighs its own unseen frequent and rare counts,
    as when it is fine-tuned alone."""
    datas = [make_data(DataConfig(N_f=6, N_r=3, R=3, K=2, N_ft=3)), make_data(DataConfig(N_f=7, N_r=2, R=3, K=2, N_ft=3))]
    assert datas[0].vocab.size == datas[1].vocab.size
    params, _ = pretrain(datas, ModelConfig(), SCHEDULE, seed=[0, 1])
    _, both = finetune(params, datas, ModelConfig(), FT)
    assert both.n_rare.tolist() == [3, 2] and both.n_freq.tolist() == [3, 4]
    for b, d in enumerate(datas):
        _, alone = finetune({k: p[b:b + 1] for k, p in params.items()}, d, ModelConfig(), FT)
        assert np.array_equal(both.acc[:, b], alone.acc[:, 0])


def test_finetune_keeps_W_and_inputs() -> None:
    """Fine-tuning updates V only (Lemma 17) and leaves the given parameters unchanged."""
    data = make_data(SMALL)
    params, _ = pretrain(data, ModelConfig(), SCHEDULE)
    before = {k: p.clone() for k, p in params.items()}
    ft, _ = finetune(params, data, ModelConfig(), FT)
    assert torch.equal(ft["W"], params["W"])
    assert not torch.equal(ft["V"], params["V"])
    assert all(torch.equal(before[k], params[k]) for k in params)


def test_pretraining_lowers_loss_towards_entropy() -> None:
    """A short run already lowers the loss well below its start (Thm 2.1's direction)."""
    data = make_data(SMALL)
    _, h = pretrain(data, ModelConfig(), SCHEDULE)
    assert h.loss[-1][0] < 0.5 * h.loss[0][0]


# ---------------------------------------------------------------- bad inputs

BAD_DATA = [
    (dict(K=6, R=5), r"\bK = 6\b.*\bR = 5\b"),
    (dict(N_ft=7, N_f=6), r"\bN_ft = 7\b.*\bN_f = 6\b"),
    (dict(N_f=0), r"\bN_f = 0\b"),
    (dict(N_f=-2), r"\bN_f = -2\b"),
    (dict(R=0, K=1), r"\bR = 0\b"),
    (dict(K=0), r"\bK = 0\b"),
    (dict(N_r=-1), r"\bN_r = -1\b"),
    (dict(N_ft=-1), r"\bN_ft = -1\b"),
    (dict(rho_c=0.0), r"\brho_c\b"),
    (dict(rare_weight=-1.0), r"\brare_weight\b"),
]


@pytest.mark.parametrize("kw,pattern", BAD_DATA, ids=[p for _, p in BAD_DATA])
def test_bad_data_config(kw: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        DataConfig(**{**SMALL.__dict__, **kw})


BAD_MODEL = [(dict(m=0), r"\bm = 0\b"), (dict(m=-1), r"\bm = -1\b"), (dict(lam=0.0), r"\blam = 0"),
             (dict(lam=-1.0), r"\blam = -1"), (dict(sigma0=0.0), r"\bsigma0 = 0"), (dict(arch="gpt"), r"\barch\b")]


@pytest.mark.parametrize("kw,pattern", BAD_MODEL, ids=[p for _, p in BAD_MODEL])
def test_bad_model_config(kw: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        ModelConfig(**kw)


BAD_SCHEDULE = [
    (dict(eta=(0.0, 1.0, 1.0)), r"\beta\b"), (dict(eta=(1.0, -1.0, 1.0)), r"\beta\b"), (dict(eta=(1.0, 1.0)), r"\beta\b"),
    (dict(T1=10, T2=5, T=20), r"\bT1=10\b.*\bT2=5\b"), (dict(T1=1, T2=30, T=20), r"\bT2=30\b.*\bT=20\b"),
    (dict(T1=-1, T2=5, T=20), r"\bT1=-1\b"), (dict(T1=0, T2=0, T=0), r"\bT=0\b"),
]


@pytest.mark.parametrize("kw,pattern", BAD_SCHEDULE, ids=[p for _, p in BAD_SCHEDULE])
def test_bad_schedule(kw: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        Schedule(**kw)


@pytest.mark.parametrize("kw,pattern", [(dict(eta=0.0), r"\beta=0"), (dict(eta=-3.0), r"\beta=-3"),
                                        (dict(steps=0), r"\bsteps=0\b"), (dict(steps=-5), r"\bsteps=-5\b")])
def test_bad_ft_config(kw: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        FTConfig(**kw)


@pytest.mark.parametrize("eta,stage", [((1e38, 1.0, 1.0), 1), ((1.0, 1e38, 1.0), 2), ((1.0, 1.0, 1e38), 3)])
def test_divergent_pretraining_names_stage(eta: tuple, stage: int) -> None:
    """A rate that overflows float32 makes the loss NaN; the error names the stage and asks
    for a smaller rate."""
    with pytest.raises(ValueError, match=rf"pre-training \(Stage {stage}\).*lower that rate"):
        pretrain(make_data(SMALL), ModelConfig(), Schedule(eta=eta, T1=2, T2=4, T=6))


def test_divergent_finetuning_names_rate() -> None:
    data = make_data(SMALL)
    params, _ = pretrain(data, ModelConfig(), SCHEDULE)
    with pytest.raises(ValueError, match=r"fine-tuning.* at step \d+ with learning rate 1e\+39.*lower that rate"):
        finetune(params, data, ModelConfig(), FTConfig(eta=1e39, steps=5))


def test_norm_check_reads_changed_rows() -> None:
    """Fine-tuning checks the size of ``V`` on the rows its gradient changes only (``_check_norm``
    with ``rows``): their ``max |V|`` is ``_sizes``'s, and a row that grows past ``NORM_LIMIT``
    times the starting size stops the run as the check over all of ``V`` would."""
    from kaol.train import NORM_LIMIT, _check_norm, _sizes
    V = torch.randn(6, 2, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    rows = {"V": torch.tensor([1, 4])}
    assert _sizes({"V": V}, rows)["V"] == float(V[[1, 4]].abs().max())
    start = _sizes({"V": V})
    _check_norm({"V": V}, start, 3, "fine-tuning", 0.5, "", rows)        # nothing grew: no error
    V[4, 1, 2] = -2 * NORM_LIMIT * (1 + start["V"])
    for check_rows in (None, rows):
        with pytest.raises(ValueError, match=r"parameter V reached max \|V\| = .* at step 3 with learning rate 0.5"):
            _check_norm({"V": V}, start, 3, "fine-tuning", 0.5, "", check_rows)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_max_abs_reads_rows_in_place(dtype: torch.dtype) -> None:
    """``fast.max_abs`` (the norm check's reading) is ``max |P|`` over all of ``P`` or its rows,
    also when the largest value is negative, and NaN for an inf or NaN in the rows it reads
    only; a view that is not contiguous is read as it is."""
    from kaol import fast
    P = torch.randn(7, 3, 7, generator=torch.Generator().manual_seed(1), dtype=dtype)
    P[5, 0, 0] = -9.0
    rows = torch.tensor([0, 5, 6])
    assert fast.max_abs(P) == float(P.abs().max()) == 9.0
    assert fast.max_abs(P, torch.tensor([1, 2])) == float(P[[1, 2]].abs().max())
    assert fast.max_abs(P[0].t()) == float(P[0].abs().max())
    for bad in (float("inf"), float("-inf"), float("nan")):
        Q = P.clone()
        Q[6, 2, 1] = bad
        assert np.isnan(fast.max_abs(Q, rows)) and np.isnan(fast.max_abs(Q))
        assert fast.max_abs(Q, torch.tensor([1, 2])) == fast.max_abs(P, torch.tensor([1, 2]))


def test_divergence_names_the_run() -> None:
    """With several runs the error names the run that diverged: the first in pre-training at a
    rate too large for all; run 1 in fine-tuning when only its parameters are broken (NaN)."""
    data = make_data(SMALL)
    with pytest.raises(ValueError, match=r"pre-training \(Stage 1\).* at step \d+ \(run 0\) with learning rate"):
        pretrain([data, data], ModelConfig(), Schedule(eta=(1e38, 1.0, 1.0), T1=2, T2=4, T=6))
    params, _ = pretrain([data, data], ModelConfig(), SCHEDULE, seed=[0, 1])
    params["V"][1] = float("nan")
    with pytest.raises(ValueError, match=r"fine-tuning loss became nan at step 0 \(run 1\) with learning rate"):
        finetune(params, [data, data], ModelConfig(), FT)


def test_mixed_vocabulary_sizes() -> None:
    with pytest.raises(ValueError, match="vocabulary size"):
        pretrain([make_data(SMALL), make_data(SMALL.with_(N_f=7))], ModelConfig(), SCHEDULE)


def test_finetune_needs_ft_facts() -> None:
    data = make_data(DataConfig(N_f=6, N_r=3, R=5, K=2, N_ft=0))
    params = init_params(ModelConfig(), data.vocab.size)
    with pytest.raises(ValueError, match=r"\bN_ft = 0\b"):
        finetune(params, data, ModelConfig(), FT)


def test_seed_count_must_match_runs() -> None:
    with pytest.raises(ValueError, match=r"seeds.*\bB = 2\b"):
        init_params(ModelConfig(), 10, B=2, seed=[1, 2, 3])


def test_dtype_mismatch() -> None:
    data = make_data(SMALL)
    params = init_params(ModelConfig(dtype=torch.float64), data.vocab.size)
    with pytest.raises(ValueError, match="float64.*float32"):
        pretrain(data, ModelConfig(), SCHEDULE, params=params)


def test_log_every_must_be_positive() -> None:
    with pytest.raises(ValueError, match=r"\blog_every\b"):
        pretrain(make_data(SMALL), ModelConfig(), SCHEDULE, log_every=0)


def test_params_runs_must_match_data_runs() -> None:
    """One run's parameters with two data sets: a ValueError naming the run count, not an IndexError."""
    data = make_data(SMALL)
    params, _ = pretrain(data, ModelConfig(), SCHEDULE)
    with pytest.raises(ValueError, match=r"\bruns?\b"):
        finetune(params, [data, data], ModelConfig(), FT)


_MISMATCH = """
import torch
from kaol import DataConfig, FTConfig, ModelConfig, Schedule, finetune, init_params, make_data, pretrain
small = make_data(DataConfig(N_f=6, N_r=3, R=5, K=2, N_ft=3))
big = init_params(ModelConfig(), small.vocab.size + 4)
calls = {"finetune": lambda: finetune(big, small, ModelConfig(), FTConfig(steps=2)),
         "pretrain": lambda: pretrain(small, ModelConfig(), Schedule(T1=1, T2=2, T=3), params=big)}
for name, call in calls.items():
    try:
        call()
    except ValueError as e:
        print(name, "ValueError:", e, flush=True)
    else:
        print(name, "no error", flush=True)
"""


def test_params_vocabulary_must_match_data() -> None:
    """Parameters of another vocabulary size must give a ValueError (in ``finetune`` and in
    ``pretrain(params=...)``); run in a subprocess because without a check the sparse
    kernels read out of bounds (a segmentation fault)."""
    proc = subprocess.run([sys.executable, "-c", _MISMATCH], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"crashed with return code {proc.returncode}; output: {proc.stdout!r}"
    for name in ("finetune", "pretrain"):
        assert any(line.startswith(f"{name} ValueError:") and "vocabulary" in line
                   for line in proc.stdout.splitlines()), proc.stdout


_RUN_MISMATCH = """
from kaol import DataConfig, ModelConfig, init_params, make_data
from kaol import fast
small = make_data(DataConfig(N_f=6, N_r=3, R=5, K=2, N_ft=3))
v = small.vocab
batch = fast.Batch.build(small.pretrain, v.size, v.rho, ModelConfig().dtype)
big = init_params(ModelConfig(), v.size + 4)
try:
    fast.run(big["W"][0], big["V"][0], batch, 1.0)
except ValueError as e:
    print("ValueError:", e, flush=True)
else:
    print("no error", flush=True)
"""


def test_fast_run_checks_shapes() -> None:
    """``fast.run`` itself (a public function the book calls) must refuse parameters whose
    vocabulary size differs from the batch's, instead of reading out of bounds."""
    proc = subprocess.run([sys.executable, "-c", _RUN_MISMATCH], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"crashed with return code {proc.returncode}; output: {proc.stdout!r}"
    assert proc.stdout.startswith("ValueError:") and "vocabulary" in proc.stdout, proc.stdout


def test_history_tables() -> None:
    """``PTHistory.table`` and ``FTHistory.table`` hold the logged curves, one row per step
    (per run for fine-tuning): the data behind the chapters' figures."""
    datas = [make_data(SMALL.with_(seed=s)) for s in (0, 1)]
    params, ph, ft, fh = _pt_ft(datas, ModelConfig(), [0, 1])
    t = ph.table(run=1)
    assert list(t["step"]) == ph.steps and np.array_equal(t["loss"], np.array(ph.loss)[:, 1])
    f = fh.table()
    assert len(f) == 2 * (FT.steps + 1) and list(f.columns) == ["run", "step", "loss", "acc_freq", "acc_rare", "acc"]
    assert np.array_equal(f.loc[f["run"] == 1, "acc"], fh.acc[:, 1])


def test_finetuned_is_the_batch_of_its_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """``sweep.finetuned`` equals fine-tuning the pre-trained models run by run, in the order
    ``product(seeds, N_ft)``, and refuses an empty or invalid ``N_ft`` list."""
    from itertools import product

    from kaol import sweep

    monkeypatch.setenv("KAOL_CACHE", "off")
    cfg, seeds, Ns = DataConfig(N_f=6, N_r=3, R=5, K=2, N_ft=2), [0, 1], [2, 4]
    schedule, ft = Schedule(T1=2, T2=5, T=10), FTConfig(steps=3)
    data, params, hist = sweep.finetuned(cfg, seeds, Ns, ft=ft, schedule=schedule)
    pre, _ = sweep.pretrained(cfg, seeds, schedule=schedule)
    for b, (si, n) in enumerate(product(range(len(seeds)), Ns)):
        assert data[b].cfg == cfg.with_(seed=seeds[si], N_ft=n)
        one, h = finetune({k: p[si:si + 1] for k, p in pre.items()}, data[b], cfg=ft)
        assert torch.equal(params["V"][b], one["V"][0])
        np.testing.assert_array_equal(hist.acc_freq[:, b], h.acc_freq[:, 0])
    with pytest.raises(ValueError, match="empty"):
        sweep.finetuned(cfg, seeds, [], ft=ft, schedule=schedule)
    with pytest.raises(ValueError, match="N_ft"):
        sweep.finetuned(cfg, seeds, [7], ft=ft, schedule=schedule)
