"""The synthetic experiments of Sec. 7 and App. A at two scales, run in parallel, saved as tidy tables.

Figures (the paper's numbering):

* ``fig2a``: OOD accuracy over multiplicity ``K`` x fine-tuning size ``N~_f`` (Fig. 2a/3a);
* ``fig2b``: OOD accuracy over the number ``R`` of relation phrases (Fig. 2b/3b, Remark 3);
* ``bound``: both grids with Theorem 2's bound ``exp(-N~_f K^2 log R / (2 R^2))`` beside the error;
* ``rank1``: the ``fig2a`` grid fine-tuned in full and with rank-1 updates (App. H);
* ``table3``: the four architectures of App. A on the three-token data and with the context token.

Each grid is split into independent ``(K, R)`` groups (one pre-training per seed, all
``N~_f`` fine-tuned together, see ``kaol.sweep.grid``); the groups run on local processes
(``concurrent.futures``), on a Dask cluster or on Ray. Results are cached on disk by
``kaol.cache``, so a group computed once is read back by every later call. Command line::

    python -m kaol.experiments fig2a --scale paper --seeds 5 --out results/fig2a_paper
    python -m kaol.experiments bound --scale book --engine dask --address tcp://host:8786

writes ``OUT.csv`` (one row per run) and ``OUT.json`` (configuration and package versions).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import socket
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from importlib.metadata import PackageNotFoundError, version
from itertools import product
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd
import torch

from . import checks
from .cache import memo
from .data import DataConfig, entropy, make_data
from .model import ModelConfig
from .sweep import bound, grid
from .train import FTConfig, FTHistory, Schedule, finetune, pretrain

FIGURES = ("fig2a", "fig2b", "bound", "rank1", "table3")
ENGINES = ("local", "dask", "ray")

# App. A, Table 3 of the paper: final training loss (entropy H = log(5)/2 in brackets there) and OOD accuracy.
PAPER_TABLE3 = pd.DataFrame({
    "arch": ["standard", "uniform_mlp", "attention_only", "simplified"],
    "paper loss": [0.8064, 0.8068, 5.5875, 0.8200],
    "paper OOD": [1.00, 1.00, np.nan, 0.99],
}).set_index("arch")
PAPER_H = 0.8047


@dataclass(frozen=True)
class Arch:
    """How one architecture of Table 3 is trained: constant-rate gradient descent for ``steps``
    (``schedule`` when given; ``eta_context`` on the data with the context token when given),
    then ``ft_steps`` of fine-tuning at ``ft_eta`` (rates are ours)."""

    arch: str
    eta: float
    steps: int
    ft_eta: float
    ft_steps: int
    schedule: Schedule | None = None
    eta_context: float | None = None

    def __post_init__(self) -> None:
        checks.choice("arch", self.arch, ("standard", "uniform_mlp", "attention_only", "simplified"))
        checks.real("eta", self.eta, lo=0)
        checks.integer("steps", self.steps, lo=0)
        checks.real("ft_eta", self.ft_eta, lo=0)
        checks.integer("ft_steps", self.ft_steps, lo=0)
        if self.schedule is not None:
            checks.of_type("schedule", self.schedule, Schedule)
        elif not (self.eta > 0 and self.steps >= 1):
            raise ValueError(f"Arch {self.arch!r} without a schedule needs eta > 0 and steps >= 1, got eta={self.eta}, "
                             f"steps={self.steps}")
        if self.ft_steps and not self.ft_eta > 0:
            raise ValueError(f"ft_eta = {self.ft_eta} must be > 0 when ft_steps = {self.ft_steps} > 0")
        if self.eta_context is not None:
            checks.positive("eta_context", self.eta_context)

    def on(self, context: bool) -> "Arch":
        """The settings used on the data with (``True``) or without the context token."""
        return replace(self, eta=self.eta_context, eta_context=None) if context and self.eta_context else self

    @property
    def pt_schedule(self) -> Schedule:
        return self.schedule or Schedule.constant(self.eta, self.steps)


@dataclass(frozen=True)
class Scale:
    """Sizes of one scale of the experiments. The paper does not print its sizes (App. J
    lost them in the text we have): every number here is ours, see ``SCALES``."""

    base: DataConfig
    K: tuple[int, ...]
    N_ft: tuple[int, ...]
    R: tuple[int, ...]
    K_of_R: tuple[int, ...]           # the K values of the R sweep (Fig. 2b)
    seeds: tuple[int, ...]
    schedule: Schedule
    ft: FTConfig
    table3_data: DataConfig
    archs: tuple[Arch, ...]
    table3_seeds: tuple[int, ...] = (0,)
    model: ModelConfig = field(default_factory=ModelConfig)

    def __post_init__(self) -> None:
        """Every list non-empty, of ints; every grid cell a valid ``DataConfig`` (``K <= R``,
        ``1 <= N_ft <= N_f``); seeds distinct non-negative ints. Checked here, before any run."""
        checks.of_type("base", self.base, DataConfig)
        checks.of_type("table3_data", self.table3_data, DataConfig)
        checks.of_type("schedule", self.schedule, Schedule)
        checks.of_type("ft", self.ft, FTConfig)
        checks.of_type("model", self.model, ModelConfig)
        for name in ("K", "N_ft", "R", "K_of_R"):
            object.__setattr__(self, name, tuple(checks.ints(name, getattr(self, name), lo=1)))
        for name in ("seeds", "table3_seeds"):
            object.__setattr__(self, name, tuple(checks.seeds(name, getattr(self, name), distinct=True)))
        for k, n in product(self.K, self.N_ft):
            self.base.with_(K=k, N_ft=n)
        for k, r, n in product(self.K_of_R, self.R, self.N_ft):
            self.base.with_(K=k, R=r, N_ft=n)
        for a in self.archs:
            checks.of_type("archs[...]", a, Arch)

    def with_seeds(self, n: int | None) -> "Scale":
        """The same scale with seeds ``0 .. n-1`` (``None`` keeps them; ``n`` an int >= 1)."""
        return self if n is None else replace(self, seeds=tuple(range(checks.integer("seeds", n, lo=1))))


def _archs(steps: int, std_steps: int, ft_steps: int) -> tuple[Arch, ...]:
    """Table 3's architectures with our rates, the largest of a few tried (1, 3, 30) that train
    without collapsing; uniform attention + MLP needs a smaller one with the context token
    (at 30, the first steps kill every neuron on inputs that contain c)."""
    return (Arch("standard", 1.0, std_steps, 0.5, ft_steps),
            Arch("uniform_mlp", 30.0, steps, 10.0, ft_steps, eta_context=3.0),
            Arch("attention_only", 30.0, steps, 30.0, 0),
            Arch("simplified", 0.0, 0, 30.0, ft_steps, Schedule()))


SCALES: dict[str, Scale] = {
    "book": Scale(base=DataConfig(N_f=100, N_r=50, R=20), K=(1, 2, 4), N_ft=(10, 25, 50, 80),
                  R=(10, 20, 40), K_of_R=(4,), seeds=(0, 1, 2, 3, 4), schedule=Schedule(), ft=FTConfig(steps=200),
                  table3_data=DataConfig(N_f=100, N_r=0, K=5, R=20, N_ft=50, context=False),
                  archs=_archs(500, 300, 200)),
    "paper": Scale(base=DataConfig(N_f=200, N_r=100, R=20), K=(1, 2, 4, 8, 16), N_ft=(10, 25, 50, 100, 150),
                   R=(10, 20, 40, 80), K_of_R=(2, 4, 8), seeds=(0, 1, 2, 3, 4),
                   schedule=Schedule(T2=1500, T=3000), ft=FTConfig(steps=2000),
                   table3_data=DataConfig(N_f=100, N_r=0, K=5, R=20, N_ft=50, context=False),
                   archs=_archs(2000, 1000, 1000), table3_seeds=(0, 1, 2, 3, 4)),
}


# ---------------------------------------------------------------- parallel groups

@dataclass(frozen=True)
class Group:
    """One independent piece of a grid: all seeds and all ``N~_f`` of one ``(K, R)``."""

    base: DataConfig
    K: int
    R: int
    N_ft: tuple[int, ...]
    seeds: tuple[int, ...]
    model: ModelConfig
    schedule: Schedule
    ft: FTConfig

    def __str__(self) -> str:
        return f"K={self.K} R={self.R} {'rank-1' if self.ft.rank1 else 'full'} ({len(self.seeds)} seeds)"


def run_group(g: Group) -> tuple[pd.DataFrame, dict[tuple[int, int, int, int], FTHistory]]:
    """``kaol.sweep.grid`` on one group, single-threaded (bit-identical wherever it runs)."""
    torch.set_num_threads(1)
    return grid(g.base, K=[g.K], N_ft=list(g.N_ft), R=[g.R], seeds=list(g.seeds), model=g.model,
                schedule=g.schedule, ft=g.ft)


def run_all(fn: Callable, items: list, engine: str = "local", address: str | None = None,
            workers: int | None = None, log: Callable[[str], None] | None = None) -> list:
    """``[fn(x) for x in items]``, computed in parallel by ``engine``, in the order of ``items``.

    ``local``: a ``ProcessPoolExecutor`` (spawned workers; ``workers=1`` runs in this process);
    ``dask``: ``Client.map`` on a ``dask.distributed.Client(address)`` (no address: a local
    cluster), closed at the end; ``ray``: ``ray.remote`` tasks, on the Ray this process is already
    connected to, else on ``ray.init(address)``, shut down at the end. Each item's end is reported
    through ``log`` (default: stderr).
    """
    checks.choice("engine", engine, ENGINES)
    if workers is not None:
        workers = checks.integer("workers", workers, lo=1)
    if address is not None:
        checks.of_type("address", address, str)
        if engine == "local":
            raise ValueError(f"address = {address!r} is ignored by engine = 'local': pass engine='dask' or 'ray', "
                             f"or drop the address")
    items = list(items)
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    start, out, finished = time.perf_counter(), [None] * len(items), []

    def done(i: int, result: object) -> None:
        out[i] = result
        finished.append(i)
        log(f"[{len(finished)}/{len(items)}] {items[i]} done after {time.perf_counter() - start:.0f} s")

    if engine == "local" and (workers == 1 or len(items) <= 1):
        for i, x in enumerate(items):
            done(i, fn(x))
    elif engine == "local":
        import multiprocessing
        n = min(workers or os.cpu_count() or 1, len(items))
        with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_die_with_parent, initargs=(os.getpid(),)) as ex:
            futures = {ex.submit(fn, x): i for i, x in enumerate(items)}
            for f in as_completed(futures):
                done(futures[f], f.result())
    elif engine == "dask":
        from dask.distributed import Client
        from dask.distributed import as_completed as dask_completed
        if address is not None:
            _reachable(address, "Dask scheduler")
        with Client(address, timeout=CONNECT_TIMEOUT) as client:
            futures = client.map(fn, items, pure=False)
            index = {f.key: i for i, f in enumerate(futures)}
            for f in dask_completed(futures):
                done(index[f.key], f.result())
    else:
        import ray
        owned = not ray.is_initialized()
        if owned:
            if address not in (None, "auto", "local"):
                _reachable(address, "Ray cluster")
            ray.init(address=address)
        try:
            remote = ray.remote(fn)
            pending = [remote.remote(x) for x in items]
            index = {r: i for i, r in enumerate(pending)}
            while pending:
                [ready], pending = ray.wait(pending, num_returns=1)
                done(index[ready], ray.get(ready))
        finally:
            if owned:
                ray.shutdown()
    return out


CONNECT_TIMEOUT = 10
"""Seconds to wait for a Dask scheduler or a Ray cluster before giving up with its address."""


def _reachable(address: str, what: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Fail fast, naming ``address``, when nothing listens there (instead of minutes of retries)."""
    from urllib.parse import urlsplit

    parts = urlsplit(address if "://" in address else "tcp://" + address)
    if parts.scheme not in ("tcp", "tls", "ray", "http", "https", "ws", "wss"):
        return                                   # in-process or other transports: the client's own timeout
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host or port is None:
        raise ValueError(f"address = {address!r} is not a {what} address of the form [scheme://]host:port")
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        raise ConnectionError(f"cannot reach the {what} at address = {address!r} within {timeout} s ({err}): "
                              f"start it, or check the address") from None


