"""Pre-training with the three-stage schedule and fine-tuning (full and rank-1), Sec. 4 and App. H.

``pretrain`` and ``finetune`` take ``B`` runs, stacked along a leading axis of the
parameters, each with data of its own (same vocabulary size), and train them one after
the other: the core (``_pretrain_run``, ``_finetune_run``, ``kaol.fast``) sees one run at a
time, and many runs go faster over processes (``kaol.parallel``) than in one program. The
simplified model and uniform attention + MLP use the exact sparse gradients of ``kaol.fast``;
the two other architectures of Table 3 use autograd on ``kaol.model.forward``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from . import checks, fast, metrics
from .data import KIND_NAMES, KnowledgeData, Samples
from .model import ModelConfig, forward, init_params
from .predict import Predictions


@dataclass(frozen=True)
class Schedule:
    """Three-stage learning rate of Sec. 4: ``eta[0]`` for ``t < T1``, ``eta[1]`` for
    ``T1 <= t < T2``, ``eta[2]`` up to ``T`` steps. The defaults are ours (book/reconstruction.md)."""

    eta: tuple[float, float, float] = (20.0, 80.0, 30.0)
    T1: int = 5
    T2: int = 750
    T: int = 1500

    def __post_init__(self) -> None:
        """``eta``: three finite rates > 0; ``T1``, ``T2``, ``T``: ints with ``0 <= T1 <= T2 <= T``, ``T >= 1``."""
        if isinstance(self.eta, (str, bytes)) or not hasattr(self.eta, "__len__") or len(self.eta) != 3:
            raise ValueError(f"eta = {self.eta!r} must be three positive learning rates")
        object.__setattr__(self, "eta", tuple(checks.positive(f"eta[{i}]", e) for i, e in enumerate(self.eta)))
        for name in ("T1", "T2", "T"):
            object.__setattr__(self, name, checks.integer(name, getattr(self, name)))
        if not 0 <= self.T1 <= self.T2 <= self.T or self.T <= 0:
            raise ValueError(f"stage boundaries need 0 <= T1 <= T2 <= T and T > 0, got "
                             f"T1={self.T1}, T2={self.T2}, T={self.T}")

    @staticmethod
    def constant(eta: float, T: int) -> "Schedule":
        """One rate for all ``T`` steps (the ablation of Sec. 6)."""
        return Schedule((eta, eta, eta), 0, 0, T)

    def stage(self, t: int) -> int:
        return 1 if t < self.T1 else 2 if t < self.T2 else 3

    def rate(self, t: int) -> float:
        return self.eta[self.stage(t) - 1]


@dataclass(frozen=True)
class FTConfig:
    """Fine-tuning of Sec. 4: ``steps`` full-batch steps at rate ``eta`` on ``V`` only
    (Lemma 17 keeps ``W`` fixed); ``rank1`` applies the best rank-1 approximation of the
    gradient (App. H); ``train_W`` also updates ``W`` (a variant, not the paper's)."""

    eta: float = 30.0
    steps: int = 200
    rank1: bool = False
    train_W: bool = False

    def __post_init__(self) -> None:
        """``eta`` finite and > 0; ``steps`` an int >= 1; ``rank1``, ``train_W`` bools."""
        object.__setattr__(self, "eta", checks.real("eta", self.eta))
        object.__setattr__(self, "steps", checks.integer("steps", self.steps))
        if not self.eta > 0 or self.steps <= 0:
            raise ValueError(f"fine-tuning needs eta > 0 and steps > 0, got eta={self.eta}, steps={self.steps}")
        checks.boolean("rank1", self.rank1)
        checks.boolean("train_W", self.train_W)


@dataclass
class PTHistory:
    """Pre-training curves, logged at ``steps``: ``loss`` (S, B), ``loss_by_kind`` (S, B, 5),
    ``attn`` (S, B, 2, 3): attention mass on the c, s, r tokens of (c,s) rows and (c,s,r) rows."""

    steps: list[int] = field(default_factory=list)
    loss: list[np.ndarray] = field(default_factory=list)
    loss_by_kind: list[np.ndarray] = field(default_factory=list)
    attn: list[np.ndarray] = field(default_factory=list)
    features: list[np.ndarray] = field(default_factory=list)

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in self.__dict__.items()}

    @staticmethod
    def cat(runs: list["PTHistory"]) -> "PTHistory":
        """The histories of several runs (logged at the same steps) as one, runs in order."""
        out = PTHistory(list(runs[0].steps))
        for name in ("loss", "loss_by_kind", "attn", "features"):
            setattr(out, name, [np.concatenate(at) for at in zip(*(getattr(h, name) for h in runs))])
        return out

    def table(self, run: int = 0) -> pd.DataFrame:
        """The curves of ``run`` as one row per logged step (the data behind the chapters' figures)."""
        cols = {"step": self.steps, "loss": np.asarray(self.loss)[:, run]}
        for k, name in enumerate(KIND_NAMES):
            cols[f"loss {name}"] = np.asarray(self.loss_by_kind)[:, run, k]
        for row, inputs in enumerate(("(c,s)", "(c,s,r)")):
            for j, tok in enumerate("csr"):
                cols[f"attention on {tok}, {inputs} inputs"] = np.asarray(self.attn)[:, run, row, j]
        for j, name in enumerate(metrics.FEATURES if self.features else ()):
            cols[f"feature {name}"] = np.asarray(self.features)[:, run, j]
        return pd.DataFrame(cols).dropna(axis=1, how="all")


