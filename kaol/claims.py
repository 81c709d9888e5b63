"""The paper's claims and their verdicts, recorded by the chapters for the claims page.

A chapter checks a claim with an ``assert`` and then calls :func:`record` in the same
cell; :func:`record` glues (``myst_nb.glue``) strings under fixed names,

* ``claim-<id>-paper``: what the paper states (a number, a trend, a bound),
* ``claim-<id>-ours``: what the run measured, formatted by the chapter,
* ``claim-<id>-verdict``: ``reproduced``, ``partly`` or ``not``,

and the claim itself (``claim-<id>-claim``, shown for ids not in :data:`CLAIMS`);
``book/claims.md`` (written by ``scripts/claims_page.py``) pastes them with
``{glue:text}`` cross-notebook references, so no number on that page is typed in. The
markdown cell above the check carries the label ``(claim-<id>)=`` so the page links to it.
:data:`CLAIMS` lists the ids the book must record: the table "What the paper claims" of
``MODEL.md``, in the paper's order.
"""

from __future__ import annotations

import re

VERDICTS = ("reproduced", "partly", "not")
FIELDS = ("claim", "paper", "ours", "verdict")

CLAIMS: dict[str, str] = {
    "pt-loss-entropy": "Pre-training loss reaches near the entropy H (Thm 2.1, Prop 2.3)",
    "stage1-attention": "After Stage I, attention on c is small, on s and r comparable (Prop 1, Fig 5)",
    "stage-features": "Stage I learns to predict r; Stages I-II learn subject and relation features (Prop 2)",
    "lr-schedule": "The three-stage learning-rate schedule matters (Sec. 6)",
    "ft-attention-uniform": "q is never a pre-training query: W q stays at init, FT attention near uniform (Lemma 17)",
    "ft-gradient-rank1": "The FT gradient is close to rank 1, its top right singular vector aligned with q (Prop 3)",
    "ood-k-nft": "OOD accuracy rises with multiplicity K and FT size N~_f (Thm 2.2, Fig 2a/3a)",
    "ood-r": "OOD accuracy falls as R grows (Remark 3, Fig 2b/3b)",
    "hallucination": "Too little FT coverage: hallucination (Thm 2.3)",
    "error-bound": "OOD error bound exp(-N~_f K^2 log R / (2 R^2)) (Thm 2)",
    "low-rank-ft": "Rank-1 FT works when full FT works (Thm 2, App H)",
    "ft-overfit": "Too many FT steps overfit to q (Remark 4, Fig 6)",
    "architectures": "Attention-only and uniform attention + MLP fail where the simplified model works (App A, Table 3)",
    "gpt2-synthetic": "Same trends in a standard GPT-2 on the synthetic data (Fig 2c/2d)",
    "gpt2-popqa": "GPT-2 from scratch on PopQA 'director' facts: unseen-fact EM rises with N~_f and K (Fig 4, App K)",
    "llama-frequent-rare": "Llama-3.2-1B FT: frequent beat rare PopQA 'capital' facts, EM 26.36 vs 20.93 (Sec 7.1, App L)",
}

_ID = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")


def glue_name(claim_id: str, field: str) -> str:
    """The glue key of one field of a claim: ``claim-<id>-<field>``."""
    if not _ID.fullmatch(claim_id) or field not in FIELDS:
        raise ValueError(f"bad claim id {claim_id!r} or field {field!r} (fields: {FIELDS})")
    return f"claim-{claim_id}-{field}"


def record(claim_id: str, claim: str, paper: str, ours: str, verdict: str) -> str:
    """Glue a checked claim's paper value, our value and verdict; return a one-line summary.

    ``paper`` and ``ours`` must be strings the chapter formatted (``f"{x:.3f}"``) so that
    the notebook's outputs are stable; ``verdict`` is one of :data:`VERDICTS`, computed
    from the check. Call it after the ``assert`` and ``print`` what it returns.
    """
    from myst_nb import glue

    if verdict not in VERDICTS:
        raise ValueError(f"verdict {verdict!r} is not one of {VERDICTS}")
    for name, value in (("claim", claim), ("paper", paper), ("ours", ours)):
        if not isinstance(value, str) or not value.strip():
            raise TypeError(f"{name} must be a non-empty, formatted string, got {value!r}")
    for field, value in zip(FIELDS, (claim, paper, ours, verdict)):
        glue(glue_name(claim_id, field), value, display=False)
    return f"claim {claim_id} [{verdict}]: {claim} | paper: {paper} | ours: {ours}"