def _die_with_parent(parent: int) -> None:
    """Pool worker initializer: stop this worker when the process that started it dies (Linux:
    ``PR_SET_PDEATHSIG``; everywhere: a thread that watches ``os.getppid()``)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="kaol-parent-watch").start()


def sweep(scale: Scale, pairs: Iterable[tuple[int, int]], rank1: bool = False, **engine
          ) -> tuple[pd.DataFrame, dict[tuple[int, int, int, int], FTHistory]]:
    """The ``N~_f x seeds`` grid of ``scale`` at every ``(K, R)`` of ``pairs``, one parallel task each."""
    ft = replace(scale.ft, rank1=rank1)
    pairs = list(dict.fromkeys(pairs))
    if not pairs:
        raise ValueError("pairs = []: pass at least one (K, R)")
    for k, r in pairs:
        for n in scale.N_ft:
            scale.base.with_(K=k, R=r, N_ft=n)   # K <= R and N_ft <= N_f, said before any run
    groups = [Group(scale.base, k, r, scale.N_ft, scale.seeds, scale.model, scale.schedule, ft) for k, r in pairs]
    results = run_all(run_group, groups, **engine)
    curves = {key: h for _, c in results for key, h in c.items()}
    return pd.concat([df for df, _ in results], ignore_index=True), curves


def pairs_2a(scale: Scale) -> list[tuple[int, int]]:
    """Fig. 2a/3a: every ``K`` at ``R = scale.base.R``."""
    return [(k, scale.base.R) for k in scale.K]


def pairs_2b(scale: Scale) -> list[tuple[int, int]]:
    """Fig. 2b/3b and Remark 3: every ``R`` for the ``K`` values ``scale.K_of_R``."""
    return list(product(scale.K_of_R, scale.R))


def fig2a(scale: Scale, **engine) -> tuple[pd.DataFrame, dict]:
    """Fig. 2a/3a: accuracy over ``K x N~_f`` at ``R = scale.base.R``."""
    return sweep(scale, pairs_2a(scale), **engine)


def fig2b(scale: Scale, **engine) -> tuple[pd.DataFrame, dict]:
    """Fig. 2b/3b and Remark 3: accuracy over ``R`` for the ``K`` values ``scale.K_of_R``."""
    return sweep(scale, pairs_2b(scale), **engine)


def rank1(scale: Scale, **engine) -> tuple[pd.DataFrame, dict]:
    """App. H: the Fig. 2a grid fine-tuned in full and with rank-1 updates (column ``ft``)."""
    full, c1 = fig2a(scale, **engine)
    low, c2 = sweep(scale, pairs_2a(scale), rank1=True, **engine)
    return pd.concat([full, low], ignore_index=True), {**{k + ("full",): v for k, v in c1.items()},
                                                         **{k + ("rank1",): v for k, v in c2.items()}}


# ---------------------------------------------------------------- Theorem 2's bound

def with_bound(df: pd.DataFrame) -> pd.DataFrame:
    """Add Theorem 2's bound and the measured errors ``1 - accuracy`` (best and last step)."""
    out = df.copy()
    out["bound"] = bound(out["N_ft"], out["K"], out["R"])
    for w in ("best", "last"):
        for part in ("", "_freq", "_rare"):
            out[f"err_{w}{part}"] = 1 - out[f"{w}{part}"]
    return out


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