@dataclass
class FTHistory:
    """Fine-tuning curves, one entry per step ``0..steps`` (step 0 is before fine-tuning):
    ``loss`` on the Q&A set, OOD accuracy on unseen frequent (``acc_freq``) and rare
    (``acc_rare``) facts, each (S, B); the first gradient's singular values ``sv0`` (B, r)
    and the alignment of its top right singular vector with ``q`` (``align_q``, B)."""

    loss: np.ndarray
    acc_freq: np.ndarray
    acc_rare: np.ndarray
    pred: np.ndarray          # (S, B, n_unseen) argmax on the unseen rows: frequent then rare (-1 past a run's own)
    sv0: np.ndarray
    align_q: np.ndarray
    n_freq: np.ndarray        # (B,) unseen frequent facts of each run
    n_rare: np.ndarray        # (B,) rare facts of each run

    @property
    def acc(self) -> np.ndarray:
        """Accuracy on all unseen facts (frequent and rare together), (S, B)."""
        f = np.nan_to_num(self.acc_freq) * self.n_freq + np.nan_to_num(self.acc_rare) * self.n_rare
        return f / np.maximum(self.n_freq + self.n_rare, 1)

    def table(self) -> pd.DataFrame:
        """The curves of every run, one row per (run, step): loss and OOD accuracies."""
        S, B = self.loss.shape
        return pd.DataFrame({"run": np.repeat(np.arange(B), S), "step": np.tile(np.arange(S), B),
                             **{k: getattr(self, k).T.reshape(-1) for k in ("loss", "acc_freq", "acc_rare", "acc")}})

    def best(self, which: str = "acc") -> tuple[np.ndarray, np.ndarray]:
        """Best accuracy over steps >= 1 and the step where it is reached, per run."""
        a = getattr(self, which)[1:]
        return a.max(0), a.argmax(0) + 1

    @staticmethod
    def cat(runs: list["FTHistory"]) -> "FTHistory":
        """The histories of several runs (same number of steps) as one, runs in order; ``pred``
        padded with -1 and ``sv0`` with 0 (a zero singular value) to the longest run's."""
        def cat(name: str, axis: int, fill: float = 0.0) -> np.ndarray:
            return pad_cat([getattr(h, name) for h in runs], axis, fill)
        return FTHistory(cat("loss", 1), cat("acc_freq", 1), cat("acc_rare", 1), cat("pred", 1, -1), cat("sv0", 0),
                         cat("align_q", 0), cat("n_freq", 0), cat("n_rare", 0))


