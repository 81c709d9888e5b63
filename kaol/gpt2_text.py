"""GPT-2 from scratch on text facts: the PopQA "director" experiment (paper Fig. 4, App. J.3, K).

Pre-training sentences "[movie] [phrasing] [director]" with K phrasings per fact and a word-level
tokenizer built with ``tokenizers``; pre-training with AdamW (warm-up and cosine rate), then
fine-tuning on "Question: ... Answer: X" (warm-up and constant rate), both with the loop of
``kaol.lmtrain``; exact match of greedy answers on unseen facts. Results are cached with
``kaol.cache``.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from . import checks
from .cache import memo
from .gpt2 import GPT2Size, build_gpt2
from .lmtrain import answer_row, lm_loss, train
from .seeds import drawn

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
        g = torch.Generator().manual_seed(drawn(cfg.seed))
        steps = train(model, lambda rows: lm_loss(model, rows, pad), [(s, [1] * len(s)) for s in sents],
                      cfg.pt_epochs, cfg.pt_lr, cfg.pt_wd, batch=cfg.batch, generator=g, warmup=50, cosine=True,
                      what="GPT-2 pre-training on text")
        # loss per epoch: the mean over sentences of the batch losses
        sizes = [min(cfg.batch, len(sents) - b) for b in range(0, len(sents), cfg.batch)]
        per_epoch = [steps[e * len(sizes):(e + 1) * len(sizes)] for e in range(cfg.pt_epochs)]
        losses = [sum(loss * n for loss, n in zip(epoch, sizes)) / len(sents) for epoch in per_epoch]
        return {k: t.clone() for k, t in model.state_dict().items()}, np.array(losses)

    state, pt_loss = memo("text-pt", pt_key, pretrain, enabled=use_cache)
    key = ("text-ft", pt_key, tuple(map(int, ft_idx)), tuple(map(int, test_idx)), cfg)

    def finetune():
        model = build_gpt2(vocab, cfg.size, n_positions=L, positional=cfg.positional, seed=cfg.seed, pad_id=pad)
        model.load_state_dict(state)
        model.eval()
        # pre-training recall: "[movie] was directed by" -> director, on the test facts
        first = [enc(f"{facts.subj[i]} {_first_phrase(facts, i)}") for i in test_idx]
        gen = greedy_generate(model, first, eos, pad, max_new=8)
        recall = float(np.mean([g == enc(facts.obj[i]) for g, i in zip(gen, test_idx)]))
        rows = [answer_row(enc(facts.prompts[i]), enc(facts.obj[i]) + [eos]) for i in ft_idx]

        def em(idx: Sequence[int]) -> float:
            gen = greedy_generate(model, [enc(facts.prompts[i]) for i in idx], eos, pad, max_new=8)
            return 100 * float(np.mean([gi == enc(facts.obj[i]) for gi, i in zip(gen, idx)]))

        epochs, em_u, em_t = [0], [em(test_idx)], [em(ft_idx)]

        def evaluate(ep: int) -> None:
            if ep % cfg.eval_every == 0 or ep == cfg.ft_epochs:
                epochs.append(ep)
                em_u.append(em(test_idx))
                em_t.append(em(ft_idx))

        train(model, lambda batch: lm_loss(model, batch, pad), rows, cfg.ft_epochs, cfg.ft_lr, cfg.ft_wd,
              batch=cfg.ft_batch, generator=torch.Generator().manual_seed(drawn(cfg.seed + 1)), warmup=20,
              what="GPT-2 fine-tuning on text", after_epoch=evaluate)
        return recall, np.array(epochs), np.array(em_u), np.array(em_t)

    recall, epochs, em_u, em_t = memo("text-ft", key, finetune, enabled=use_cache)
    return TextResult(pt_loss, recall, epochs, em_u, em_t)


def _first_phrase(facts: TextFacts, i: int) -> str:
    """The phrasing of fact i's first pre-training sentence."""
    s = next(t for t in facts.sentences if t.startswith(facts.subj[i] + " ") and t.endswith(" " + facts.obj[i]))
    return s[len(facts.subj[i]) + 1:len(s) - len(facts.obj[i]) - 1]
