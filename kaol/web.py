"""Exports for the live figures of the HTML book (``web/``): the browser trains the model in
JavaScript (``web/kaol.js``) from what this module writes, and the fixtures hold it equal to kaol.

    python -m kaol.web fixtures     # tests/js/fixtures.json: a small run of every JS routine, float64
    python -m kaol.web checkpoint   # web/data/: the book-scale pre-trained model (chapter 4) and the
                                    # browser-scale data and initialisations (chapters 3 and 6)

The JavaScript never draws random numbers: the data (each fact's phrase set, Sec. 3, and the
permutation of the frequent facts whose first ``N~_f`` are fine-tuned on, as
``kaol.data.make_data`` draws it) and the initial parameters come from here. ``checkpoint``
pre-trains through ``kaol.sweep.pretrained`` (cached), so re-running it after a change of
kaol's numerics re-exports the model that the chapters use. Every file is written to a
temporary file and renamed.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import fast, sweep
from .data import DataConfig, KnowledgeData, make_data
from .model import ModelConfig, init_params
from .train import FTConfig, Schedule, finetune, pretrain

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "js" / "fixtures.json"
WEB_DATA = ROOT / "web" / "data"

FIX_DATA = DataConfig(N_f=8, N_r=4, R=5, K=3, N_ft=4)
FIX_MODEL = ModelConfig(m=4, dtype=torch.float64)
FIX_SCHEDULE = Schedule(eta=(2.0, 20.0, 10.0), T1=5, T2=12, T=20)   # all three stages in 20 steps
FIX_FT = FTConfig(eta=10.0, steps=20)

BOOK = DataConfig()                      # chapter 4: the book-scale model of chapters 3-4
BOOK_FT = FTConfig()                     # eta_FT = 30, 200 steps
SMALL = DataConfig(N_f=30, N_r=15, R=8, K=3, N_ft=15)          # = kaol.widgets.SMALL (chapter 3)
SMALL_SCHEDULE = Schedule(eta=(2.0, 20.0, 10.0), T1=5, T2=200, T=400)   # = kaol.widgets.SMALL_SCHEDULE
CELLS = ((1, 20), (2, 20), (4, 20), (4, 10), (4, 40))     # (K, R) of chapter 6's book grids
CELL_N_FT = (10, 25, 50, 80)                              # N~_f of chapter 6's book grid


def permutation(cfg: DataConfig) -> list[int]:
    """The order in which ``make_data`` puts the frequent facts into the fine-tuning set: its
    first ``N~_f`` entries are the fine-tuned facts for every ``N~_f`` (read off make_data itself)."""
    perm, prev = [], set()
    for n in range(1, cfg.N_f + 1):
        ft = set(make_data(cfg.with_(N_ft=n)).ft.tolist())
        new = ft - prev
        if len(new) != 1 or not prev <= ft:
            raise RuntimeError("make_data's fine-tuning sets are not nested: the split rule changed")
        perm.append(new.pop())
        prev = ft
    return perm


def data_json(d: KnowledgeData) -> dict:
    """One draw of the Sec. 3 data as ``web/kaol.js`` ``makeData`` reads it."""
    c = d.cfg
    return {"N_f": c.N_f, "N_r": c.N_r, "R": c.R, "K": c.K, "N_ft": c.N_ft, "rho_c": c.rho_c,
            "context": c.context, "rare_weight": c.rare_weight, "seed": c.seed,
            "phrases": [[int(k) for k in p] for p in d.phrases], "perm": permutation(c)}


def flat(t: torch.Tensor) -> list[float]:
    return t.detach().double().reshape(-1).tolist()


def fixtures() -> dict:
    """A small float64 run of everything ``web/kaol.js`` does: 20 pre-training steps of the
    three-stage schedule (losses, attention masses, parameters after), then 20 fine-tuning
    steps from there, full and rank-1 (losses, OOD accuracies, the V rows after)."""
    d, model = make_data(FIX_DATA), FIX_MODEL
    p0 = init_params(model, d.vocab.size, 1, 0)
    p, h = pretrain(d, model, FIX_SCHEDULE, params={k: v.clone() for k, v in p0.items()}, log_every=1)
    rows = [d.vocab.s(int(i)) for i in d.ft] + [d.vocab.q]
    ft = {}
    for name, cfg in (("full", FIX_FT), ("rank1", FTConfig(FIX_FT.eta, FIX_FT.steps, rank1=True))):
        after, fh = finetune(p, d, model, cfg)
        ft[name] = {"eta": cfg.eta, "steps": cfg.steps, "rank1": cfg.rank1, "loss": fh.loss[:, 0].tolist(),
                    "acc_freq": fh.acc_freq[:, 0].tolist(), "acc_rare": fh.acc_rare[:, 0].tolist(),
                    "rows": rows, "V_rows": flat(after["V"][0, rows])}
    s = FIX_SCHEDULE
    return {"about": "written by `python -m kaol.web fixtures`; checked by tests/js and tests/test_web.py",
            "data": data_json(d), "model": {"m": model.m, "lam": model.lam, "T": d.vocab.size},
            "init": {"W": flat(p0["W"][0]), "V": flat(p0["V"][0])},
            "pretrain": {"schedule": {"eta": list(s.eta), "T1": s.T1, "T2": s.T2, "T": s.T},
                         "loss": np.asarray(h.loss)[:, 0].tolist(), "attn": np.asarray(h.attn)[:, 0].tolist(),
                         "W": flat(p["W"][0]), "V": flat(p["V"][0])},
            "finetune": ft}


def _qa_attention(params: dict[str, torch.Tensor], d: KnowledgeData) -> np.ndarray:
    """(S_s, S_q) of the input (s_i, q) of every fact, (N, 2), from the fixed W."""
    qa = d.qa(np.arange(d.cfg.N))
    batch = fast.Batch.build(qa, d.vocab.size, d.vocab.rho, torch.float64)
    return fast.attention(params["W"][0].double(), batch).numpy()


def _curves(params: dict[str, torch.Tensor], d: KnowledgeData, model: ModelConfig, cfg: FTConfig) -> dict:
    _, h = finetune(params, d, model, cfg)
    return {"acc_freq": h.acc_freq[:, 0].tolist(), "acc_rare": h.acc_rare[:, 0].tolist(), "loss": h.loss[:, 0].tolist()}


def book_checkpoint() -> tuple[dict, bytes]:
    """Chapter 4: what fine-tuning the book-scale model needs. The V rows of the subjects and of
    q as float16 (the .bin), the attention of the (s_i, q) inputs, the data, and kaol's curves of
    the default run (N~_f = 50, eta_FT = 30, 200 steps): on the model as trained (float32) and on
    the shipped float16 rows in float64, which the browser's run reproduces exactly."""
    model = ModelConfig()
    params, pt = sweep.pretrained(BOOK, [0], model)
    d, v = make_data(BOOK), make_data(BOOK).vocab
    rows = [v.s(i) for i in range(BOOK.N)] + [v.q]
    half = params["V"][0, rows].to(torch.float16)
    shipped = {"W": params["W"].double(), "V": params["V"].double()}
    shipped["V"][0, rows] = half.double()
    f64 = model.with_(dtype=torch.float64)
    ref = {}
    for name, cfg in (("full", BOOK_FT), ("rank1", FTConfig(BOOK_FT.eta, BOOK_FT.steps, rank1=True))):
        ref[name] = {"trained_float32": _curves(params, d, model, cfg), "shipped_float64": _curves(shipped, d, f64, cfg),
                     "eta": cfg.eta, "steps": cfg.steps}
    meta = {"about": "written by `python -m kaol.web checkpoint`: kaol.sweep.pretrained(DataConfig(), [0])",
            "data": data_json(d), "model": {"m": model.m, "lam": model.lam, "T": v.size},
            "pretrain_loss": float(pt.loss[-1][0]), "V_rows": rows, "V_dtype": "float16",
            "V_shape": [len(rows), model.m, v.size], "qaS": _qa_attention(params, d).reshape(-1).tolist(),
            "reference": ref}
    return meta, half.numpy().astype("<f2").tobytes()


