"""App. A, Table 3: the four architectures (``kaol.model.ARCHS``) pre-trained on the three-token
data and on the data with the context token, then fine-tuned, beside the paper's numbers.
How each is trained (``Arch``) is part of a ``kaol.scales.Scale``; the runs go through
``kaol.parallel.run_all`` and are cached by ``kaol.cache``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from . import checks
from .cache import memo
from .data import DataConfig, entropy, make_data
from .model import ModelConfig
from .parallel import one_thread, run_all
from .scales import Arch, Scale
from .train import FTConfig, finetune, pretrain

# App. A, Table 3 of the paper: final training loss (entropy H = log(5)/2 in brackets there) and OOD accuracy.
PAPER_TABLE3 = pd.DataFrame({
    "arch": ["standard", "uniform_mlp", "attention_only", "simplified"],
    "paper loss": [0.8064, 0.8068, 5.5875, 0.8200],
    "paper OOD": [1.00, 1.00, np.nan, 0.99],
}).set_index("arch")
PAPER_H = 0.8047


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
    with one_thread():
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
