"""Grids of pre-training + fine-tuning runs (Sec. 7, Fig. 2a/2b/3a/3b), cached.

Pre-training does not depend on the fine-tuning size ``N_ft`` (the fine-tuning split
is drawn after the phrasings, so data differing only in ``N_ft`` share their
pre-training set): each ``(K, R, seed)`` is pre-trained once, and the fine-tuning runs
of all ``N_ft`` values start from it.
"""
from __future__ import annotations

from dataclasses import replace
from itertools import product

import numpy as np
import pandas as pd
import torch

from . import checks
from .cache import memo
from .data import DataConfig, KnowledgeData, entropy, make_data
from .metrics import rank1_share
from .model import ModelConfig
from .train import FTConfig, FTHistory, PTHistory, Schedule, finetune, pretrain


def pretrained(cfg: DataConfig, seeds: list[int], model: ModelConfig = ModelConfig(),
               schedule: Schedule = Schedule(), log_every: int = 10
               ) -> tuple[dict[str, torch.Tensor], PTHistory]:
    """Pre-train one run per seed (data and initialisation both seeded by it), cached on disk.

    ``seeds``: a non-empty list of distinct non-negative ints; ``log_every`` an int >= 1."""
    _check_configs(cfg, model, schedule)
    seeds = checks.seeds("seeds", seeds, distinct=True)
    log_every = checks.integer("log_every", log_every, lo=1)

    def compute() -> tuple[dict[str, torch.Tensor], PTHistory]:
        data = [make_data(cfg.with_(seed=s)) for s in seeds]
        return pretrain(data, model, schedule, seed=list(seeds), log_every=log_every)
    return memo("pretrain", (replace(cfg, N_ft=0, seed=0), tuple(seeds), model, schedule, log_every), compute)


def finetuned(cfg: DataConfig, seeds: list[int], N_ft: list[int], model: ModelConfig = ModelConfig(),
              ft: FTConfig = FTConfig(), schedule: Schedule = Schedule()
              ) -> tuple[list[KnowledgeData], dict[str, torch.Tensor], FTHistory]:
    """Fine-tune the pre-trained model of every seed (``pretrained``) on every ``N~_f`` in
    ``N_ft`` (Sec. 4): the runs in the order ``product(seeds, N_ft)``, cached on disk.

    Returns the data set of each run, the fine-tuned parameters and the history, with the
    predictions at every step. ``N_ft``: a non-empty list of ints, each valid for ``cfg``."""
    _check_configs(cfg, model, schedule)
    checks.of_type("ft", ft, FTConfig)
    seeds = checks.seeds("seeds", seeds, distinct=True)
    Ns = checks.ints("N_ft", N_ft, lo=1)
    runs = list(product(range(len(seeds)), Ns))
    data = _data(cfg, seeds, runs)

    def compute() -> tuple[dict[str, torch.Tensor], FTHistory]:
        return _finetune(pretrained(cfg, seeds, model, schedule)[0], data, runs, model, ft)
    params, hist = memo("finetuned", (replace(cfg, N_ft=0, seed=0), tuple(seeds), tuple(Ns), model, schedule, ft),
                        compute)
    return data, params, hist