def threshold_N(K: np.ndarray | float, R: np.ndarray | float, err: float = 0.5) -> np.ndarray:
    """The ``N~_f`` at which the bound equals ``err``: ``2 R^2 log(1/err) / (K^2 log R)``."""
    return 2 * np.asarray(R, float) ** 2 * math.log(1 / err) / (np.asarray(K, float) ** 2 * np.log(R))


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


# ---------------------------------------------------------------- Table 3 (App. A)

@dataclass(frozen=True)
class ArchTask:
    """One architecture of Table 3 on one data set (``context`` or not), one seed."""

    arch: Arch
    data: DataConfig
    seed: int

    def __str__(self) -> str:
        return f"{self.arch.arch} {'with context' if self.data.context else 'three-token'} seed {self.seed}"


def _check_task(task: ArchTask) -> None:
    checks.of_type("task", task, ArchTask)
    checks.seed("seed", task.seed)


def run_arch(task: ArchTask) -> dict[str, object]:
    """Pre-train one architecture (App. A), then fine-tune it and read the OOD accuracy (cached)."""
    _check_task(task)
    torch.set_num_threads(1)
    return memo("table3", (task,), lambda: _run_arch(task))


def _run_arch(task: ArchTask) -> dict[str, object]:
    a, cfg = task.arch, task.data.with_(seed=task.seed)
    data, model = make_data(cfg), ModelConfig(arch=a.arch)
    params, hist = pretrain(data, model, a.pt_schedule, seed=task.seed, log_every=max(a.pt_schedule.T // 50, 1))
    row = {"arch": a.arch, "data": "with context" if cfg.context else "three-token", "seed": task.seed,
           "pt_rate": a.eta if a.schedule is None else "x".join(f"{e:g}" for e in a.schedule.eta),
           "pt_steps": a.pt_schedule.T, "loss": float(hist.loss[-1][0]), "H": entropy(cfg, weighted=False),
           "loss_curve": [float(x[0]) for x in hist.loss], "curve_steps": list(hist.steps),
           "ft_rate": a.ft_eta, "ft_steps": a.ft_steps, "best_ood": np.nan, "last_ood": np.nan}
    if a.ft_steps:
        _, fh = finetune(params, data, model, FTConfig(eta=a.ft_eta, steps=a.ft_steps))
        row.update(best_ood=float(fh.best("acc_freq")[0][0]), last_ood=float(fh.acc_freq[-1, 0]),
                   acc0_ood=float(fh.acc_freq[0, 0]))
    return row


def table3(scale: Scale, **engine) -> pd.DataFrame:
    """App. A, Table 3: every architecture on the three-token data and with the context token."""
    tasks = [ArchTask(a.on(ctx), scale.table3_data.with_(context=ctx), s)
             for ctx in (False, True) for a in scale.archs for s in scale.table3_seeds]
    return pd.DataFrame(run_all(run_arch, tasks, **engine))


def table3_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds per (data, arch), with the paper's three-token numbers beside ours."""
    g = runs.groupby(["data", "arch"], sort=False)
    t = g[["loss", "H", "best_ood", "last_ood"]].mean()
    t["gap"] = t["loss"] - t["H"]
    t = t.join(g[["pt_rate", "pt_steps", "ft_rate"]].first())
    paper = PAPER_TABLE3.reindex(t.index.get_level_values("arch")).set_index(t.index)
    three = t.index.get_level_values("data") == "three-token"
    t["paper loss"] = np.where(three, paper["paper loss"], np.nan)
    t["paper OOD"] = np.where(three, paper["paper OOD"], np.nan)
    return t


# ---------------------------------------------------------------- figures

ACC = {"best_freq": "best step, unseen frequent", "best_rare": "best step, rare",
       "last_freq": "last step, unseen frequent", "last_rare": "last step, rare"}


def _pivot(s: pd.DataFrame, col: str, R: int) -> pd.DataFrame:
    return s[s["R"] == R].pivot(index="K", columns="N_ft", values=col)


def plot_heatmaps(s: pd.DataFrame, R: int, threshold: float = 0.5):
    """Fig. 2a/3a as four heat maps (best/last step x frequent/rare) of the mean accuracy over
    seeds, each cell annotated with its mean (the spreads are in ``summary``), with the curve
    where Theorem 2's bound equals ``1 - threshold``; drawn for a 7.2 in column."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 2, figsize=(7.2, 5.6), sharex=True, sharey=True, layout="constrained")
    for ax, (col, title) in zip(axes.flat, ACC.items()):
        m = _pivot(s, col, R)
        im = ax.imshow(m.values, origin="lower", vmin=0, vmax=1, cmap="viridis", aspect="auto")
        for (i, j), x in np.ndenumerate(m.values):
            ax.text(j, i, f"{x:.2f}", ha="center", va="center", fontsize=9,
                    color="black" if x > 0.6 else "white")
        ax.set_xticks(range(m.shape[1]), m.columns)
        ax.set_yticks(range(m.shape[0]), m.index)
        Ks = np.linspace(m.index.min(), m.index.max(), 200)
        xs = np.interp(threshold_N(Ks, R, 1 - threshold), m.columns, range(m.shape[1]), left=np.nan, right=np.nan)
        ax.plot(xs, np.interp(Ks, m.index, range(m.shape[0])), "r--", lw=1.5)
        ax.set_title(title, fontsize=10)
    for ax in axes[1]:
        ax.set_xlabel(r"$\tilde N_f$")
    for ax in axes[:, 0]:
        ax.set_ylabel("multiplicity $K$")
    fig.colorbar(im, ax=axes, shrink=0.8, label="OOD accuracy (mean over seeds)")
    return fig


def plot_lines(s: pd.DataFrame, x: str, hue: str, fixed: dict[str, int]):
    """Accuracy (best step solid, last step dashed) against ``x``, one line per ``hue``,
    error bars one standard deviation over seeds; frequent and rare in two panels."""
    import matplotlib.pyplot as plt
    sel = s.loc[np.logical_and.reduce([s[k] == v for k, v in fixed.items()] or [np.ones(len(s), bool)])]
    fig, axes = plt.subplots(1, 2, figsize=(7.2, 3.4), sharey=True, layout="constrained")
    for ax, part in zip(axes, ("freq", "rare")):
        for i, (h, d) in enumerate(sel.groupby(hue)):
            d = d.sort_values(x)
            for w, ls in (("best", "-"), ("last", "--")):
                ax.errorbar(d[x], d[f"{w}_{part}"], d[f"{w}_{part}_sd"], ls=ls, marker="o", ms=3, capsize=2,
                            color=f"C{i}", label={"N_ft": r"$\tilde N_f$", "K": "$K$", "R": "$R$"}.get(hue, hue) + f" = {h}"
                            if w == "best" else None)
        ax.set_title({"freq": "unseen frequent facts", "rare": "rare facts"}[part], fontsize=10)
        ax.set_xlabel({"N_ft": r"$\tilde N_f$", "R": "$R$ (relation phrases)", "K": "$K$"}.get(x, x))
        ax.set_ylim(-0.03, 1.03)
    axes[0].set_ylabel("OOD accuracy")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right", fontsize=9)
    return fig


def plot_bound(s: pd.DataFrame):
    """Measured error ``1 - best accuracy`` (mean over seeds, bars: sd) against Theorem 2's bound."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(7.2, 3.6), sharey=True, layout="constrained")
    for ax, part in zip(axes, ("", "_rare")):
        for i, (r, d) in enumerate(s.groupby("R")):
            ax.errorbar(d["bound"], d[f"err_best{part}"], d[f"err_best{part}_sd"], fmt="o", ms=4, capsize=2,
                        color=f"C{i}", label=f"$R$ = {r}")
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="error = bound")
        ax.fill_between([0, 1], [0, 1], 1, color="red", alpha=0.07, label="bound violated")
        ax.set_xlabel("bound, Eq. (14)")
        ax.set_title("all unseen facts" if not part else "rare facts", fontsize=10)
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
    axes[0].set_ylabel("measured OOD error (best step)")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=5, fontsize=9)
    return fig