def pad_cat(parts: list[np.ndarray], axis: int, fill: float) -> np.ndarray:
    """Per-run arrays joined along ``axis`` (the run axis), each padded with ``fill`` on its last
    axis to the longest (runs of different sizes: rows, singular values)."""
    n = max(p.shape[-1] for p in parts)
    return np.concatenate([np.pad(p, [(0, 0)] * (p.ndim - 1) + [(0, n - p.shape[-1])], constant_values=fill)
                           for p in parts], axis)


def _runs(data: KnowledgeData | list[KnowledgeData], B: int | None) -> list[KnowledgeData]:
    runs = data if isinstance(data, list) else [data] * (B or 1)
    if not runs:
        raise ValueError("data = []: pass one KnowledgeData (make_data) or one per run")
    for i, d in enumerate(runs):
        checks.of_type(f"data[{i}]" if isinstance(data, list) else "data", d, KnowledgeData)
    if len({d.vocab.size for d in runs}) != 1:
        raise ValueError("runs trained together need one vocabulary size: batch them by (N_f, N_r, R, context)")
    return runs


DIVERGED = 100.0
"""A loss above ``DIVERGED`` times its initial value (about log vocab_size at initialisation) has diverged."""


def _check_finite(loss: float, t: int, what: str, rate: float, start: float, run: str) -> None:
    """Stop on a NaN/inf or diverging loss, naming the step, the run and the rate of the update that caused it."""
    if not loss <= DIVERGED * start:
        raise ValueError(f"{what} loss became {loss:.4g} at step {t}{run} with learning rate {rate}: "
                         f"the run diverged, lower that rate (e.g. to {rate / 10:g})")


NORM_LIMIT = 1e6
"""A run whose largest parameter exceeds ``NORM_LIMIT`` times (1 + its initial largest value) has diverged
(a huge rate can leave a finite, even zero, loss with exploded parameters)."""


def _check_norm(params: dict[str, torch.Tensor], start: dict[str, float], t: int, what: str, rate: float,
                run: str, rows: dict[str, torch.Tensor] | None = None) -> None:
    """Stop on non-finite or exploding parameters, naming the step, the run, the rate and a lower rate to try.
    ``rows`` names, per parameter, the only rows that have changed since ``start`` (the others, no
    larger than at the start, cannot trip the check: only those rows are read)."""
    for k, size in _sizes(params, rows).items():
        if not size <= NORM_LIMIT * (1 + start[k]):
            raise ValueError(f"{what}: parameter {k} reached max |{k}| = {size:.4g} at step {t}{run} "
                             f"with learning rate {rate}: the run diverged, lower that rate (e.g. to {rate / 10:g})")


