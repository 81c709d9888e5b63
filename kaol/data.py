"""Synthetic knowledge data of paper Sec. 3 (and the three-token variant of App. A).

Vocabulary, in token order: the context token ``c`` (absent in the three-token
variant), ``N = N_f + N_r`` subjects ``s_i``, ``N`` answers ``a_i``, ``R`` relation
phrases ``r_k`` and the Q&A format token ``q``. Embeddings are orthogonal, so the
model works in the token basis: token ``t`` is the standard basis vector ``e_t``
scaled by ``rho_t`` (``rho_c`` for the context token, 1 for every other token).

A frequent pair carries ``K`` distinct phrases drawn from the ``R`` phrases, a rare
pair one. Each sentence ``c s_i r_k a_i`` gives two next-token samples,
``(c, s_i) -> r_k`` and ``(c, s_i, r_k) -> a_i``; samples with the same input are
merged into one row whose target is their empirical distribution and whose weight
is their count, which leaves the loss unchanged and halves the work.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from . import checks
from .seeds import drawn

# Sample kinds, used for the per-type losses of Sec. 4.
CTX_FREQ, CTX_RARE, ANS_FREQ, ANS_RARE, QA = range(5)
KIND_NAMES = ("(c,s)->r frequent", "(c,s)->r rare", "(c,s,r)->a frequent", "(c,s,r)->a rare", "(s,q)->a")

_FIRST = ("Alice Bob Carol David Emma Frank Grace Henry Irene Jack Karen Liam Maria Noah Olga "
          "Peter Quinn Rosa Sam Tina Umar Vera Walter Xenia Yusuf Zoe").split()
_LAST = ("Smith Garcia Chen Muller Rossi Novak Tanaka Silva Dubois Kowalski Nguyen Larsen "
         "Okafor Ivanova Murphy Haddad").split()
_PLACES = ("California Texas Ohio Kenya Peru Norway Japan Chile Egypt Spain Canada Brazil Ghana "
           "Nepal Italy Poland Cuba Iceland Mexico Vietnam Morocco Greece Finland Bolivia Oregon "
           "Bavaria Quebec Sicily Tasmania Yukon Kerala Patagonia").split()
PHRASES = ("was born in", "comes from", "hails from", "is a native of", "was raised in",
           "grew up in", "originates from", "first saw the light in", "is from", "was brought up in",
           "spent childhood in", "calls home", "has roots in", "was delivered in", "entered the world in",
           "began life in", "is a child of", "was reared in", "descends from", "belongs to",
           "came into being in", "arrived on earth in", "took first breath in", "is rooted in")


@dataclass(frozen=True)
class DataConfig:
    """The data of Sec. 3. ``N_ft`` is the paper's fine-tuning size ``N~_f``.

    ``rare_weight``: the weight of each rare sample; ``None`` means ``K``, the
    App. J choice that keeps rare facts from being drowned by frequent ones.
    ``rho_c``: norm of the context embedding (a reconstruction: the book's page "What is reconstructed", book/reconstruction.md).
    """

    N_f: int = 100
    N_r: int = 50
    R: int = 20
    K: int = 4
    N_ft: int = 50
    rho_c: float = 5.0
    context: bool = True
    rare_weight: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        """Sizes are ints (not floats or bools): ``N_f, R, K >= 1``, ``N_r, N_ft >= 0``, ``K <= R``,
        ``N_ft <= N_f``; ``rho_c`` and ``rare_weight`` finite and > 0; ``context`` a bool; ``seed`` a
        non-negative int. A configuration too large for this machine's memory is refused here."""
        for name, lo in (("N_f", 1), ("N_r", 0), ("R", 1), ("K", 1), ("N_ft", 0)):
            object.__setattr__(self, name, checks.integer(name, getattr(self, name), lo=lo))
        object.__setattr__(self, "seed", checks.seed("seed", self.seed))
        object.__setattr__(self, "context", checks.boolean("context", self.context))
        object.__setattr__(self, "rho_c", checks.positive("rho_c", self.rho_c))
        if self.rare_weight is not None:
            object.__setattr__(self, "rare_weight", checks.positive("rare_weight (or None for K)",
                                                                    self.rare_weight))
        if self.K > self.R:
            raise ValueError(f"K = {self.K} phrasings per frequent fact need K <= R = {self.R} "
                             f"distinct relation phrases: lower K or raise R")
        if self.N_ft > self.N_f:
            raise ValueError(f"N_ft = {self.N_ft} fine-tuning facts are drawn from the N_f = "
                             f"{self.N_f} frequent facts: lower N_ft or raise N_f")
        rows = self.N_f * (self.K + 1) + 2 * self.N_r
        vocab_size = 2 * (self.N_f + self.N_r) + self.R + 2
        checks.fits(f"DataConfig(N_f={self.N_f}, N_r={self.N_r}, K={self.K}, R={self.R})",
                    max(rows * 1000, 4 * vocab_size * vocab_size),
                    f"its {rows} samples (about 1 kB each while built) and a model on its vocabulary of {vocab_size} "
                    f"tokens (at least one vocab_size x vocab_size matrix) do not fit; lower N_f, N_r or K")

    @property
    def N(self) -> int:
        return self.N_f + self.N_r

    @property
    def w_rare(self) -> float:
        return float(self.K if self.rare_weight is None else self.rare_weight)

    def with_(self, **changes) -> "DataConfig":
        return replace(self, **changes)


@dataclass(frozen=True)
class Vocab:
    """Token ids of the vocabulary (Sec. 3) and the embedding norms ``rho``."""

    N: int
    R: int
    context: bool
    rho_c: float

    @property
    def c(self) -> int:
        if not self.context:
            raise ValueError("the three-token variant has no context token c")
        return 0

    @property
    def _off(self) -> int:
        return 1 if self.context else 0

    def s(self, i: int) -> int:
        return self._off + i

    def a(self, i: int) -> int:
        return self._off + self.N + i

    def r(self, k: int) -> int:
        return self._off + 2 * self.N + k

    @property
    def q(self) -> int:
        return self._off + 2 * self.N + self.R

    @property
    def size(self) -> int:
        return self.q + 1

    @property
    def rho(self) -> torch.Tensor:
        """Embedding norms of all tokens (Sec. 3: unit norm except the context)."""
        rho = torch.ones(self.size, dtype=torch.float64)
        if self.context:
            rho[0] = self.rho_c
        return rho

    def kind_of(self, t: int) -> str:
        """'c', 's', 'a', 'r' or 'q' for token id ``t``."""
        if self.context and t == 0:
            return "c"
        u = t - self._off
        if u < self.N:
            return "s"
        if u < 2 * self.N:
            return "a"
        return "r" if u < 2 * self.N + self.R else "q"

    def name(self, t: int) -> str:
        """A readable word for token ``t`` ("Alice Smith", "was born in", "California")."""
        kind, u = self.kind_of(t), t - self._off
        if kind == "c":
            return "The following list details each person's birthplace."
        if kind == "q":
            return "Q: where was this person born? A:"
        if kind == "s":
            return f"{_FIRST[u % len(_FIRST)]} {_LAST[(u // len(_FIRST)) % len(_LAST)]}" + (
                f" {u // (len(_FIRST) * len(_LAST)) + 1}" if u >= len(_FIRST) * len(_LAST) else "")
        if kind == "a":
            u -= self.N
            return _PLACES[u % len(_PLACES)] + (f" {u // len(_PLACES) + 1}" if u >= len(_PLACES) else "")
        u -= 2 * self.N
        return PHRASES[u] if u < len(PHRASES) else f"relation phrase {u + 1}"

    def sentence(self, tokens) -> str:
        return " ".join(self.name(int(t)) for t in tokens)


@dataclass
class Samples:
    """Model inputs with their target distributions, one row per distinct input.

    ``tokens`` (n, L) are right-aligned so the query ``x_L`` is the last column;
    ``mask`` marks real tokens. Row ``i`` has targets ``y_idx[i]`` with
    probabilities ``y_prob[i]`` (padded with probability 0), weight ``weight[i]``
    (the number of merged samples times the App. J rare weight), a kind
    (``CTX_FREQ`` ...) and the index of its fact.
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    y_idx: torch.Tensor
    y_prob: torch.Tensor
    weight: torch.Tensor
    kind: torch.Tensor
    fact: torch.Tensor

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def answer(self) -> torch.Tensor:
        """The most likely target of each row (the answer for Q&A rows)."""
        return self.y_idx.gather(1, self.y_prob.argmax(1, keepdim=True)).squeeze(1)

    def select(self, rows) -> "Samples":
        return Samples(*(getattr(self, f)[rows] for f in self.__dataclass_fields__))


def _samples(rows: list[tuple[list[int], dict[int, float], float, int, int]], L: int) -> Samples:
    """Pack rows of (input tokens, target counts, weight per sample, kind, fact)."""
    k = max((len(t) for _, t, _, _, _ in rows), default=1)
    n = len(rows)
    tokens = torch.zeros(n, L, dtype=torch.long)
    mask = torch.zeros(n, L, dtype=torch.bool)
    y_idx = torch.zeros(n, k, dtype=torch.long)
    y_prob = torch.zeros(n, k, dtype=torch.float64)
    weight = torch.zeros(n, dtype=torch.float64)
    kind = torch.zeros(n, dtype=torch.long)
    fact = torch.zeros(n, dtype=torch.long)
    for i, (inp, targets, w, kd, f) in enumerate(rows):
        tokens[i, L - len(inp):] = torch.tensor(inp)
        mask[i, L - len(inp):] = True
        count = sum(targets.values())
        for j, (t, c) in enumerate(sorted(targets.items())):
            y_idx[i, j], y_prob[i, j] = t, c / count
        weight[i], kind[i], fact[i] = w * count, kd, f
    return Samples(tokens, mask, y_idx, y_prob, weight, kind, fact)


@dataclass
class KnowledgeData:
    """One draw of the Sec. 3 data: facts, phrasings, pre-training and Q&A samples."""

    cfg: DataConfig
    vocab: Vocab
    phrases: list[np.ndarray]       # relation-phrase indices of each fact (K for frequent, 1 for rare)
    ft: np.ndarray                  # fact indices of the fine-tuning set (N_ft frequent facts)
    unseen_freq: np.ndarray         # frequent facts not in the fine-tuning set
    rare: np.ndarray                # rare facts (never fine-tuned on)
    pretrain: Samples = field(repr=False)
    qa_train: Samples = field(repr=False)
    qa_unseen_freq: Samples = field(repr=False)
    qa_rare: Samples = field(repr=False)

    @property
    def n_samples(self) -> int:
        """Number of next-token samples before merging: ``2 (N_f K + N_r)``."""
        return sum(2 * len(p) for p in self.phrases)

    def sentences(self, fact: int) -> list[str]:
        v = self.vocab
        pre = [v.c] if v.context else []
        return [v.sentence(pre + [v.s(fact), v.r(int(k)), v.a(fact)]) for k in self.phrases[fact]]

    def qa(self, facts: np.ndarray) -> Samples:
        """Q&A samples ``(s_i, q) -> a_i`` of Sec. 3 for the given facts."""
        v = self.vocab
        return _samples([([v.s(int(i)), v.q], {v.a(int(i)): 1}, 1.0, QA, int(i)) for i in facts], 2)


def entropy(cfg: DataConfig, weighted: bool = True) -> float:
    """Minimum pre-training loss ``H`` (Sec. 3; App. J when ``weighted``).

    Only a frequent context ``(c, s_i)`` is uncertain: K equally likely phrases,
    ``log K`` each. Unweighted, ``H = N_f K log K / (2 (N_f K + N_r))``; with rare
    samples weighted by ``w``, ``H_w = N_f K log K / (2 (N_f K + w N_r))``.
    """
    w = cfg.w_rare if weighted else 1.0
    return cfg.N_f * cfg.K * math.log(cfg.K) / (2 * (cfg.N_f * cfg.K + w * cfg.N_r))


def make_data(cfg: DataConfig) -> KnowledgeData:
    """Draw the facts' phrasings and the fine-tuning split (Sec. 3) with ``cfg.seed``."""
    rng = np.random.default_rng(drawn(cfg.seed))
    v = Vocab(cfg.N, cfg.R, cfg.context, cfg.rho_c)
    phrases = [np.sort(rng.choice(cfg.R, cfg.K, replace=False)) for _ in range(cfg.N_f)]
    phrases += [rng.choice(cfg.R, 1) for _ in range(cfg.N_r)]
    perm = rng.permutation(cfg.N_f)
    ft, unseen = np.sort(perm[:cfg.N_ft]), np.sort(perm[cfg.N_ft:])
    rare = np.arange(cfg.N_f, cfg.N)
    pre = [v.c] if cfg.context else []
    rows = []
    for i, ks in enumerate(phrases):
        freq = i < cfg.N_f
        w = 1.0 if freq else cfg.w_rare
        rows.append((pre + [v.s(i)], {v.r(int(k)): 1 for k in ks}, w, CTX_FREQ if freq else CTX_RARE, i))
        for k in ks:
            rows.append((pre + [v.s(i), v.r(int(k))], {v.a(i): 1}, w, ANS_FREQ if freq else ANS_RARE, i))
    data = KnowledgeData(cfg, v, phrases, ft, unseen, rare, _samples(rows, len(pre) + 2),
                         None, None, None)  # type: ignore[arg-type]
    data.qa_train, data.qa_unseen_freq, data.qa_rare = data.qa(ft), data.qa(unseen), data.qa(rare)
    return data