def plot_regime(s: pd.DataFrame, threshold: float = 0.5):
    """Over the (K, N~_f) plane of each R: where extraction succeeds (mean best accuracy >
    ``threshold``), measured (colour) and predicted by the bound (o: success, x: failure)."""
    import matplotlib.pyplot as plt
    Rs = sorted(s["R"].unique())
    fig, axes = plt.subplots(1, len(Rs), figsize=(7.2, 2.9), squeeze=False, layout="constrained")
    for ax, R in zip(axes[0], Rs):
        d = s[s["R"] == R]
        sc = ax.scatter(d["N_ft"], d["K"], c=d["best"], vmin=0, vmax=1, cmap="viridis", s=150, marker="s")
        ok = d["predicted"]
        ax.scatter(d.loc[ok, "N_ft"], d.loc[ok, "K"], marker="o", facecolors="none", edgecolors="w", s=60)
        ax.scatter(d.loc[~ok, "N_ft"], d.loc[~ok, "K"], marker="x", color="r", s=40)
        Ks = np.linspace(0.8, d["K"].max() * 1.1, 100)
        ax.plot(threshold_N(Ks, R, 1 - threshold), Ks, "r--", lw=1)
        ax.set_xlim(0, d["N_ft"].max() * 1.15)
        ax.set_ylim(0, d["K"].max() * 1.15)
        ax.set_title(f"$R$ = {R}", fontsize=10)
        ax.set_xlabel(r"$\tilde N_f$")
    axes[0, 0].set_ylabel("$K$")
    fig.colorbar(sc, ax=axes[0], label="accuracy (best step)")
    return fig