def _sizes(params: dict[str, torch.Tensor], rows: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
    """``max |p|`` of one run's parameters, per parameter, or of their rows ``rows[name]`` where given
    (``fast.max_abs``: the rows are read in place)."""
    rows = rows or {}
    return {k: fast.max_abs(p, rows.get(k)) for k, p in params.items()}


def _one(params: dict[str, torch.Tensor], b: int) -> dict[str, torch.Tensor]:
    """Run ``b``'s parameters: views, so training them trains ``params``."""
    return {k: p[b] for k, p in params.items()}


def _label(b: int, B: int) -> str:
    """How errors name run ``b`` of ``B`` (nothing when there is one)."""
    return f" (run {b})" if B > 1 else ""


def _check_params(params: dict[str, torch.Tensor], runs: list[KnowledgeData]) -> None:
    """Parameters must have one run per data set and the data's vocabulary size."""
    p = next(iter(params.values()))
    if p.shape[0] != len(runs):
        raise ValueError(f"parameters hold {p.shape[0]} runs but {len(runs)} data sets were given: "
                         f"pass one data set per run (or one shared data set)")
    if p.shape[1] != runs[0].vocab.size:
        raise ValueError(f"parameters are for a vocabulary of {p.shape[1]} tokens but the data's "
                         f"vocabulary has {runs[0].vocab.size}: pre-train on this data first")


def pretrain(data: KnowledgeData | list[KnowledgeData], model: ModelConfig = ModelConfig(),
             schedule: Schedule = Schedule(), seed: int | list[int] = 0, B: int | None = None,
             log_every: int = 10, params: dict[str, torch.Tensor] | None = None
             ) -> tuple[dict[str, torch.Tensor], PTHistory]:
    """Full-batch gradient descent on the next-token loss with ``schedule`` (Sec. 4).

    ``data`` is one data set shared by ``B`` runs or one per run; ``seed`` seeds the
    initialisation (one per run, or the first of ``seed, seed+1, ...``).
    """
    log_every = checks.integer("log_every", log_every, lo=1)
    checks.of_type("model", model, ModelConfig)
    checks.of_type("schedule", schedule, Schedule)
    if B is not None:
        checks.integer("B", B, lo=1)
    runs = _runs(data, B)
    B = len(runs)
    params = init_params(model, runs[0].vocab.size, B, seed) if params is None else params
    _check_params(params, runs)
    hists = [_pretrain_run(_one(params, b), d, model, schedule, log_every, _label(b, B)) for b, d in enumerate(runs)]
    return params, PTHistory.cat(hists)


def _pretrain_run(params: dict[str, torch.Tensor], d: KnowledgeData, model: ModelConfig, schedule: Schedule,
                  log_every: int, run: str) -> PTHistory:
    """Pre-train one run's ``params`` in place on ``d`` (``pretrain``); its history has one run."""
    v = d.vocab
    batch = fast.Batch.build(d.pretrain, v.size, v.rho, model.dtype)
    hist = PTHistory()
    size0 = _sizes(params)
    out, S = None, _fixed_attention(model, params, batch, train_W=True)
    for t in range(schedule.T + 1):
        log = t % log_every == 0 or t == schedule.T
        out = _step(model, params, batch, grad=t < schedule.T, S=S, reuse=out,
                    eta=schedule.rate(t) if t < schedule.T and not log else None)   # V's step in the pass
        last = max(t - 1, 0)                     # the update that produced this loss
        what = f"pre-training (Stage {schedule.stage(last)})"
        if t == 0:
            start = float(out.loss)
        _check_finite(float(out.loss), t, what, schedule.rate(last), start, run)
        if log:
            _check_norm(params, size0, t, what, schedule.rate(last), run)
            hist.steps.append(t)
            hist.loss.append(out.loss.reshape(1).numpy().copy())
            hist.loss_by_kind.append(metrics.loss_by_kind(out.ce, batch)[None])
            hist.attn.append(metrics.attention_mass(out.S, batch, v)[None])
            if "V" in params:
                hist.features.append(metrics.features(params["V"], d)[None])
        if t < schedule.T:
            _descend(params, out, schedule.rate(t))
    return hist


@dataclass
class _Out:
    loss: torch.Tensor
    ce: torch.Tensor
    S: torch.Tensor
    logits: torch.Tensor
    pred: torch.Tensor                  # (n,) argmax of the logits
    grads: dict[str, torch.Tensor]
    rows: dict[str, torch.Tensor] = field(default_factory=dict)   # gradients given on these rows only
    work: fast.Pass | None = None       # the exact path's buffers, for the next step to reuse
    stepped: bool = False               # V has taken its step in the pass (``_step``'s ``eta``)


def _descend(params: dict[str, torch.Tensor], out: _Out, eta: float, rank1: bool = False) -> None:
    """One gradient step in place, ``p <- p - eta g`` (``g`` replaced by its best rank-1
    approximation for ``V`` when ``rank1``, App. H, written over ``g``); a gradient given on some rows only
    (``out.rows``) updates just those rows; ``V`` is skipped when it took its step in the pass
    (``out.stepped``)."""
    for k, g in out.grads.items():
        if k == "V" and out.stepped:
            continue
        fast.descend(params[k], metrics.rank1(g, out=g) if rank1 and k == "V" else g, eta, out.rows.get(k))


def _step(model: ModelConfig, params: dict[str, torch.Tensor], batch: fast.Batch,
          grad: bool = True, grad_W: bool = True, S: torch.Tensor | None = None,
          reuse: _Out | None = None, loss: bool = True, eta: float | None = None) -> _Out:
    """Loss and gradients of one full batch: exact sparse path (the simplified model, and
    uniform attention + MLP, whose fixed attention ``S`` the caller passes) or autograd. The
    exact path reuses the buffers of ``reuse``, the previous step's output on the same batch
    (``fast.run``), and with ``loss=False`` computes only the logits and their argmax. With
    ``eta``, the exact path also takes ``V``'s gradient step in the pass (``fast.run``;
    ``_descend`` then leaves ``V`` alone); autograd ignores it.

    Autograd runs on one torch thread (the caller's setting is restored): torch splits
    its reductions by thread count, so a different count would round differently."""
    if model.arch in ("simplified", "uniform_mlp"):
        if model.arch == "uniform_mlp":          # no W: a fixed, uniform attention
            S, grad_W = fast.uniform_attention(batch) if S is None else S, False
        o = fast.run(params.get("W"), params["V"], batch, model.lam, grad=grad, grad_W=grad_W, S=S,
                     reuse=None if reuse is None else reuse.work, loss=loss, eta=None if eta is None else float(eta))
        grads = {} if not grad else {"V": o.gV_rows, **({"W": o.gW} if grad_W else {})}
        return _Out(o.loss, o.ce, o.S, o.logits, o.pred, grads, {"V": o.rows} if grad else {}, o, o.stepped)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        leaves = {k: p.detach().requires_grad_(grad) for k, p in params.items()}
        with torch.set_grad_enabled(grad):
            logits, S = forward(model, leaves, batch.tokens, batch.mask, batch.rho)
            ce = -(batch.y_prob * torch.log_softmax(logits, -1).gather(1, batch.y_idx)).sum(1)
            loss = (batch.w * ce).sum()
        grads = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values())))) if grad else {}
    finally:
        torch.set_num_threads(threads)
    return _Out(loss.detach(), ce.detach(), S.detach(), logits.detach(), logits.detach().argmax(-1), grads)