def browser_run(cfg: DataConfig, schedule: Schedule, dtype: str, seed: int = 0) -> tuple[dict, bytes]:
    """Data and initial parameters (W then V, ``dtype``) of one browser-scale pre-training run."""
    model = ModelConfig()
    d = make_data(cfg.with_(seed=seed))
    p0 = init_params(model, d.vocab.size, 1, seed)
    meta = {"data": data_json(d), "model": {"m": model.m, "lam": model.lam, "T": d.vocab.size},
            "init_dtype": dtype, "schedule": {"eta": list(schedule.eta), "T1": schedule.T1, "T2": schedule.T2, "T": schedule.T}}
    raw = np.concatenate([p0["W"][0].reshape(-1).numpy(), p0["V"][0].reshape(-1).numpy()])
    return meta, raw.astype("<f4" if dtype == "float32" else "<f2").tobytes()


def small_run() -> tuple[dict, bytes]:
    """Chapter 3: the widgets' small data set, its initialisation (float32, kaol's exactly) and
    kaol's loss and attention curves of the default run (as chapter 3 caches it)."""
    meta, raw = browser_run(SMALL, SMALL_SCHEDULE, "float32")
    _, h = sweep.pretrained(SMALL, [0], ModelConfig(), SMALL_SCHEDULE, log_every=5)
    meta["reference"] = {"steps": h.steps, "loss": np.asarray(h.loss)[:, 0].tolist(), "attn": np.asarray(h.attn)[:, 0].tolist()}
    return meta, raw