def plotly_heatmap(s: pd.DataFrame, R: int):
    """A kernel-free interactive Fig. 2a: heat map with hover (mean, sd, bound) and a menu for
    best/last step and frequent/rare facts."""
    import plotly.graph_objects as go
    cols = list(ACC)
    fig = go.Figure()
    for i, col in enumerate(cols):
        m, sd, b = _pivot(s, col, R), _pivot(s, col + "_sd", R), _pivot(s, "bound", R)
        text = [[f"K={k}, N~f={n}<br>accuracy {m.loc[k, n]:.3f} ± {sd.loc[k, n]:.3f}<br>"
                 f"bound on error {b.loc[k, n]:.3f}" for n in m.columns] for k in m.index]
        fig.add_trace(go.Heatmap(z=m.values, x=[str(n) for n in m.columns], y=[str(k) for k in m.index],
                                 zmin=0, zmax=1, colorscale="Viridis", text=text, hoverinfo="text",
                                 texttemplate="%{z:.2f}", visible=i == 0, colorbar={"title": "accuracy"}))
    buttons = [{"label": ACC[c], "method": "update",
                "args": [{"visible": [j == i for j in range(len(cols))]}, {"title": f"OOD accuracy, {ACC[c]} (R={R})"}]}
               for i, c in enumerate(cols)]
    fig.update_layout(updatemenus=[{"buttons": buttons, "x": 1.0, "y": 1.18, "xanchor": "right"}],
                      title=f"OOD accuracy, {ACC[cols[0]]} (R={R})", xaxis_title="N~f (fine-tuning size)",
                      yaxis_title="multiplicity K", width=650, height=420)
    return fig


