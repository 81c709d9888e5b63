"""The one training loop of the language-model experiments (paper App. J.2-J.4), plain torch.

``train`` trains every language model of the book: the GPT-2s from scratch on the synthetic data
(``kaol.gpt2_synthetic``, App. J.2) and on text (``kaol.gpt2_text``, App. J.3) and the pretrained
causal LM (``kaol.causal_lm``, App. J.4). Each step: the loss of one batch, a stop if it is not
finite, AdamW on the parameters that require gradients, a step of the rate schedule (linear
warm-up, then constant or cosine, App. J.3). Adam (App. J.2's fine-tuning) is AdamW with weight
decay 0: torch skips the decay term then, so the two are the same operations.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F


def setup_torch(threads: int = 2) -> None:
    """Deterministic CPU execution: fixed thread count and deterministic kernels."""
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)


def schedule(warmup: int, cosine_steps: int | None = None) -> Callable[[int], float]:
    """Rate factor at a step: linear warm-up over ``warmup`` steps, then constant (``cosine_steps``
    None) or a cosine decay reaching 0 at step ``cosine_steps`` (App. J.3)."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cosine_steps is None:
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(cosine_steps - warmup, 1)))
    return f


def diverged(what: str, loss: float, step: int, lr: float) -> None:
    """Stop a language-model run whose loss is not finite (nothing diverged is cached)."""
    if not math.isfinite(loss):
        raise ValueError(f"{what} loss became {loss} at step {step} with learning rate {lr:g}: the run "
                         f"diverged, lower that rate (e.g. to {lr / 10:g})")


def train(model: torch.nn.Module, loss: Callable[[Any], torch.Tensor], data: Any, epochs: int, lr: float,
          weight_decay: float = 0.0, batch: int | None = None, generator: torch.Generator | None = None,
          warmup: int = 0, cosine: bool = False, what: str = "training",
          after_epoch: Callable[[int], None] | None = None) -> list[float]:
    """Train ``model`` in place with AdamW for ``epochs`` epochs; the loss of every step.

    ``batch=None``: full batch, one step on ``loss(data)`` per epoch. Otherwise ``data`` is a
    sequence, each epoch draws ``torch.randperm(len(data), generator=generator)`` and steps on
    ``loss([data[i] for i in perm[b:b + batch]])`` for ``b = 0, batch, 2 batch, ...``.
    The rate is ``lr`` times ``schedule(warmup, total steps if cosine else None)``.
    ``after_epoch(epoch)`` (epochs counted from 1) runs after each epoch, e.g. to evaluate.
    """
    # fused: one pass over each parameter's memory per step instead of one per operation (6x
    # faster on a CPU for SmolLM2's 135M parameters); the same update up to rounding.
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay,
                            fused=True)
    per_epoch = 1 if batch is None else math.ceil(len(data) / batch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule(warmup, epochs * per_epoch if cosine else None))
    losses: list[float] = []
    for epoch in range(1, epochs + 1):
        if batch is None:
            batches = [data]
        else:
            perm = torch.randperm(len(data), generator=generator)
            batches = [[data[i] for i in perm[b:b + batch]] for b in range(0, len(data), batch)]
        for x in batches:
            value = loss(x)
            diverged(what, value.item(), len(losses), lr)
            opt.zero_grad()
            value.backward()
            opt.step()
            sched.step()
            losses.append(value.item())
        if after_epoch is not None:
            after_epoch(epoch)
    return losses


def _pad(seqs: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    L = max(len(s) for s in seqs)
    x = torch.full((len(seqs), L), pad, dtype=torch.long)
    m = torch.zeros((len(seqs), L), dtype=torch.long)
    for i, s in enumerate(seqs):
        x[i, :len(s)] = torch.tensor(s)
        m[i, :len(s)] = 1
    return x, m


def answer_row(prompt: list[int], answer: list[int]) -> tuple[list[int], list[int]]:
    """The (token ids, labels) row of ``lm_loss`` for a Q&A pair: the loss is on the answer only."""
    return prompt + answer, [0] * len(prompt) + [1] * len(answer)


def lm_loss(model, rows: Sequence[tuple[Sequence[int], Sequence[int]]], pad: int) -> torch.Tensor:
    """Mean next-token loss of a batch of (token ids, 0/1 labels) rows, right-padded with ``pad``,
    over the predicted tokens whose label is 1 (the answer of a Q&A pair; every token of a
    pre-training sentence but the first).

    The output layer runs at those positions only: for a Q&A batch that is a few tokens per row,
    and the output layer of a large vocabulary (SmolLM2's 49,152 tokens) costs as much as a fifth
    of the model at every position it is applied to."""
    x, m = _pad([s for s, _ in rows], pad)
    lab, _ = _pad([l for _, l in rows], 0)
    body, head = _body_and_head(model)
    h = body(input_ids=x, attention_mask=m).last_hidden_state[:, :-1]
    scored = lab[:, 1:] == 1
    return F.cross_entropy(head(h[scored]), x[:, 1:][scored])


def _body_and_head(model) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The transformer of a causal LM of ``transformers`` (a LoRA-wrapped one included) and its
    output layer: the model's logits are ``head(body(...).last_hidden_state)``."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model   # a peft model
    return inner.base_model, inner.get_output_embeddings()
