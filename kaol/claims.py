"""The paper's claims checked as statistics over seeds, and their verdicts for the claims page.

A claim is one or more :class:`Effect`\\ s, each measured once per seed: a gain, a ratio, a
margin, whatever the paper's statement is about, oriented so that the statement says
"larger than ``threshold``". The threshold comes from the statement (``0`` for "rises",
``1`` for "more than", a bound...), never from what a run happened to give. An effect

* **holds** when its mean exceeds the threshold by more than two standard errors *and* at
  least four in five seeds exceed it on their own (3 of 3, 4 of 5, 8 of 10);
* is **weak** when its mean exceeds the threshold but not by that margin;
* **fails** when its mean does not exceed it.

A claim is *reproduced* when all its effects hold, *not* reproduced when all fail, and
*partly* otherwise.

Numbers are printed to the resolution their spread supports: the last digit shown is the
one of twice the standard error, so a printed mean changes only when the runs change by
more than their seed-to-seed spread. :func:`record` glues (``myst_nb.glue``) strings under
fixed names for ``book/claims.md`` (written by ``scripts/claims_page.py``)::

    claim-<id>-claim, claim-<id>-paper, claim-<id>-ours, claim-<id>-verdict, claim-<id>-seeds

and returns a :class:`Claim`, which a chapter shows as a Markdown box (its plain-text twin,
the one line that ``nbval`` compares, holds the verdict and, unless ``numbers_compared`` is
off, the rounded numbers). The markdown cell above the check carries the label
``(claim-<id>)=`` so the page links to it. :data:`CLAIMS` lists the ids the book must
record, in the paper's order (the book's page on the reconstruction lists where each is
stated).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .seeds import drawn

VERDICTS = ("reproduced", "partly", "not")
STATUSES = ("holds", "weak", "fails")
FIELDS = ("claim", "paper", "ours", "verdict", "seeds")
MAX_DECIMALS = 3

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


def decimals(se: float) -> int:
    """Decimals that show a mean with standard error ``se``: down to the digit of ``2 se``
    (at most :data:`MAX_DECIMALS`; a spread of 0 shows :data:`MAX_DECIMALS`)."""
    if not math.isfinite(se) or se < 0:
        raise ValueError(f"standard error {se!r} must be finite and >= 0")
    if se == 0:
        return MAX_DECIMALS
    return int(min(MAX_DECIMALS, max(0, -math.floor(math.log10(2 * se)))))


def mean_sd(values: Sequence[float]) -> str:
    """``mean ± sd`` of one value per seed, at the resolution of their spread (:func:`decimals`
    of the standard error), for the chapters' printed summaries."""
    x = np.asarray(values, dtype=float).reshape(-1)
    if not x.size or not np.all(np.isfinite(x)):
        raise ValueError(f"mean_sd needs finite values, got {x!r}")
    sd = float(np.std(x, ddof=1)) if x.size > 1 else 0.0
    d = decimals(sd / math.sqrt(x.size))
    return f"{x.mean():.{d}f} ± {sd:.{d}f}"


@dataclass(frozen=True)
class Effect:
    """One claimed effect, one value per seed; the paper's statement is ``value > threshold``.

    ``what`` names it for a reader ("accuracy gain from K = 1 to 4, unseen frequent facts").
    """

    what: str
    values: tuple[float, ...]
    seeds: tuple[int, ...]
    threshold: float = 0.0

    def __post_init__(self) -> None:
        values = tuple(float(x) for x in np.asarray(self.values, dtype=float).reshape(-1))
        seeds = tuple(int(s) for s in self.seeds)
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "seeds", seeds)
        if not self.what.strip():
            raise ValueError("an effect needs a name (what)")
        if len(values) != len(seeds) or not values:
            raise ValueError(f"{self.what}: {len(values)} values for {len(seeds)} seeds; give one value per seed")
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"{self.what}: seeds {seeds} repeat; each seed is one independent run")
        if not all(math.isfinite(x) for x in values):
            raise ValueError(f"{self.what}: values {values} are not all finite")
        if not math.isfinite(self.threshold):
            raise ValueError(f"{self.what}: threshold {self.threshold!r} must be finite")

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def sd(self) -> float:
        """Standard deviation over seeds (``ddof=1``; 0 for one seed)."""
        return float(np.std(self.values, ddof=1)) if self.n > 1 else 0.0

    @property
    def se(self) -> float:
        return self.sd / math.sqrt(self.n)

    @property
    def above(self) -> int:
        """How many seeds exceed the threshold on their own."""
        return sum(x > self.threshold for x in self.values)

    @property
    def status(self) -> str:
        """``holds``, ``weak`` or ``fails`` (module docstring)."""
        if self.mean - 2 * self.se > self.threshold and self.above >= math.ceil(0.8 * self.n):
            return "holds"
        return "weak" if self.mean > self.threshold else "fails"

    def text(self) -> str:
        """``mean ± sd`` at the resolution of the spread, with the seed count above threshold."""
        return f"{mean_sd(self.values)} over {self.n} seeds, {self.above}/{self.n} above {self.threshold:.4g}"