def plot_curves(curves: dict, K: int, N_ft: int, R: int, ax=None):
    """Fine-tuning curves of one grid cell: accuracy on unseen frequent and rare facts per step, each seed."""
    import matplotlib.pyplot as plt
    if ax is None:
        _, ax = plt.subplots(figsize=(7.2, 3), layout="constrained")
    runs = {k[3]: h for k, h in curves.items() if k[:3] == (K, N_ft, R)}
    for i, (seed, h) in enumerate(sorted(runs.items())):
        ax.plot(h.acc_freq[:, 0], color=f"C{i}", label=f"seed {seed}")
        ax.plot(h.acc_rare[:, 0], color=f"C{i}", ls=":")
    ax.set_xlabel("fine-tuning step")
    ax.set_ylabel("OOD accuracy")
    ax.set_ylim(-0.03, 1.03)
    ax.set_title(rf"$K$ = {K}, $\tilde N_f$ = {N_ft}, $R$ = {R} (solid: unseen frequent, dotted: rare)",
                 fontsize=10)
    ax.legend(fontsize=9, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return ax


# ---------------------------------------------------------------- files and command line

def versions() -> dict[str, str]:
    """Versions of Python, kaol and the packages the results depend on."""
    out = {"python": platform.python_version()}
    for p in ("kaol", "torch", "numpy", "pandas"):
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = "not installed"
    return out


def _jsonable(x: object) -> object:
    if isinstance(x, torch.dtype):
        return str(x)
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def out_paths(out: str | Path) -> tuple[Path, Path]:
    """``(OUT.csv, OUT.json)`` for the output path ``out`` given without suffix (``name_v1.5`` gives
    ``name_v1.5.csv``; a trailing ``.csv`` or ``.json`` is dropped), its folder created and checked
    writable, so a bad path is said before any computation."""
    raw = str(out)
    if not raw.strip() or raw.endswith(("/", os.sep)):
        raise ValueError(f"out = {raw!r} must name a file (without suffix), e.g. results/fig2a_book")
    out = Path(raw).expanduser()
    if out.suffix in (".csv", ".json"):
        out = out.with_suffix("")
    csv, meta = out.parent / (out.name + ".csv"), out.parent / (out.name + ".json")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"out = {raw!r}: cannot create the folder {out.parent} ({err})") from None
    for p in (csv, meta):
        if p.is_dir():
            raise ValueError(f"out = {raw!r}: {p} is a folder")
    if not os.access(out.parent, os.W_OK):
        raise ValueError(f"out = {raw!r}: the folder {out.parent} is not writable")
    return csv, meta


