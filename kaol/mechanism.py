"""How fine-tuning extracts (or fails to extract) a stored fact: relation-phrase coverage and
what the model answers instead (Thm. 2.2-2.3, MODEL.md "A reading of the mechanism").

A fine-tuning fact ``(s_i, q) -> a_i`` *covers* the K relation phrases it was pre-trained
with. An unseen fact is *fully covered* when every phrase attached to it is covered by
some fine-tuning fact. These helpers measure coverage per unseen fact, sort the model's
predictions on unseen facts into kinds (the answer, a relation phrase, the answer of a
fine-tuning fact, another answer, ...), and put both in one table.

Unseen facts are ordered as in ``kaol.train.FTHistory.pred``: the unseen frequent facts
(``data.unseen_freq``) then the rare ones (``data.rare``).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from .data import KnowledgeData
from .fast import Batch, attention

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
    """Predictions of run ``b`` from a batched ``FTHistory.pred`` slice (B, n_max), padding dropped."""
    return pred[b, :len(unseen_facts(data))]


def qa_attention(W: torch.Tensor, data: KnowledgeData, dtype: torch.dtype = torch.float32) -> np.ndarray:
    """Attention ``S`` of the Q&A inputs ``(s_i, q)`` of the fine-tuning set, (B, N_ft, 2) (Lemma 17)."""
    v = data.vocab
    batch = Batch.build(data.qa_train, v.size, v.rho, dtype, B=W.shape[0])
    return attention(W.to(dtype), batch).numpy()
