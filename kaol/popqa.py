"""PopQA-layout fact tables (paper Sec. 7.1, App. K and L): one loader for every source.

PopQA (Mallen et al. 2022) holds 14,267 (subject, relation, object) questions with the
subject's popularity ``s_pop`` (Wikipedia page views). The paper uses two relations:
``director`` (GPT-2 pre-trained from scratch, Fig. 4, App. K) and ``capital``
(Llama-3.2-1B fine-tuned on frequent vs rare facts, the table of Sec. 7.1, App. L).

Sources, same columns (``subj prop obj s_pop question possible_answers``):

- ``"offline"`` (default): the tables shipped in ``data/facts/`` (``director.tsv``,
  ``capital.tsv``; real facts in PopQA's layout with permissive licences, popularity from
  IMDB votes and population; see ``data/facts/README.md`` for provenance);
- a path to PopQA's own ``popQA.tsv`` (github.com/AlexTMallen/adaptive-retrieval);
- ``"hub"``: ``datasets.load_dataset("akariasai/PopQA")`` (needs network).

No network is touched unless ``source="hub"``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .seeds import drawn

COLUMNS = ("subj", "prop", "obj", "s_pop", "question", "possible_answers")
DATA_DIR = Path(__file__).resolve().parents[1] / "data" / "facts"

# The paper's Q&A prompts (App. K and L).
TEMPLATES = {
    "director": "Question: Who was the director of {subj}? Answer:",
    "capital": "Question: Where is the capital of {subj}? Answer:",
}


def _answers(x) -> list[str]:
    """``possible_answers`` as a list of strings (a JSON list in the TSV files)."""
    if isinstance(x, (list, tuple, np.ndarray)):
        return [str(a) for a in x]
    return [str(a) for a in json.loads(x)]


def load(prop: str | None = None, source: str | Path = "offline") -> pd.DataFrame:
    """The facts of relation ``prop`` (all relations if None), most popular first.

    Returns a frame with ``COLUMNS`` (``possible_answers`` parsed into lists), index reset.
    """
    if str(source) == "offline":
        if prop is None:
            frames = [pd.read_csv(p, sep="\t") for p in sorted(DATA_DIR.glob("*.tsv"))]
            df = pd.concat(frames, ignore_index=True)
        else:
            path = DATA_DIR / f"{prop}.tsv"
            if not path.exists():
                have = sorted(p.stem for p in DATA_DIR.glob("*.tsv"))
                raise ValueError(f"no offline table for prop={prop!r}; the offline tables are {have} "
                                 f"(use source='hub' or a popQA.tsv path for the other PopQA relations)")
            df = pd.read_csv(path, sep="\t")
    elif str(source) == "hub":
        import datasets  # imported here: the hub is optional

        df = datasets.load_dataset("akariasai/PopQA", split="test").to_pandas()
    else:
        df = pd.read_csv(source, sep="\t")
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{source}: missing PopQA columns {missing}")
    df = df[list(COLUMNS)].copy()
    if prop is not None:
        df = df[df["prop"] == prop]
    df["possible_answers"] = df["possible_answers"].map(_answers)
    df["s_pop"] = df["s_pop"].astype(np.int64)
    return df.sort_values("s_pop", ascending=False, kind="stable").reset_index(drop=True)


@dataclass
class PopularitySplit:
    """Facts split by popularity: ``frequent`` (top ``n_train``), ``rare`` (bottom
    ``n_train``) and ``test`` (held out, spread over the whole popularity range)."""

    frequent: pd.DataFrame
    rare: pd.DataFrame
    test: pd.DataFrame


def split_by_popularity(df: pd.DataFrame, n_train: int, n_test: int, seed: int = 0) -> PopularitySplit:
    """Hold out ``n_test`` facts drawn at random over all popularities, then take the
    ``n_train`` most and ``n_train`` least popular of the rest (App. L: fine-tune on
    frequent vs rare facts, evaluate both on the same held-out facts)."""
    if n_test + 2 * n_train > len(df):
        raise ValueError(f"{len(df)} facts cannot give n_test={n_test} plus 2 x n_train={n_train}")
    df = df.sort_values("s_pop", ascending=False, kind="stable").reset_index(drop=True)
    rng = np.random.default_rng(drawn(seed))
    test_idx = np.sort(rng.choice(len(df), n_test, replace=False))
    rest = df.drop(index=test_idx)
    return PopularitySplit(rest.head(n_train).reset_index(drop=True),
                           rest.tail(n_train).reset_index(drop=True),
                           df.loc[test_idx].reset_index(drop=True))


def prompts(df: pd.DataFrame, prop: str | None = None) -> list[str]:
    """The paper's Q&A prompt for every row ("Question: ... Answer:", App. K/L)."""
    out = []
    for subj, p in zip(df["subj"], df["prop"]):
        tpl = TEMPLATES.get(prop or p)
        out.append(tpl.format(subj=subj) if tpl else f"Question: {subj} {p}? Answer:")
    return out


def pairs(df: pd.DataFrame) -> list[tuple[str, list[str]]]:
    """(prompt, possible answers) pairs for ``kaol.lm.causal_lm_finetune``."""
    return list(zip(prompts(df), df["possible_answers"]))
