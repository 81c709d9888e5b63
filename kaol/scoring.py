"""Scoring of generated answers (paper Sec. 7.1): exact match and F1 as in SQuAD, and PopQA's rule
(correct if any listed answer appears in the generation)."""
from __future__ import annotations

import collections
import re
import string
from typing import Sequence


def normalize_answer(s: str) -> str:
    """SQuAD normalisation: lower case, drop punctuation and the articles a/an/the, squeeze spaces."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def exact_match(pred: str, answers: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals one normalised answer (SQuAD EM)."""
    p = normalize_answer(pred)
    return float(any(p == normalize_answer(a) for a in answers))


def f1_score(pred: str, answers: Sequence[str]) -> float:
    """Best token-level F1 between the prediction and any answer (SQuAD F1)."""
    best = 0.0
    p = normalize_answer(pred).split()
    for a in answers:
        g = normalize_answer(a).split()
        common = collections.Counter(p) & collections.Counter(g)
        same = sum(common.values())
        if not p or not g:
            best = max(best, float(p == g))
        elif same:
            prec, rec = same / len(p), same / len(g)
            best = max(best, 2 * prec * rec / (prec + rec))
    return best


def popqa_match(generation: str, answers: Sequence[str]) -> float:
    """PopQA's rule (Mallen et al. 2022): correct if any answer, as written, lower-cased or
    capitalised, occurs in the generation."""
    return float(any(a in generation or a.lower() in generation or a.capitalize() in generation
                     for a in answers))


def first_line(text: str) -> str:
    """The answer part of a generation: its first non-empty line, stripped."""
    for line in text.split("\n"):
        if line.strip():
            return line.strip()
    return ""


def score(preds: Sequence[str], answers: Sequence[Sequence[str]],
          generations: Sequence[str] | None = None) -> dict[str, float]:
    """Mean EM, F1 (on ``preds``) and PopQA accuracy (on ``generations``, default ``preds``), in %."""
    gens = preds if generations is None else generations
    n = max(len(preds), 1)
    return {"em": 100 * sum(exact_match(p, a) for p, a in zip(preds, answers)) / n,
            "f1": 100 * sum(f1_score(p, a) for p, a in zip(preds, answers)) / n,
            "popqa": 100 * sum(popqa_match(g, a) for g, a in zip(gens, answers)) / n}