def _atomic_pair(files: list[tuple[Path, bytes]]) -> None:
    """Write every file to a temporary file beside it, then rename them all (no half-written file)."""
    tmps = []
    try:
        for path, data in files:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
            tmps.append(tmp)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        for (path, _), tmp in zip(files, tmps):
            os.replace(tmp, path)
    finally:
        for tmp in tmps:
            if os.path.exists(tmp):
                os.remove(tmp)


def save(df: pd.DataFrame, out: str | Path, figure: str, scale_name: str, scale: Scale,
         seconds: float, engine: str) -> tuple[Path, Path]:
    """Write ``out.csv`` (tidy, one row per run) and ``out.json`` (configuration, versions, the CSV's
    SHA-256), both through temporary files renamed at the end, so a killed run leaves the old pair."""
    import hashlib

    csv, meta = out_paths(out)
    text = df.drop(columns=[c for c in ("loss_curve", "curve_steps") if c in df]).to_csv(index=False).encode()
    info = {"figure": figure, "scale": scale_name, "config": _jsonable(asdict(scale)), "rows": len(df),
            "seconds": round(seconds, 1), "engine": engine, "versions": versions(),
            "csv": csv.name, "csv_sha256": hashlib.sha256(text).hexdigest(),
            "command": "python -m kaol.experiments " + " ".join(sys.argv[1:])}
    _atomic_pair([(csv, text), (meta, json.dumps(info, indent=1, default=str).encode())])
    return csv, meta


