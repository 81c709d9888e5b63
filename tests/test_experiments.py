"""The experiments of Sec. 7: the bound's threshold and the per-cell summary (``kaol.analysis``),
the parallel engines (``kaol.parallel``), Table 3 (``kaol.table3``) and the command line
(``kaol.experiments``), on tiny configurations (seconds)."""
from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from kaol import analysis, experiments, parallel, scales, table3
from kaol.analysis import bound
from kaol.data import DataConfig
from kaol.train import FTConfig, Schedule

TINY = replace(scales.SCALES["book"], base=DataConfig(N_f=12, N_r=4, R=4, K=2, N_ft=4), K=(1, 2), N_ft=(4, 8, 12),
               R=(4,), K_of_R=(2,), seeds=(0, 1), schedule=Schedule(T1=2, T2=10, T=20), ft=FTConfig(steps=5),
               table3_data=DataConfig(N_f=6, N_r=0, K=2, R=3, N_ft=3, context=False),
               archs=scales._archs(5, 5, 3))


@pytest.fixture(autouse=True)
def no_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAOL_CACHE", "off")


@pytest.mark.parametrize("K,R,err", [(1, 10, 0.5), (4, 20, 0.1), (8, 40, 0.9)])
def test_threshold_inverts_bound(K: int, R: int, err: float) -> None:
    """The predicted regime boundary is where Theorem 2's bound equals ``err``."""
    assert math.isclose(float(bound(analysis.threshold_N(K, R, err), K, R)), err, rel_tol=1e-12)


def _fake_runs() -> pd.DataFrame:
    rows = []
    for K, N, seed in [(1, 10, 0), (1, 10, 1), (4, 50, 0), (4, 50, 1)]:
        a = 0.2 if K == 1 else 0.9 + 0.02 * seed
        rows.append({"K": K, "N_ft": N, "R": 20, "seed": seed, "acc0_freq": 0.0, "acc0_rare": 0.0,
                     "best_freq": a, "best_rare": a, "best": a, "best_step": 3,
                     "last_freq": a, "last_rare": a, "last": a})
    return pd.DataFrame(rows)


def test_summary_regimes() -> None:
    """Mean and sd over seeds; measured and predicted regimes; bound held or not."""
    s = analysis.summary(_fake_runs()).set_index("K")
    assert s.loc[4, "best"] == pytest.approx(0.91) and s.loc[4, "best_sd"] == pytest.approx(0.01)
    assert s.loc[4, "n_seeds"] == 2
    assert s.loc[1, "bound"] == pytest.approx(float(bound(10, 1, 20)))
    assert not s.loc[1, "extracts"] and s.loc[4, "extracts"]
    assert not s.loc[1, "predicted"] and s.loc[4, "predicted"]      # bounds 0.96 and 0.05
    assert s.loc[1, "below_bound"] and not s.loc[4, "below_bound"]   # error 0.8 <= 0.96; 0.09 > 0.05
    assert s.loc[4, "err_best"] == pytest.approx(0.09)


def test_bound_margins_per_run() -> None:
    """Per run: bound - error (negative where the bound is violated) and whether the bound's
    regime is the measured one."""
    m = analysis.bound_margins(_fake_runs()).set_index(["K", "seed"])
    assert m.loc[(1, 0), "margin"] == pytest.approx(float(bound(10, 1, 20)) - 0.8)
    assert m.loc[(4, 1), "margin"] == pytest.approx(float(bound(50, 4, 20)) - 0.08)
    assert m.loc[(4, 1), "margin"] < 0 < m.loc[(1, 0), "margin"]
    assert m["agree"].all()                          # fails where predicted to, extracts where predicted to
    assert not analysis.bound_margins(_fake_runs(), threshold=0.1).loc[0, "agree"]   # K = 1 extracts 0.2 > 0.1; bound 0.96 > 0.9


def _square(x: int) -> int:
    return x * x