def verdict(effects: Sequence[Effect]) -> str:
    """``reproduced`` if every effect holds, ``not`` if every effect fails, ``partly`` otherwise."""
    if not effects:
        raise ValueError("a claim needs at least one effect")
    status = [e.status for e in effects]
    if all(s == "holds" for s in status):
        return "reproduced"
    return "not" if all(s == "fails" for s in status) else "partly"


def _cell(text: str) -> str:
    """``text`` for a Markdown table cell: a ``|`` (as in ``|<u_1, e_q>|``) escaped."""
    return text.replace("|", "\\|")


def glue_name(claim_id: str, field: str) -> str:
    """The glue key of one field of a claim: ``claim-<id>-<field>``."""
    if not _ID.fullmatch(claim_id) or field not in FIELDS:
        raise ValueError(f"bad claim id {claim_id!r} or field {field!r} (fields: {FIELDS})")
    return f"claim-{claim_id}-{field}"


@dataclass(frozen=True)
class Claim:
    """A checked claim: shown as a Markdown box, compared by ``nbval`` through its text twin."""

    claim_id: str
    claim: str
    paper: str
    effects: tuple[Effect, ...]
    note: str = ""
    numbers_compared: bool = True

    @property
    def verdict(self) -> str:
        return verdict(self.effects)

    @property
    def seeds(self) -> str:
        """The seeds drawn with for every effect (``$KAOL_SEED_OFFSET`` added), e.g. ``0-4``."""
        found = sorted({drawn(s) for e in self.effects for s in e.seeds})
        if found == list(range(found[0], found[-1] + 1)) and len(found) > 2:
            return f"{found[0]}-{found[-1]}"
        return ", ".join(map(str, found))

    def ours(self) -> str:
        """What we measured: every effect with its spread (the claims page's 'ours')."""
        return "; ".join(f"{e.what}: {e.text()}" for e in self.effects)

    def _repr_markdown_(self) -> str:
        rows = "\n".join(f"| {_cell(e.what)} | {e.text()} | > {e.threshold:g} | {e.status} |"
                         for e in self.effects)
        note = f"\n\n{self.note}" if self.note else ""
        return (f"**Claim** ({self.claim_id}): {self.claim}  \n**Paper:** {self.paper}  \n"
                f"**Verdict: {self.verdict}** (seeds {self.seeds})\n\n"
                f"| effect | ours | paper's statement | status |\n|---|---|---|---|\n{rows}{note}")

    def __repr__(self) -> str:
        if not self.numbers_compared:
            statuses = ", ".join(f"{e.status}" for e in self.effects)
            return f"claim {self.claim_id}: {self.verdict} (effects: {statuses}; seeds {self.seeds})"
        return f"claim {self.claim_id}: {self.verdict}\n" + "\n".join(
            f"  {e.status:5s}  {e.what}: {e.text()}" for e in self.effects)


def record(claim_id: str, paper: str, effects: Sequence[Effect], claim: str | None = None,
           note: str = "", numbers_compared: bool = True) -> Claim:
    """Check a claim over seeds, glue its fields for the claims page and return it to show.

    ``paper`` is the paper's statement (or printed number); ``claim`` defaults to
    ``CLAIMS[claim_id]``. ``numbers_compared=False`` keeps the numbers out of the plain-text
    twin that ``nbval`` compares, for chapters whose runs depend on the CPU's floating point
    (torch kernels of the language models): then only the verdict and statuses are compared.
    """
    from myst_nb import glue

    text = CLAIMS.get(claim_id) if claim is None else claim
    if text is None:
        raise ValueError(f"claim id {claim_id!r} is not in CLAIMS: pass its text as claim=")
    for name, value in (("claim", text), ("paper", paper)):
        if not isinstance(value, str) or not value.strip():
            raise TypeError(f"{name} must be a non-empty string, got {value!r}")
    glue_name(claim_id, "claim")                       # checks the id
    out = Claim(claim_id, text, paper, tuple(effects), note, numbers_compared)
    for field, value in zip(FIELDS, (text, paper, out.ours(), out.verdict, out.seeds)):
        glue(glue_name(claim_id, field), value, display=False)
    return out