def compute(figure: str, scale: Scale, **engine) -> pd.DataFrame:
    """The table of one figure (for ``bound``: both grids, with the bound and the errors)."""
    checks.choice("figure", figure, FIGURES)
    checks.of_type("scale", scale, Scale)
    if figure == "fig2a":
        return fig2a(scale, **engine)[0]
    if figure == "fig2b":
        return fig2b(scale, **engine)[0]
    if figure == "bound":
        return with_bound(sweep(scale, pairs_2a(scale) + pairs_2b(scale), **engine)[0])
    if figure == "rank1":
        return rank1(scale, **engine)[0]
    if figure == "table3":
        return table3(scale, **engine)
    raise ValueError(f"figure = {figure!r} is not one of {FIGURES}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kaol.experiments", description=__doc__.split("\n")[0])
    p.add_argument("figure", choices=FIGURES)
    p.add_argument("--scale", choices=tuple(SCALES), default="book")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default: the scale's)")
    p.add_argument("--out", default=None, help="output path without suffix (default results/FIGURE_SCALE)")
    p.add_argument("--engine", choices=ENGINES, default="local")
    p.add_argument("--address", default=None, help="Dask scheduler or Ray cluster address")
    p.add_argument("--workers", type=int, default=None, help="local processes (default: all cores)")
    a = p.parse_args(argv)
    if a.seeds is not None and a.seeds < 1:
        p.error(f"--seeds {a.seeds}: the number of seeds must be an int >= 1")
    if a.workers is not None and a.workers < 1:
        p.error(f"--workers {a.workers}: the number of local processes must be an int >= 1")
    if a.address is not None and a.engine == "local":
        p.error(f"--address {a.address!r} is ignored by --engine local: use --engine dask or ray")
    try:
        out_paths(a.out or f"results/{a.figure}_{a.scale}")
    except ValueError as err:
        p.error(f"--out: {err}")
    scale = SCALES[a.scale].with_seeds(a.seeds)
    if a.seeds is not None and a.figure == "table3":
        scale = replace(scale, table3_seeds=tuple(range(a.seeds)))
    start = time.perf_counter()
    df = compute(a.figure, scale, engine=a.engine, address=a.address, workers=a.workers)
    csv, meta = save(df, a.out or f"results/{a.figure}_{a.scale}", a.figure, a.scale, scale,
                     time.perf_counter() - start, a.engine)
    print(f"wrote {csv} ({len(df)} rows) and {meta} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
