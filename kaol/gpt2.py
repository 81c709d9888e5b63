"""GPT-2 trained from scratch (paper Sec. 7, App. J.2, J.3): its shape and construction with
Hugging Face's ``GPT2LMHeadModel``, optionally without positional encoding.

``transformers`` is imported inside ``build_gpt2``, so ``import kaol.gpt2`` is cheap.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import checks
from .seeds import drawn


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
