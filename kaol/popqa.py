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

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import checks
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


def read_tsv(path: str | Path) -> pd.DataFrame:
    """A tab-separated table with a header, every field a string; errors name the file, the line
    and the column (missing or empty file, bytes that are not UTF-8, a row with too few or too
    many fields)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"source = {str(path)!r}: no such file (pass 'offline', 'hub' or the path of a popQA.tsv)")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        col = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        raise ValueError(f"{path}, line {line}, column {col}: byte {raw[err.start]:#04x} is not UTF-8 "
                         f"(save the table as UTF-8)") from None
    if not text.strip():
        raise ValueError(f"{path} is empty: expected a header line with the columns {COLUMNS}")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t")
    header = next(reader)
    rows = []
    for row in reader:
        if not row:
            continue
        if len(row) != len(header):
            raise ValueError(f"{path}, line {reader.line_num}: {len(row)} tab-separated fields, the header has "
                             f"{len(header)} ({header})")
        rows.append(row)
    return pd.DataFrame(rows, columns=header, dtype=object)


def _popularity(values, where: str, lines) -> np.ndarray:
    """``s_pop`` as int64: whole numbers only (a fractional or missing popularity is an error)."""
    out = np.empty(len(values), dtype=np.int64)
    for i, (v, line) in enumerate(zip(values, lines)):
        try:
            x = float(v)
        except (TypeError, ValueError):
            x = math.nan
        if not math.isfinite(x) or x != int(x) or x < 0:
            raise ValueError(f"{where}, {line}, column s_pop: {v!r} is not a whole non-negative number of views")
        out[i] = int(x)
    return out


def _parse_answers(values, where: str, lines) -> list[list[str]]:
    out = []
    for v, line in zip(values, lines):
        try:
            a = _answers(v)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}, {line}, column possible_answers: {v!r} is not a JSON list of "
                             f"answers ({err})") from None
        out.append(a)
    return out


def load(prop: str | None = None, source: str | Path = "offline") -> pd.DataFrame:
    """The facts of relation ``prop`` (all relations if None), most popular first.

    Returns a frame with ``COLUMNS`` (``possible_answers`` parsed into lists), index reset.
    ``prop``: ``None`` or a relation name; ``source``: ``"offline"``, ``"hub"`` or the path of a
    UTF-8 TSV with ``COLUMNS`` (errors name the file, line and column of a bad field).
    """
    if prop is not None:
        checks.of_type("prop", prop, str)
    checks.of_type("source", source, (str, Path))
    if str(source) == "offline":
        if prop is None:
            frames = [read_tsv(p) for p in sorted(DATA_DIR.glob("*.tsv"))]
            df = pd.concat(frames, ignore_index=True)
        else:
            path = DATA_DIR / f"{prop}.tsv"
            if not path.exists():
                have = sorted(p.stem for p in DATA_DIR.glob("*.tsv"))
                raise ValueError(f"no offline table for prop={prop!r}; the offline tables are {have} "
                                 f"(use source='hub' or a popQA.tsv path for the other PopQA relations)")
            df = read_tsv(path)
    elif str(source) == "hub":
        import datasets  # imported here: the hub is optional

        df = datasets.load_dataset("akariasai/PopQA", split="test").to_pandas()
    else:
        df = read_tsv(source)
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{source}: missing PopQA columns {missing}")
    df = df[list(COLUMNS)].copy()
    df["line"] = [f"line {i + 2}" for i in range(len(df))] if str(source) != "hub" else \
        [f"row {i}" for i in range(len(df))]
    if prop is not None:
        df = df[df["prop"] == prop]
    where = "the offline tables" if str(source) == "offline" else str(source)
    df["possible_answers"] = _parse_answers(df["possible_answers"], where, df["line"])
    df["s_pop"] = _popularity(df["s_pop"], where, df["line"])
    df = df.drop(columns="line")
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
    frequent vs rare facts, evaluate both on the same held-out facts).

    ``n_train`` an int >= 1, ``n_test`` an int >= 0, ``seed`` a non-negative int. A subject
    never lands in two of the three sets: rows repeating a held-out subject leave the training
    pool, and the rare set skips subjects already in the frequent set."""
    n_train = checks.integer("n_train", n_train, lo=1)
    n_test = checks.integer("n_test", n_test, lo=0)
    seed = checks.seed("seed", seed)
    checks.of_type("df", df, pd.DataFrame)
    if n_test + 2 * n_train > len(df):
        raise ValueError(f"{len(df)} facts cannot give n_test={n_test} plus 2 x n_train={n_train}")
    df = df.sort_values("s_pop", ascending=False, kind="stable").reset_index(drop=True)
    rng = np.random.default_rng(drawn(seed))
    test_idx = np.sort(rng.choice(len(df), n_test, replace=False))
    test = df.loc[test_idx]
    rest = df.drop(index=test_idx)
    rest = rest[~rest["subj"].isin(set(test["subj"]))].drop_duplicates("subj")
    frequent = rest.head(n_train)
    rare = rest[~rest["subj"].isin(set(frequent["subj"]))].tail(n_train)
    if len(frequent) < n_train or len(rare) < n_train:
        raise ValueError(f"{len(df)} facts ({df['subj'].nunique()} distinct subjects) cannot give n_test={n_test} "
                         f"plus 2 x n_train={n_train} facts with distinct subjects")
    return PopularitySplit(frequent.reset_index(drop=True), rare.reset_index(drop=True),
                           test.reset_index(drop=True))


def prompts(df: pd.DataFrame, prop: str | None = None) -> list[str]:
    """The paper's Q&A prompt for every row ("Question: ... Answer:", App. K/L)."""
    out = []
    for subj, p in zip(df["subj"], df["prop"]):
        tpl = TEMPLATES.get(prop or p)
        out.append(tpl.format(subj=subj) if tpl else f"Question: {subj} {p}? Answer:")
    return out


def pairs(df: pd.DataFrame) -> list[tuple[str, list[str]]]:
    """(prompt, possible answers) pairs for ``kaol.causal_lm.causal_lm_finetune``."""
    return list(zip(prompts(df), df["possible_answers"]))