def _fixed_attention(model: ModelConfig, params: dict[str, torch.Tensor], batch: fast.Batch,
                     train_W: bool) -> torch.Tensor | None:
    """The attention of every row of ``batch`` when it does not change during training: always
    for uniform attention + MLP, for the simplified model when ``W`` does not train (Lemma 17's
    fine-tuning); else None (computed at every step)."""
    if model.arch == "uniform_mlp":
        return fast.uniform_attention(batch)
    if model.arch == "simplified" and not train_W:
        return fast.attention(params["W"], batch)
    return None


def finetune(params: dict[str, torch.Tensor], data: KnowledgeData | list[KnowledgeData],
             model: ModelConfig = ModelConfig(), cfg: FTConfig = FTConfig()
             ) -> tuple[dict[str, torch.Tensor], FTHistory]:
    """Fine-tune on the Q&A pairs ``(s_i, q) -> a_i`` of the ``N_ft`` facts (Sec. 4, App. H).

    The simplified model updates ``V`` only (and ``W`` with ``cfg.train_W``); the other
    architectures of Table 3 update all their parameters.

    Returns new parameters (the inputs are left unchanged) and the history with the OOD
    accuracy on the unseen frequent and rare facts at every step.
    """
    checks.of_type("model", model, ModelConfig)
    checks.of_type("cfg", cfg, FTConfig)
    if not isinstance(params, dict) or not params or not all(isinstance(p, torch.Tensor) for p in params.values()):
        raise TypeError(f"params must be a non-empty dict of tensors (from pretrain), not {type(params).__name__}")
    B = next(iter(params.values())).shape[0]
    runs = _runs(data, B)
    _check_params(params, runs)
    if any(d.cfg.N_ft == 0 for d in runs):
        raise ValueError("N_ft = 0: there is nothing to fine-tune on; set N_ft >= 1")
    params = {k: p.clone() for k, p in params.items()}
    hists = [_finetune_run(_one(params, b), d, model, cfg, _label(b, B)) for b, d in enumerate(runs)]
    return params, FTHistory.cat(hists)


