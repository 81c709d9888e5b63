"""How fine-tuning extracts (or fails to extract) a stored fact: relation-phrase coverage and
what the model answers instead (Thm. 2.2-2.3, the book's page on the reconstruction); and what
pre-training leaves behind: where the loss stays above the entropy (dead pairs, Thm. 2.1) and
the probability of the relation set after ``(c, s_i)`` (Prop. 2, Eq. (17)).

A fine-tuning fact ``(s_i, q) -> a_i`` *covers* the K relation phrases it was pre-trained
with. An unseen fact is *fully covered* when every phrase attached to it is covered by
some fine-tuning fact. These helpers measure coverage per unseen fact, sort the model's
predictions on unseen facts into kinds (the answer, a relation phrase, the answer of a
fine-tuning fact, another answer, ...), and put both in one table.

Unseen facts are ordered as in ``kaol.train.FTHistory.pred``: the unseen frequent facts
(``data.unseen_freq``) then the rare ones (``data.rare``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .data import CTX_FREQ, CTX_RARE, KnowledgeData
from .fast import Batch, attention, run
from .model import ModelConfig
from .train import pad_cat

OUTPUTS = ("correct", "relation phrase", "answer of a fine-tuning fact", "answer of another unseen fact",
           "subject", "q or c")
"""Kinds of prediction on an unseen fact ``(s_i, q)``, in the order of ``output_kind``'s codes."""


def unseen_facts(data: KnowledgeData) -> np.ndarray:
    """Indices of the unseen facts in ``FTHistory.pred`` order: unseen frequent, then rare."""
    return np.concatenate([data.unseen_freq, data.rare])


def covered_phrases(data: KnowledgeData) -> np.ndarray:
    """Boolean (R,): phrase k is covered when some fine-tuning fact was pre-trained with it."""
    cov = np.zeros(data.cfg.R, dtype=bool)
    for i in data.ft:
        cov[data.phrases[i]] = True
    return cov


def coverage(data: KnowledgeData) -> np.ndarray:
    """Fraction of each unseen fact's phrases that are covered (``unseen_facts`` order)."""
    cov = covered_phrases(data)
    return np.array([cov[data.phrases[i]].mean() for i in unseen_facts(data)])


def output_kind(pred: np.ndarray, data: KnowledgeData) -> np.ndarray:
    """Code in ``OUTPUTS`` of each prediction ``pred`` (n_unseen,) on the unseen facts."""
    v, facts = data.vocab, unseen_facts(data)
    ft_answers = {v.a(int(i)) for i in data.ft}
    codes = np.empty(len(facts), dtype=int)
    for k, (i, t) in enumerate(zip(facts, pred)):
        t, kind = int(t), v.kind_of(int(t))
        codes[k] = (0 if t == v.a(int(i)) else 1 if kind == "r" else 2 if t in ft_answers
                    else 3 if kind == "a" else 4 if kind == "s" else 5)
    return codes


def fact_table(data: KnowledgeData, pred: np.ndarray) -> pd.DataFrame:
    """One row per unseen fact: kind, number of phrases, coverage, the prediction and its kind."""
    v, facts = data.vocab, unseen_facts(data)
    kinds = output_kind(pred, data)
    return pd.DataFrame({
        "fact": facts,
        "subject": [v.name(v.s(int(i))) for i in facts],
        "frequent": facts < data.cfg.N_f,
        "phrases": [len(data.phrases[i]) for i in facts],
        "coverage": coverage(data),
        "answer": [v.name(v.a(int(i))) for i in facts],
        "prediction": [v.name(int(t)) for t in pred],
        "output": [OUTPUTS[k] for k in kinds],
        "correct": kinds == 0,
        "shares phrase": _shares_phrase(data, facts, pred),
    })


def _shares_phrase(data: KnowledgeData, facts: np.ndarray, pred: np.ndarray) -> list[bool | None]:
    """For a prediction that is the answer of fine-tuning fact j: does j share a phrase with the
    queried fact? ``None`` for other predictions."""
    owner = {data.vocab.a(int(j)): int(j) for j in data.ft}
    return [bool(set(data.phrases[i]) & set(data.phrases[owner[int(t)]])) if int(t) in owner else None
            for i, t in zip(facts, pred)]


def chance_of_shared_phrase(data: KnowledgeData) -> float:
    """Share of (unseen fact, fine-tuning fact) pairs with a phrase in common: the rate expected
    if a hallucinated fine-tuning answer were picked at random."""
    return float(np.mean([bool(set(data.phrases[i]) & set(data.phrases[j]))
                          for i in unseen_facts(data) for j in data.ft]))


def output_counts(data: KnowledgeData, pred: np.ndarray) -> pd.Series:
    """How many unseen facts fall in each kind of ``OUTPUTS`` (all kinds listed, zeros kept)."""
    kinds = output_kind(pred, data)
    return pd.Series(np.bincount(kinds, minlength=len(OUTPUTS)), index=list(OUTPUTS), name="facts")


def success_by_coverage(table: pd.DataFrame) -> pd.DataFrame:
    """Accuracy of the unseen facts grouped by their coverage (rows of ``fact_table`` tables)."""
    g = table.groupby("coverage")["correct"]
    return pd.DataFrame({"facts": g.size(), "accuracy": g.mean()})