def grid(base: DataConfig = DataConfig(), K: list[int] | None = None, N_ft: list[int] | None = None,
         R: list[int] | None = None, seeds: list[int] = [0], model: ModelConfig = ModelConfig(),
         schedule: Schedule = Schedule(), ft: FTConfig = FTConfig()
         ) -> tuple[pd.DataFrame, dict[tuple[int, int, int, int], FTHistory]]:
    """OOD accuracy over ``K x N_ft x R x seeds`` (unset axes keep ``base``'s value).

    Returns a tidy table, one row per run, and the fine-tuning curves keyed by
    ``(K, N_ft, R, seed)`` (predictions dropped to keep them small).

    ``K``, ``N_ft``, ``R``: ``None`` or non-empty lists of ints; every combination must be a valid
    ``DataConfig`` (``K <= R``, ``1 <= N_ft <= N_f``), checked before anything is computed.
    ``seeds``: a non-empty list of distinct non-negative ints.
    """
    _check_configs(base, model, schedule)
    checks.of_type("ft", ft, FTConfig)
    Ks = [base.K] if K is None else checks.ints("K", K, lo=1)
    Ns = [base.N_ft] if N_ft is None else checks.ints("N_ft", N_ft, lo=1)
    Rs = [base.R] if R is None else checks.ints("R", R, lo=1)
    seeds = checks.seeds("seeds", seeds, distinct=True)
    for k, n, r in product(Ks, Ns, Rs):
        base.with_(K=k, N_ft=n, R=r)             # every cell valid before any computation
    if 0 in Ns:
        raise ValueError("N_ft = 0 leaves nothing to fine-tune on: use N_ft >= 1")
    rows, curves = [], {}
    for k, r in product(Ks, Rs):
        cfg = base.with_(K=k, R=r)
        params, pt = pretrained(cfg, seeds, model, schedule)
        runs = list(product(range(len(seeds)), Ns))

        def compute() -> FTHistory:
            _, h = _finetune(params, _data(cfg, seeds, runs), runs, model, ft)
            h.pred = np.zeros((0,) + h.pred.shape[1:], dtype=h.pred.dtype)   # kept small
            return h
        hist = memo("finetune", (cfg.with_(seed=0), tuple(seeds), tuple(Ns), model, schedule, ft), compute)
        for b, (si, n) in enumerate(runs):
            rows.append(_row(cfg.with_(N_ft=n, seed=seeds[si]), hist, b, pt.loss[-1][si], ft))
            curves[(k, n, r, seeds[si])] = _slice(hist, b)
    return pd.DataFrame(rows), curves


def _check_configs(cfg: DataConfig, model: ModelConfig, schedule: Schedule) -> None:
    checks.of_type("cfg", cfg, DataConfig)
    checks.of_type("model", model, ModelConfig)
    checks.of_type("schedule", schedule, Schedule)


def _data(cfg: DataConfig, seeds: list[int], runs: list[tuple[int, int]]) -> list[KnowledgeData]:
    """The data set of each run ``(seed index, N~_f)``."""
    return [make_data(cfg.with_(seed=seeds[si], N_ft=n)) for si, n in runs]


def _finetune(params: dict[str, torch.Tensor], data: list[KnowledgeData], runs: list[tuple[int, int]],
              model: ModelConfig, ft: FTConfig) -> tuple[dict[str, torch.Tensor], FTHistory]:
    """Run ``b`` fine-tuned on ``data[b]`` from the pre-trained model of its seed ``runs[b][0]``."""
    idx = torch.tensor([si for si, _ in runs])
    return finetune({k: p[idx] for k, p in params.items()}, data, model, ft)


def _slice(h: FTHistory, b: int) -> FTHistory:
    return FTHistory(h.loss[:, b:b + 1], h.acc_freq[:, b:b + 1], h.acc_rare[:, b:b + 1], h.pred[:, b:b + 1],
                     h.sv0[b:b + 1], h.align_q[b:b + 1], h.n_freq[b:b + 1], h.n_rare[b:b + 1])


def _row(cfg: DataConfig, h: FTHistory, b: int, pt_loss: float, ft: FTConfig) -> dict[str, object]:
    best = {w: h.best(w) for w in ("acc_freq", "acc_rare", "acc")}
    return {"K": cfg.K, "N_ft": cfg.N_ft, "R": cfg.R, "seed": cfg.seed, "N_f": cfg.N_f, "N_r": cfg.N_r,
            "ft": "rank1" if ft.rank1 else "full", "pt_loss": float(pt_loss), "H": entropy(cfg),
            "acc0_freq": h.acc_freq[0, b], "acc0_rare": h.acc_rare[0, b],
            "best_freq": best["acc_freq"][0][b], "best_rare": best["acc_rare"][0][b],
            "best": best["acc"][0][b], "best_step": int(best["acc"][1][b]),
            "last_freq": h.acc_freq[-1, b], "last_rare": h.acc_rare[-1, b], "last": h.acc[-1, b],
            "align_q": h.align_q[b], "rank1_share": rank1_share(h.sv0[b])}
