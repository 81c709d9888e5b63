"""LoRA (Hu et al. 2022) on the simplified model's MLP, with ``peft``: a step beyond App. H.

During fine-tuning ``W`` is fixed (Lemma 17), so the attention output ``h = X S`` of every
Q&A input ``(s_i, q)`` is a constant; only the neurons ``v_{j,n}`` move. We therefore hold
one run's ``V`` as a ``torch.nn.Linear(vocab_size, m vocab_size, bias=False)`` whose weight is
the (neurons x inputs) matrix ``V[t, n, j] -> weight[n vocab_size + j, t]`` and compute

    F_j = sum_n ReLU(<v_{j,n}, h>),  z = lambda F            (Sec. 2)

on the precomputed ``h``. ``peft`` then adds a rank-``r`` adapter ``scale * B A`` to that
weight (``B`` initialised to zero, so training starts at the pre-trained model).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from peft import PeftModel

from . import checks
from .data import KnowledgeData, Samples
from .fast import Batch, attention
from .seeds import drawn


class MLPHead(nn.Module):
    """The MLP and output scale of the simplified model for one run: logits from ``h``."""

    def __init__(self, V: torch.Tensor, lam: float) -> None:
        super().__init__()
        vocab_size, m, _ = V.shape
        self.vocab_size, self.m, self.lam = vocab_size, m, lam
        self.mlp = nn.Linear(vocab_size, m * vocab_size, bias=False, dtype=V.dtype)
        with torch.no_grad():
            self.mlp.weight.copy_(V.reshape(vocab_size, m * vocab_size).t())

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        act = torch.relu(self.mlp(h)).view(-1, self.m, self.vocab_size)
        return self.lam * act.sum(1)


def to_V(weight: torch.Tensor, m: int) -> torch.Tensor:
    """The ``(vocab_size, m, vocab_size)`` layout of ``kaol.model`` from a Linear weight
    ``(m vocab_size, vocab_size)``."""
    vocab_size = weight.shape[1]
    return weight.t().reshape(vocab_size, m, vocab_size)


def attention_output(W: torch.Tensor, samples: Samples, rho: torch.Tensor) -> torch.Tensor:
    """``h = X S`` (n, vocab_size) of each input with one run's fixed ``W`` (vocab_size, vocab_size), in the
    token basis."""
    vocab_size = W.shape[0]
    batch = Batch.build(samples, vocab_size, rho, W.dtype)
    a = attention(W, batch) * batch.rho_tokens                        # S_l rho_{t_l}
    return torch.zeros(len(samples), vocab_size, dtype=W.dtype).scatter_add_(1, batch.tokens, a)


def lora(head: MLPHead, r: int, alpha: float | None = None, seed: int = 0) -> PeftModel:
    """A rank-``r`` LoRA adapter on ``head.mlp`` (scale ``alpha / r``; ``alpha = r`` gives 1).
    ``r``: an int in ``[1, vocab_size]``; ``alpha``: ``None`` or a finite number > 0; ``seed`` a non-negative int."""
    checks.of_type("head", head, MLPHead)
    r = checks.integer("r", r, lo=1, hi=head.vocab_size)
    if alpha is not None:
        alpha = checks.positive("alpha", alpha)
    seed = checks.seed("seed", seed)
    from peft import LoraConfig, get_peft_model    # imported here: checks above need no peft

    torch.manual_seed(drawn(seed))                            # peft draws A with torch's global RNG
    cfg = LoraConfig(r=r, lora_alpha=r if alpha is None else alpha, target_modules=["mlp"], lora_dropout=0.0)
    return get_peft_model(head, cfg)


def merged_V(model: PeftModel) -> torch.Tensor:
    """``V + scale * (B A)`` in the ``(T_in, m, T_out)`` layout, without changing ``model``."""
    layer = model.base_model.model.mlp
    delta = layer.get_delta_weight("default")
    return to_V(layer.base_layer.weight + delta, model.base_model.model.m)


LIMIT = 1e6
"""An adapter weight above this has exploded (the pre-trained ``V`` is of order 1)."""


@dataclass
class LoRAHistory:
    """Per step ``0..steps``: the Q&A loss and the accuracy on unseen frequent and rare facts."""

    loss: np.ndarray
    acc_freq: np.ndarray
    acc_rare: np.ndarray


def finetune_lora(W: torch.Tensor, V: torch.Tensor, data: KnowledgeData, lam: float, r: int, lr: float,
                  steps: int, optimizer: str = "sgd", seed: int = 0) -> tuple[PeftModel, LoRAHistory]:
    """Train a rank-``r`` adapter on one run's ``V`` with full-batch ``sgd`` (plain gradient
    descent) or ``adam`` on the mean Q&A cross-entropy, ``W`` fixed (as in Sec. 4).

    ``W`` (vocab_size, vocab_size) and ``V`` (vocab_size, m, vocab_size): one run's finite parameters
    on ``data``'s vocabulary; ``lam``, ``lr``: finite numbers > 0; ``r``: an int in ``[1, vocab_size]``;
    ``steps``: an int >= 0; ``optimizer``: ``"sgd"`` or ``"adam"``. A non-finite loss or exploding
    adapter stops the run with the step and a lower rate to try."""
    checks.of_type("data", data, KnowledgeData)
    vocab_size = data.vocab.size
    for name, p, shape in (("W", W, (vocab_size, vocab_size)), ("V", V, None)):
        checks.of_type(name, p, torch.Tensor)
        if (shape and tuple(p.shape) != shape) or \
                (not shape and (p.dim() != 3 or p.shape[0] != vocab_size or p.shape[2] != vocab_size)):
            want = "(vocab_size, vocab_size)" if shape else "(vocab_size, m, vocab_size)"
            raise ValueError(f"{name} has shape {tuple(p.shape)}: one run's {name} on a vocabulary of {vocab_size} "
                             f"tokens {want}; index run b of stacked parameters with params[name][b]")
        if not bool(torch.isfinite(p).all()):
            raise ValueError(f"{name} holds non-finite values: pass the parameters of a run that did not diverge")
    lam = checks.positive("lam", lam)
    r = checks.integer("r", r, lo=1, hi=vocab_size)
    lr = checks.positive("lr", lr)
    steps = checks.integer("steps", steps, lo=0)
    checks.choice("optimizer", optimizer, ("sgd", "adam"))
    seed = checks.seed("seed", seed)
    if len(data.qa_train) == 0:
        raise ValueError("data has N_ft = 0: there is nothing to fine-tune on; set N_ft >= 1")
    rho = data.vocab.rho.to(W.dtype)
    h_train = attention_output(W, data.qa_train, rho)
    y_train = data.qa_train.answer
    tests = [(attention_output(W, s, rho), s.answer) for s in (data.qa_unseen_freq, data.qa_rare)]
    model = lora(MLPHead(V, lam), r, seed=seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr) if optimizer == "sgd" else torch.optim.Adam(params, lr=lr)
    loss, acc = [], []
    for t in range(steps + 1):
        with torch.no_grad():
            acc.append([(model(h).argmax(-1) == y).float().mean().item() if len(y) else np.nan for h, y in tests])
        ce = nn.functional.cross_entropy(model(h_train), y_train)
        if not math.isfinite(ce.item()) or (t and ce.item() > 100 * max(loss[0], 1e-3)):
            raise ValueError(f"LoRA fine-tuning loss became {ce.item():.4g} at step {t} with learning rate {lr:g} "
                             f"({optimizer}): the run diverged, lower that rate (e.g. to {lr / 10:g})")
        big = max(float(p.detach().abs().max()) for p in params)
        if not big <= LIMIT:
            raise ValueError(f"LoRA fine-tuning: an adapter weight reached {big:.4g} at step {t} with learning rate "
                             f"{lr:g} ({optimizer}): the run diverged, lower that rate (e.g. to {lr / 10:g})")
        loss.append(ce.item())
        if t < steps:
            opt.zero_grad()
            ce.backward()
            opt.step()
    acc_arr = np.array(acc)
    return model, LoRAHistory(np.array(loss), acc_arr[:, 0], acc_arr[:, 1])
