"""Reading the grids of Sec. 7: Theorem 2's bound on the OOD error, beside it the measured
errors, and the per-cell summary over seeds (mean, spread, regime) that chapter 6 plots.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd


# ---------------------------------------------------------------- Theorem 2's bound

def bound(N_ft: np.ndarray | float, K: np.ndarray | float, R: np.ndarray | float) -> np.ndarray:
    """Theorem 2's bound on the OOD error, ``exp(-N~_f K^2 log R / (2 R^2))`` (as summarised publicly)."""
    return np.exp(-np.asarray(N_ft) * np.asarray(K) ** 2 * np.log(R) / (2 * np.asarray(R) ** 2))


def threshold_N(K: np.ndarray | float, R: np.ndarray | float, err: float = 0.5) -> np.ndarray:
    """The ``N~_f`` at which ``bound`` equals ``err`` (its inverse): ``2 R^2 log(1/err) / (K^2 log R)``."""
    return 2 * np.asarray(R, float) ** 2 * math.log(1 / err) / (np.asarray(K, float) ** 2 * np.log(R))


# ---------------------------------------------------------------- the grids' tables

def with_bound(df: pd.DataFrame) -> pd.DataFrame:
    """Add Theorem 2's bound and the measured errors ``1 - accuracy`` (best and last step)."""
    out = df.copy()
    out["bound"] = bound(out["N_ft"], out["K"], out["R"])
    for w in ("best", "last"):
        for part in ("", "_freq", "_rare"):
            out[f"err_{w}{part}"] = 1 - out[f"{w}{part}"]
    return out


def bound_margins(df: pd.DataFrame, threshold: float = 0.5) -> pd.DataFrame:
    """``with_bound`` per run, plus ``margin`` (bound - best-step error: negative where the
    run violates the bound) and ``agree`` (the regime the bound predicts, bound < 1 -
    ``threshold``, is the measured one, best accuracy > ``threshold``)."""
    d = with_bound(df)
    return d.assign(margin=d["bound"] - d["err_best"],
                    agree=(d["best"] > threshold) == (d["bound"] < 1 - threshold))


def gains(s: pd.DataFrame, cols: tuple[str, ...] = ("best_freq", "best_rare")
          ) -> tuple[dict[str, float], dict[str, float]]:
    """Fig. 2a's trend in a ``summary`` of one ``R``: the accuracy gained from the smallest to
    the largest ``K`` at the largest ``N~_f``, and from the smallest to the largest ``N~_f`` at
    the largest ``K``, for each column of ``cols``."""
    acc = s.set_index(["K", "N_ft"])
    Kmin, Kmax, Nmin, Nmax = s["K"].min(), s["K"].max(), s["N_ft"].min(), s["N_ft"].max()
    return ({c: float(acc.loc[(Kmax, Nmax), c] - acc.loc[(Kmin, Nmax), c]) for c in cols},
            {c: float(acc.loc[(Kmax, Nmax), c] - acc.loc[(Kmax, Nmin), c]) for c in cols})


def n_needed(s: pd.DataFrame, col: str, level: float = 0.5) -> pd.Series:
    """Per ``K``, the smallest ``N~_f`` of the grid whose mean ``col`` exceeds ``level``
    (NaN where none does): how much fine-tuning extraction needs at each multiplicity."""
    ok = s[s[col] > level]
    return ok.groupby("K")["N_ft"].min().reindex(sorted(s["K"].unique()))


def summary(df: pd.DataFrame, keys: tuple[str, ...] = ("K", "N_ft", "R"), threshold: float = 0.5) -> pd.DataFrame:
    """Mean and standard deviation over seeds of every accuracy, the bound, and the regime:
    ``extracts`` (mean best accuracy > ``threshold``) measured and predicted (bound < 1 - threshold)."""
    d = with_bound(df)
    cols = [c for c in d.columns if c.startswith(("best", "last", "err_", "acc0")) and c != "best_step"]
    g = d.groupby(list(keys))
    s = g[cols].mean().join(g[cols].std(ddof=0).add_suffix("_sd")).join(g["bound"].first())
    s["n_seeds"] = g.size()
    s["extracts"] = s["best"] > threshold
    s["predicted"] = s["bound"] < 1 - threshold
    s["below_bound"] = s["err_best"] <= s["bound"]
    return s.reset_index()
