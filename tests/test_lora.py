"""LoRA on the simplified model's MLP (kaol.lora): the torch/peft path equals kaol's model."""
from __future__ import annotations

import torch

from kaol import fast
from kaol.data import DataConfig, make_data
from kaol.lora import MLPHead, attention_output, finetune_lora, lora, merged_V, to_V
from kaol.model import ModelConfig, init_params
from kaol.train import FTConfig, finetune

CFG = DataConfig(N_f=12, N_r=6, R=8, K=3, N_ft=4, seed=3)
MODEL = ModelConfig(dtype=torch.float64, sigma0=0.3)


def _setup():
    d = make_data(CFG)
    p = init_params(MODEL, d.vocab.size, 1, 0)
    return d, p


def _fast_logits(W, V, d, samples):
    batch = fast.Batch.build(samples, d.vocab.size, d.vocab.rho, W.dtype)
    return fast.run(W, V, batch, MODEL.lam, grad=False).logits


def test_head_matches_the_model() -> None:
    d, p = _setup()
    W, V = p["W"][0], p["V"][0]
    h = attention_output(W, d.qa_rare, d.vocab.rho.double())
    head = MLPHead(V, MODEL.lam)
    assert torch.equal(to_V(head.mlp.weight, MODEL.m), V)
    assert torch.allclose(head(h), _fast_logits(W, V, d, d.qa_rare), atol=1e-12)


def test_zero_B_reproduces_the_base_logits_exactly() -> None:
    d, p = _setup()
    W, V = p["W"][0], p["V"][0]
    h = attention_output(W, d.qa_train, d.vocab.rho.double())
    base = MLPHead(V, MODEL.lam)(h)
    model = lora(MLPHead(V, MODEL.lam), r=2)
    assert torch.equal(model(h), base)
    assert torch.equal(merged_V(model), V)


def test_merged_weights_are_V_plus_scaled_BA() -> None:
    d, p = _setup()
    W, V = p["W"][0], p["V"][0]
    model, hist = finetune_lora(W, V, d, MODEL.lam, r=2, lr=0.05, steps=3, optimizer="adam")
    layer = model.base_model.model.mlp
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    scale = layer.scaling["default"]
    assert B.abs().max() > 0 and scale == 1.0
    assert torch.allclose(merged_V(model), V + to_V(scale * B @ A, MODEL.m), atol=1e-12)
    assert torch.equal(model.base_model.model.mlp.base_layer.weight.t().reshape(V.shape), V)  # V frozen
    h = attention_output(W, d.qa_unseen_freq, d.vocab.rho.double())
    assert torch.allclose(model(h), _fast_logits(W, merged_V(model).detach(), d, d.qa_unseen_freq), atol=1e-10)
    assert hist.loss.shape == (4,) and hist.loss[-1] < hist.loss[0]


def test_full_gradient_step_matches_kaol_finetune() -> None:
    d, p = _setup()
    W, V = p["W"][0], p["V"][0]
    head = MLPHead(V, MODEL.lam)
    h = attention_output(W, d.qa_train, d.vocab.rho.double())
    loss = torch.nn.functional.cross_entropy(head(h), d.qa_train.answer)
    loss.backward()
    eta = 3.0
    stepped = to_V(head.mlp.weight.detach() - eta * head.mlp.weight.grad, MODEL.m)
    new, _ = finetune(p, d, MODEL, FTConfig(eta=eta, steps=1))
    assert torch.allclose(stepped, new["V"][0], atol=1e-12)