def cells() -> tuple[dict, dict[str, bytes]]:
    """Chapter 6: the stored book-scale accuracy of each (K, N~_f, R) cell (mean over seeds of
    results/bound_book.csv) and, per (K, R), browser-scale data and a float16 initialisation."""
    df = pd.read_csv(ROOT / "results" / "bound_book.csv")
    book = df.groupby(["K", "N_ft", "R"])[["best", "best_freq", "best_rare"]].agg(["mean", "std", "count"])
    stored = [{"K": int(k), "N_ft": int(n), "R": int(r), **{f"{c}_{s}": float(book.loc[(k, n, r), (c, s)])
              for c in ("best", "best_freq", "best_rare") for s in ("mean", "std", "count")}} for k, n, r in book.index]
    files, runs = {}, []
    for K, R in CELLS:
        meta, raw = browser_run(SMALL.with_(K=K, R=R), SMALL_SCHEDULE, "float16")
        name = f"cell_K{K}_R{R}"
        files[name + ".bin"] = raw
        runs.append({"K": K, "R": R, "file": name, **meta})
    return {"about": "written by `python -m kaol.web checkpoint`", "book_scale": {"N_f": BOOK.N_f, "N_r": BOOK.N_r, "seeds": 5,
            "ft": {"eta": 30.0, "steps": 200}, "cells": stored}, "N_ft": list(CELL_N_FT), "runs": runs}, files


def write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (a temporary file in the same folder, renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def to_json(obj: dict) -> bytes:
    return (json.dumps(obj, separators=(",", ":")) + "\n").encode()


def main(argv: list[str]) -> int:
    what = argv[0] if argv else ""
    if what == "fixtures":
        write(FIXTURES, to_json(fixtures()))
    elif what == "checkpoint":
        meta, raw = book_checkpoint()
        write(WEB_DATA / "finetune.bin", raw)
        write(WEB_DATA / "finetune.json", to_json(meta))
        meta, raw = small_run()
        write(WEB_DATA / "pretrain.bin", raw)
        write(WEB_DATA / "pretrain.json", to_json(meta))
        meta, files = cells()
        for name, raw in files.items():
            write(WEB_DATA / name, raw)
        write(WEB_DATA / "cell.json", to_json(meta))
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