def _finetune_run(params: dict[str, torch.Tensor], d: KnowledgeData, model: ModelConfig, cfg: FTConfig,
                  run: str) -> FTHistory:
    """Fine-tune one run's ``params`` in place on ``d`` (``finetune``); its history has one run."""
    v = d.vocab
    size0 = _sizes(params)
    train = fast.Batch.build(d.qa_train, v.size, v.rho, model.dtype)
    test = fast.Batch.build(_cat(d.qa_unseen_freq, d.qa_rare), v.size, v.rho, model.dtype)
    n_f = len(d.qa_unseen_freq)                  # the test rows: unseen frequent facts, then rare ones
    answer = test.y_idx[:, 0].numpy()
    S_train = _fixed_attention(model, params, train, cfg.train_W)
    S_test = _fixed_attention(model, params, test, cfg.train_W)
    watch = None if S_test is None or model.arch not in ("simplified", "uniform_mlp") else \
        Predictions(test, S_test, model.lam, train.rows)       # W fixed: the test rows move with V[train.rows] only
    loss, acc_f, acc_r, preds = [], [], [], []
    sv0, align = np.full(1, np.nan), np.nan
    ev = out = None
    for t in range(cfg.steps + 1):
        if watch is None:
            ev = _step(model, params, test, grad=False, S=S_test, reuse=ev, loss=False)
            pred = ev.pred.numpy()           # a new array at every step
        else:
            pred = watch.pred(params["V"]).copy()
        hit = pred == answer
        acc_f.append(_mean(hit[:n_f]))
        acc_r.append(_mean(hit[n_f:]))
        preds.append(pred)
        fuse = t < cfg.steps and not cfg.rank1 and t % 10 != 0     # not where the norm check reads V before the step
        out = _step(model, params, train, grad=t < cfg.steps, grad_W=cfg.train_W, S=S_train, reuse=out,
                    eta=cfg.eta if fuse else None)
        if t == 0:
            start = float(out.loss)
        _check_finite(float(out.loss), t, "fine-tuning", cfg.eta, start, run)
        if t % 10 == 0 or t == cfg.steps:
            _check_norm(params, size0, t, "fine-tuning", cfg.eta, run, out.rows)
        loss.append(out.loss.numpy().copy())
        if t == cfg.steps:
            break
        if t == 0 and "V" in out.grads:
            gV, rows = out.grads["V"], out.rows.get("V")
            sv0, align = metrics.gradient_spectrum(gV, v.q, rows)
        _descend(params, out, cfg.eta, cfg.rank1)
    return FTHistory(np.array(loss)[:, None], np.array(acc_f)[:, None],
                     np.array(acc_r)[:, None], np.array(preds)[:, None], sv0[None], np.array([align], dtype=float),
                     np.array([len(d.qa_unseen_freq)]), np.array([len(d.qa_rare)]))


def _mean(hit: np.ndarray) -> np.float32:
    """Accuracy over the rows ``hit``, in float32; NaN when there are none."""
    return np.float32(np.count_nonzero(hit)) / np.float32(len(hit)) if len(hit) else np.float32(np.nan)


def _cat(a: Samples, b: Samples) -> Samples:
    """Rows of ``a`` then ``b`` (Q&A samples, which all have the same shape)."""
    return Samples(*(torch.cat([getattr(a, f), getattr(b, f)]) for f in Samples.__dataclass_fields__))