def run_pred(pred: np.ndarray, b: int, data: KnowledgeData) -> np.ndarray:
    """Predictions of run ``b`` from a ``FTHistory.pred`` slice of several runs (B, n_max), padding dropped."""
    return pred[b, :len(unseen_facts(data))]


def qa_attention(W: torch.Tensor, data: KnowledgeData, dtype: torch.dtype = torch.float32) -> np.ndarray:
    """Attention ``S`` of the Q&A inputs ``(s_i, q)`` of the fine-tuning set, (B, N_ft, 2) (Lemma 17),
    for ``W`` (B, vocab_size, vocab_size) of ``B`` runs on the same data."""
    v = data.vocab
    batch = Batch.build(data.qa_train, v.size, v.rho, dtype)
    return np.stack([attention(Wb.to(dtype), batch).numpy() for Wb in W])


@dataclass
class LossGap:
    """Where a pre-trained model's loss sits above the entropy ``H`` (Thm. 2.1, Eq. (13)), per row.

    All arrays are (B, n) over the pre-training rows of ``B`` runs (padding rows have weight
    0): ``w`` the row's weight in the loss (summing to 1 per run), ``excess`` its
    cross-entropy above its own optimum (the entropy of its target), ``kind`` its sample kind
    (``kaol.data.KIND_NAMES``, -1 on padding), and ``dead`` how many of the K phrase logits of
    a frequent context ``(c, s_i)`` are exactly 0, all ``m`` ReLU neurons of the phrase being
    inactive on that input (0 on other rows). The loss minus ``H`` is ``(w * excess).sum(1)``.
    """

    w: np.ndarray
    excess: np.ndarray
    dead: np.ndarray
    kind: np.ndarray

    @property
    def gap(self) -> np.ndarray:
        """Loss minus its optimum, summed over the rows (B,)."""
        return (self.w * self.excess).sum(1)

    def table(self) -> pd.DataFrame:
        """One row per run: the gap, the dead pairs, and the share of the gap in the frequent
        contexts that have a dead phrase; excess cross-entropy of those and of the other
        frequent contexts."""
        hit, ctx = self.dead > 0, self.kind == CTX_FREQ
        part = self.w * self.excess
        return pd.DataFrame({
            "gap": self.gap,
            "dead pairs": self.dead.sum(1),
            "contexts with a dead phrase": hit.sum(1),
            "share of the gap": (part * hit).sum(1) / self.gap,
            "excess CE, dead": _mean_where(self.excess, hit),
            "excess CE, other contexts": _mean_where(self.excess, ctx & ~hit),
        })


def _mean_where(x: np.ndarray, sel: np.ndarray) -> np.ndarray:
    """Mean of ``x`` over the selected entries of each run; NaN for a run with none."""
    n = sel.sum(1)
    return np.where(n > 0, (x * sel).sum(1) / np.maximum(n, 1), np.nan)


def loss_gap(params: dict[str, torch.Tensor], data: list[KnowledgeData], model: ModelConfig) -> LossGap:
    """The rows' share of the gap to ``H`` and the dead (subject, phrase) pairs of ``B``
    pre-trained runs (``params`` with a leading run axis, one data set per run)."""
    cols: dict[str, list[np.ndarray]] = {"w": [], "excess": [], "dead": [], "kind": []}
    for b, d in enumerate(data):
        batch = Batch.build(d.pretrain, d.vocab.size, d.vocab.rho, model.dtype)
        out = run(params["W"][b], params["V"][b], batch, model.lam, grad=False)
        optimum = -torch.special.xlogy(batch.y_prob, batch.y_prob).sum(1).double()
        dead = torch.zeros(batch.shape[0], dtype=torch.long)
        rows = (batch.kind == CTX_FREQ).nonzero().squeeze(1)
        phrases = torch.tensor(np.stack([[d.vocab.r(int(k)) for k in d.phrases[int(i)]] for i in batch.fact[rows]]))
        dead[rows] = (out.logits[rows[:, None], phrases] == 0).sum(1)
        for k, x in (("w", batch.w.double()), ("excess", out.ce.double() - optimum), ("dead", dead), ("kind", batch.kind)):
            cols[k].append(x.numpy()[None])
    return LossGap(*(pad_cat(cols[k], 0, -1 if k == "kind" else 0) for k in ("w", "excess", "dead", "kind")))


def relation_mass(params: dict[str, torch.Tensor], data: list[KnowledgeData], model: ModelConfig) -> np.ndarray:
    """Mean probability of the whole relation set after the contexts ``(c, s_i)``, frequent
    and rare, per run (B,): ``p_R`` of Prop. 2, Eq. (17)."""
    out = np.zeros(len(data))
    for b, d in enumerate(data):
        batch = Batch.build(d.pretrain, d.vocab.size, d.vocab.rho, model.dtype)
        p = torch.softmax(run(params["W"][b], params["V"][b], batch, model.lam, grad=False).logits.double(), -1)
        rel = torch.tensor([d.vocab.r(k) for k in range(d.cfg.R)])
        ctx = ((batch.kind == CTX_FREQ) | (batch.kind == CTX_RARE)).double()
        out[b] = float((p[:, rel].sum(-1) * ctx).sum() / ctx.sum())
    return out
