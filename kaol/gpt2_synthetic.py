"""GPT-2 on the synthetic data of Sec. 3 (paper Sec. 7, Fig. 2c/2d, App. J.2).

A ``GPT2LMHeadModel`` without positional encoding (``wpe`` zeroed and frozen, ``kaol.gpt2``),
one GPT-2 token per kaol token, pre-trained from scratch on the sentences ``c s r a`` of
``kaol.data``, then fine-tuned on the Q&A pairs ``(s, q) -> a``; OOD accuracy on unseen frequent
and rare facts at every fine-tuning step. Both stages use the loop of ``kaol.lmtrain``; results
are cached with ``kaol.cache``.

The paper-size runs of chapter 7 come from the command line::

    python -m kaol.gpt2_synthetic --size paper --out results/gpt2_synthetic_paper.json
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import checks
from .cache import memo
from .data import DataConfig, KnowledgeData, make_data
from .gpt2 import SIZES, GPT2Size, build_gpt2
from .lmtrain import diverged, setup_torch, train


@dataclass(frozen=True)
class SynthConfig:
    """Training of the synthetic GPT-2 (App. J.2: AdamW pre-training, Adam fine-tuning, 2000
    fine-tuning steps, rare samples weighted by K). Full-batch steps; the rates and step
    counts are ours (the appendix's values were lost in the text we have)."""

    size: GPT2Size = GPT2Size()
    pt_steps: int = 600
    pt_lr: float = 3e-3
    pt_wd: float = 0.01
    ft_steps: int = 150
    ft_lr: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        """Steps ints >= 1, rates finite > 0, weight decay finite >= 0, seed a non-negative int."""
        checks.of_type("size", self.size, GPT2Size)
        checks.integer("pt_steps", self.pt_steps, lo=1)
        checks.integer("ft_steps", self.ft_steps, lo=1)
        checks.positive("pt_lr", self.pt_lr)
        checks.positive("ft_lr", self.ft_lr)
        checks.real("pt_wd", self.pt_wd, lo=0)
        checks.seed("seed", self.seed)


def synthetic_sequences(data: KnowledgeData) -> tuple[torch.Tensor, torch.Tensor]:
    """Pre-training sentences ``c s_i r_k a_i`` (n, 4) and their sample weights (1 for a
    frequent fact, ``cfg.w_rare`` = K for a rare one, App. J)."""
    v, cfg = data.vocab, data.cfg
    seqs, w = [], []
    for i, ks in enumerate(data.phrases):
        for k in ks:
            seqs.append(([v.c] if v.context else []) + [v.s(i), v.r(int(k)), v.a(i)])
            w.append(1.0 if i < cfg.N_f else cfg.w_rare)
    return torch.tensor(seqs), torch.tensor(w)


def synthetic_pt_loss(model, seqs: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Weighted next-token loss on the r and a positions only (Sec. 3: predicting the subject
    is omitted): targets ``seqs[:, -2:]`` from the prefixes ending one token earlier."""
    logits = model(seqs[:, :-1]).logits[:, -2:]                        # (n, 2, V)
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), seqs[:, -2:].reshape(-1),
                         reduction="none").view(-1, 2).sum(1)
    return (w * ce).sum() / (2 * w.sum())


def _qa(data: KnowledgeData, facts: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    v = data.vocab
    x = torch.tensor([[v.s(int(i)), v.q] for i in facts], dtype=torch.long).view(-1, 2)
    y = torch.tensor([v.a(int(i)) for i in facts], dtype=torch.long)
    return x, y


@dataclass
class SynthResult:
    """One synthetic GPT-2 run: pre-training loss curve, and OOD accuracy (unseen frequent,
    rare) at fine-tuning steps ``0..ft_steps`` (step 0 is before fine-tuning)."""

    pt_loss: np.ndarray
    ft_loss: np.ndarray
    acc_freq: np.ndarray
    acc_rare: np.ndarray
    pt_answer_acc: float     # argmax accuracy of (c,s,r)->a on the pre-training sentences

    def best(self, which: str = "acc_freq") -> float:
        """Best accuracy over fine-tuning steps >= 1."""
        return float(getattr(self, which)[1:].max())

    def last(self, which: str = "acc_freq") -> float:
        return float(getattr(self, which)[-1])


def pretrain_synthetic(data: KnowledgeData, cfg: SynthConfig = SynthConfig(),
                       use_cache: bool = True) -> tuple[dict[str, torch.Tensor], np.ndarray, float]:
    """Pre-train a no-positional-encoding GPT-2 on the sentences of ``data`` with full-batch
    AdamW (Sec. 3, App. J.2).

    Returns the state dict, the loss curve and the answer accuracy on the sentences. The
    pre-training data do not depend on ``N_ft``, so runs differing only in ``N_ft`` share it.
    """
    d = data.cfg
    key = ("pt", d.with_(N_ft=0), cfg.size, cfg.pt_steps, cfg.pt_lr, cfg.pt_wd, cfg.seed)

    def run():
        seqs, w = synthetic_sequences(data)
        model = build_gpt2(data.vocab.size + 1, cfg.size, n_positions=8, seed=cfg.seed,
                           pad_id=data.vocab.size)
        losses = train(model, lambda sw: synthetic_pt_loss(model, *sw), (seqs, w), cfg.pt_steps, cfg.pt_lr,
                       cfg.pt_wd, what="GPT-2 pre-training")
        with torch.no_grad():
            pred = model(seqs[:, :-1]).logits[:, -1].argmax(-1)
        acc = float((pred == seqs[:, -1]).double().mean())
        return {k: t.clone() for k, t in model.state_dict().items()}, np.array(losses), acc

    return memo("synth-pt", key, run, enabled=use_cache)


def train_synthetic(data: KnowledgeData, cfg: SynthConfig = SynthConfig(),
                    use_cache: bool = True) -> SynthResult:
    """Pre-train (or load) and fine-tune on ``(s_i, q) -> a_i`` of the ``N_ft`` facts with
    full-batch Adam, all parameters but the frozen ``wpe``; OOD accuracy at every step
    (Fig. 2c/2d, App. J.2)."""
    state, pt_loss, pt_acc = pretrain_synthetic(data, cfg, use_cache)
    key = ("ft", data.cfg, cfg)

    def run():
        model = build_gpt2(data.vocab.size + 1, cfg.size, n_positions=8, seed=cfg.seed,
                           pad_id=data.vocab.size)
        model.load_state_dict(state)
        xy = _qa(data, data.ft)
        xe, ye = _qa(data, np.concatenate([data.unseen_freq, data.rare]))      # unseen frequent, then rare
        nf = len(data.unseen_freq)
        af, ar = [], []

        def ood(step: int = 0) -> None:
            with torch.no_grad():
                hit = (model(xe).logits[:, -1].argmax(-1) == ye).double()
            af.append(float(hit[:nf].mean()) if nf else float("nan"))
            ar.append(float(hit[nf:].mean()) if len(hit) > nf else float("nan"))

        def qa_loss(xy: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            return F.cross_entropy(model(xy[0]).logits[:, -1], xy[1])

        ood()
        losses = train(model, qa_loss, xy, cfg.ft_steps, cfg.ft_lr, what="GPT-2 fine-tuning", after_epoch=ood)
        last = qa_loss(xy).item()                  # the loss after the last step
        diverged("GPT-2 fine-tuning", last, cfg.ft_steps, cfg.ft_lr)
        return np.array(losses + [last]), np.array(af), np.array(ar)

    ft_loss, af, ar = memo("synth-ft", key, run, enabled=use_cache)
    return SynthResult(pt_loss, ft_loss, af, ar, pt_acc)


def synthetic_grid(base: DataConfig, cfg: SynthConfig, Ks: Sequence[int], N_fts: Sequence[int],
                   Rs: Sequence[int] | None = None, seeds: Sequence[int] = (0,),
                   use_cache: bool = True) -> list[dict[str, float]]:
    """Best and last OOD accuracy of ``train_synthetic`` over K x N_ft (x R) x seeds, one row
    per run (seed drives both the data draw and the initialisation; Fig. 2c/2d). ``Ks``,
    ``N_fts``, ``Rs``: non-empty lists of ints, every cell a valid ``DataConfig`` (checked before
    any run); ``seeds`` distinct non-negative ints."""
    checks.of_type("base", base, DataConfig)
    checks.of_type("cfg", cfg, SynthConfig)
    Ks, N_fts = checks.ints("Ks", Ks, lo=1), checks.ints("N_fts", N_fts, lo=1)
    Rs = None if Rs is None else checks.ints("Rs", Rs, lo=1)
    seeds = checks.seeds("seeds", seeds, distinct=True)
    for R in (Rs or [base.R]):
        for K in Ks:
            for n in N_fts:
                base.with_(R=R, K=K, N_ft=n)
    rows = []
    for R in (Rs or [base.R]):
        for K in Ks:
            for s in seeds:
                for n in N_fts:
                    data = make_data(base.with_(R=R, K=K, N_ft=n, seed=s))
                    res = train_synthetic(data, SynthConfig(**{**asdict(cfg), "size": cfg.size, "seed": s}),
                                          use_cache)
                    rows.append({"R": R, "K": K, "N_ft": n, "seed": s,
                                 "pt_answer_acc": res.pt_answer_acc, "pt_loss": float(res.pt_loss[-1]),
                                 "best_freq": res.best("acc_freq"), "best_rare": res.best("acc_rare"),
                                 "last_freq": res.last("acc_freq"), "last_rare": res.last("acc_rare"),
                                 "step0_freq": float(res.acc_freq[0])})
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m kaol.gpt2_synthetic --size paper --out results/gpt2_synthetic_paper.json``
    runs the chapter-7 grid at the given GPT-2 size and writes one JSON row per run."""
    ap = argparse.ArgumentParser(prog="python -m kaol.gpt2_synthetic",
                                 description="GPT-2 on the synthetic data of Sec. 3 (Fig. 2c/2d)")
    ap.add_argument("--size", default="small", choices=sorted(SIZES))
    ap.add_argument("--K", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--N-ft", type=int, nargs="+", default=[10, 25, 50, 90])
    ap.add_argument("--R", type=int, nargs="+", default=[20])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--pt-steps", type=int, default=SynthConfig.pt_steps)
    ap.add_argument("--pt-lr", type=float, default=SynthConfig.pt_lr)
    ap.add_argument("--ft-steps", type=int, default=SynthConfig.ft_steps)
    ap.add_argument("--ft-lr", type=float, default=SynthConfig.ft_lr)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    try:                                         # every setting checked before any training
        checks.integer("--threads", a.threads, lo=1)
        cfg = SynthConfig(SIZES[a.size], a.pt_steps, a.pt_lr, SynthConfig.pt_wd, a.ft_steps, a.ft_lr)
        checks.seeds("--seeds", a.seeds, distinct=True)
        checks.ints("--K", a.K, lo=1)
        checks.ints("--N-ft", a.N_ft, lo=1)
        checks.ints("--R", a.R, lo=1)
        for R in a.R:
            for K in a.K:
                for n in a.N_ft:
                    DataConfig().with_(R=R, K=K, N_ft=n)
        if a.out.is_dir() or not str(a.out.name):
            raise ValueError(f"--out {str(a.out)!r} must name a file")
        a.out.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(a.out.parent, os.W_OK):
            raise ValueError(f"--out {str(a.out)!r}: the folder {a.out.parent} is not writable")
    except (TypeError, ValueError) as err:
        ap.error(str(err))
    setup_torch(a.threads)
    t0 = time.time()
    rows = synthetic_grid(DataConfig(), cfg, a.K, a.N_ft, a.R, a.seeds)
    text = json.dumps({"size": asdict(cfg.size), "config": asdict(cfg), "rows": rows,
                       "seconds": round(time.time() - t0)}, indent=1)
    fd, tmp = tempfile.mkstemp(dir=a.out.parent, prefix=f".{a.out.name}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, a.out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    print(f"wrote {len(rows)} runs to {a.out}")


if __name__ == "__main__":
    main()