@pytest.mark.parametrize("workers", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_run_all_local_keeps_order(workers: int) -> None:
    logs: list[str] = []
    assert parallel.run_all(_square, [3, 1, 2], workers=workers, log=logs.append) == [9, 1, 4]
    assert len(logs) == 3 and logs[-1].startswith("[3/3]")


def test_run_all_rejects_unknown_engine() -> None:
    with pytest.raises(ValueError, match="engine"):
        parallel.run_all(_square, [1], engine="slurm")


def _assert_same_sweep(a: tuple[pd.DataFrame, dict], b: tuple[pd.DataFrame, dict]) -> None:
    """Two ``fig2a`` results are equal: the rows, and every fine-tuning curve."""
    pd.testing.assert_frame_equal(a[0], b[0])
    assert a[1].keys() == b[1].keys()
    for key, h in a[1].items():
        pd.testing.assert_frame_equal(h.table(), b[1][key].table())


@pytest.mark.slow
def test_run_all_dask() -> None:
    """The Dask engine on a local two-worker cluster gives the local engine's results, in order."""
    pytest.importorskip("dask.distributed")
    from dask.distributed import LocalCluster
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        engine = {"engine": "dask", "address": cluster.scheduler_address, "log": lambda s: None}
        assert parallel.run_all(_square, [3, 1, 2], **engine) == [9, 1, 4]
        _assert_same_sweep(parallel.fig2a(TINY, **engine), parallel.fig2a(TINY, workers=1, log=lambda s: None))


@pytest.mark.slow
def test_run_all_ray() -> None:
    """The Ray engine on a local two-CPU Ray gives the local engine's results, in order."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        engine = {"engine": "ray", "log": lambda s: None}
        assert parallel.run_all(_square, [3, 1, 2], **engine) == [9, 1, 4]
        _assert_same_sweep(parallel.fig2a(TINY, **engine), parallel.fig2a(TINY, workers=1, log=lambda s: None))
    finally:
        ray.shutdown()


def test_sweep_rows_and_curves() -> None:
    """One group per (K, R); N~_f = N_f (no unseen frequent fact, only rare ones) is a valid cell."""
    df, curves = parallel.fig2a(TINY, workers=1, log=lambda s: None)
    assert len(df) == 2 * 3 * 2                      # K x N_ft (4, 8, 12) x seeds
    assert set(df["N_ft"]) == {4, 8, 12} and set(df["K"]) == {1, 2}
    assert df.loc[df["N_ft"] == 12, "best_freq"].isna().all()
    assert set(curves) == {(k, n, 4, s) for k in (1, 2) for n in (4, 8, 12) for s in (0, 1)}
    assert curves[(2, 4, 4, 0)].acc_freq.shape == (TINY.ft.steps + 1, 1)
    both, curves2 = parallel.rank1(TINY, workers=1, log=lambda s: None)
    assert sorted(both["ft"].unique()) == ["full", "rank1"]
    # one pool for both kinds: the full half is the Fig. 2a grid, row for row
    pd.testing.assert_frame_equal(both[both["ft"] == "full"].reset_index(drop=True), df)
    assert set(curves2) == {k + (f,) for k in curves for f in ("full", "rank1")}


def test_run_grid_starts_the_largest_group_first() -> None:
    """The groups run largest first (K = 2 has more rows than K = 1), the table in the order of the pairs."""
    logs: list[str] = []
    df, _ = parallel.run_grid(TINY, parallel.pairs_2a(TINY), workers=1, log=logs.append)
    assert [line.split("] ")[1].split(" full")[0] for line in logs] == ["K=2 R=4", "K=1 R=4"]
    assert list(df["K"].drop_duplicates()) == [1, 2]
    groups = parallel._groups(TINY, [(1, 4), (2, 4)])
    assert parallel.work(groups[1]) > parallel.work(groups[0]) > 0


def test_table3_and_summary() -> None:
    runs = table3.table3(TINY, workers=1, log=lambda s: None)
    assert len(runs) == 2 * 4
    assert runs.loc[runs["arch"] == "attention_only", "best_ood"].isna().all()
    assert np.allclose(runs["H"], math.log(2) / 2)
    t = table3.table3_summary(runs)
    assert t.loc[("three-token", "standard"), "paper loss"] == 0.8064
    assert np.isnan(t.loc[("with context", "standard"), "paper loss"])


def test_cli_writes_csv_and_json(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(scales.SCALES, "tiny", TINY)
    out = tmp_path / "bound_tiny"
    assert experiments.main(["bound", "--scale", "tiny", "--seeds", "1", "--workers", "1", "--out", str(out)]) == 0
    df = pd.read_csv(out.with_suffix(".csv"))
    meta = json.loads(out.with_suffix(".json").read_text())
    assert {"K", "N_ft", "R", "seed", "best_freq", "best_rare", "bound", "err_best"} <= set(df.columns)
    assert set(df["seed"]) == {0} and meta["config"]["seeds"] == [0]
    assert meta["figure"] == "bound" and set(meta["versions"]) >= {"python", "kaol", "torch"}
    assert meta["command"].startswith("python -m kaol.experiments")
    assert meta["commit"] == "unknown" or len(meta["commit"].split("+")[0]) == 40     # a git checkout: its commit
    assert not df.duplicated(["K", "N_ft", "R", "seed"]).any()


def test_gains_reads_the_corners() -> None:
    """``gains``: accuracy at (max K, max N~_f) minus (min K, max N~_f) and minus (max K, min N~_f)."""
    s = pd.DataFrame({"K": [1, 1, 4, 4], "N_ft": [10, 50, 10, 50], "best_freq": [0.1, 0.2, 0.3, 0.9],
                      "best_rare": [0.0, 0.1, 0.2, 0.5]})
    g_K, g_N = analysis.gains(s)
    assert g_K == pytest.approx({"best_freq": 0.7, "best_rare": 0.4})
    assert g_N == pytest.approx({"best_freq": 0.6, "best_rare": 0.3})


def test_n_needed_is_the_first_size_above_the_level() -> None:
    s = pd.DataFrame({"K": [1, 1, 1, 4, 4, 4, 8, 8, 8], "N_ft": [10, 50, 100] * 3,
                      "best_freq": [0.1, 0.4, 0.7, 0.2, 0.6, 0.9, 0.1, 0.2, 0.3]})
    n = analysis.n_needed(s, "best_freq")
    assert n.loc[1] == 100 and n.loc[4] == 50 and np.isnan(n.loc[8])
