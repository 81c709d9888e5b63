"""The simplified one-layer transformer of Sec. 2 and the three other architectures of Table 3.

All four share one interface: ``init_params(cfg, vocab_size, B, seed)`` returns the
parameters of ``B`` independent runs, stacked along a leading axis (``params[k][b]`` is run
``b``'s), and ``forward(cfg, params, tokens, mask, rho)`` takes one run's parameters and returns
logits over the ``vocab_size`` vocabulary tokens and the attention of the last position. Inputs live in the
token basis (orthogonal embeddings, Sec. 3): token ``t`` is ``rho_t e_t``.

Simplified model (Sec. 2), for input ``X = [x_1 .. x_L]`` with query ``x_L``::

    S = softmax(X^T W x_L)          h = X S
    F_j = sum_n ReLU(<v_{j,n}, h>)  z = lambda F

One run's ``V`` is stored as ``(vocab_size, m, vocab_size)``: ``V[t, n, j]`` is coordinate ``t``
of neuron ``v_{j,n}``. This module is the plain autograd version (the reference
of the tests, and the training path of attention-only and the standard block); ``kaol.fast``
computes the exact gradients of the simplified model and of uniform attention + MLP
without autograd.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from . import checks
from .seeds import drawn

ARCHS = ("simplified", "uniform_mlp", "attention_only", "standard")


@dataclass(frozen=True)
class ModelConfig:
    """Model of Sec. 2. ``lam`` is the fixed output scale ``lambda``, ``sigma0`` the
    initialisation scale, ``m`` the neurons per output coordinate. ``arch`` picks one
    of ``ARCHS`` (Table 3)."""

    arch: str = "simplified"
    m: int = 10
    lam: float = 1.0
    sigma0: float = 0.01
    dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        """``arch`` one of ``ARCHS``; ``m`` an int >= 1; ``lam``, ``sigma0`` finite and > 0; ``dtype``
        ``torch.float32`` or ``torch.float64``."""
        checks.choice("arch", self.arch, ARCHS)
        object.__setattr__(self, "m", checks.integer("m", self.m, lo=1))
        object.__setattr__(self, "lam", checks.positive("lam", self.lam))
        object.__setattr__(self, "sigma0", checks.positive("sigma0", self.sigma0))
        checks.dtype("dtype", self.dtype)

    def n_params(self, vocab_size: int) -> int:
        """Number of parameters of one run on a vocabulary of ``vocab_size`` tokens."""
        return {"simplified": vocab_size * vocab_size + vocab_size * self.m * vocab_size,
                "uniform_mlp": vocab_size * self.m * vocab_size,
                "attention_only": 2 * vocab_size * vocab_size,
                "standard": 4 * vocab_size * vocab_size + 8 * vocab_size * vocab_size + 3 * vocab_size}[self.arch]

    def with_(self, **changes) -> "ModelConfig":
        return replace(self, **changes)


def init_params(cfg: ModelConfig, vocab_size: int, B: int = 1, seed: int | list[int] = 0
                ) -> dict[str, torch.Tensor]:
    """Gaussian N(0, sigma0^2) initial parameters of ``B`` runs for a vocabulary of ``vocab_size``.

    ``seed`` is one seed per run (or one int, giving runs ``seed, seed+1, ...``); run
    ``b`` depends on its own seed only, so a run among others equals the same run alone. The
    draws come from numpy's PCG64 generator and its scalar ziggurat sampler, whose float64
    output is the same on every CPU (torch's sampler is vectorised where AVX2 is present).
    """
    B = checks.integer("B", B, lo=1)
    vocab_size = checks.integer("vocab_size", vocab_size, lo=1)
    if isinstance(seed, (list, tuple)):
        seeds = checks.seeds("seed", seed)
    else:
        seeds = [checks.seed("seed", seed) + b for b in range(B)]
    nbytes = B * cfg.n_params(vocab_size) * torch.finfo(cfg.dtype).bits // 8
    checks.fits(f"{B} run(s) of the {cfg.arch} model on {vocab_size} tokens "
                f"({cfg.n_params(vocab_size)} parameters each)",
                4 * nbytes, "parameters, gradients and work space do not fit; lower the vocabulary (N_f, N_r, R), "
                "m or the number of runs")
    if len(seeds) != B:
        raise ValueError(f"{len(seeds)} seeds given for B = {B} runs")
    runs = [_init_one(cfg, vocab_size, s) for s in seeds]
    return {k: torch.stack([r[k] for r in runs]) for k in runs[0]}


def _init_one(cfg: ModelConfig, vocab_size: int, seed: int) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(drawn(seed))

    def normal(*shape: int) -> torch.Tensor:
        return torch.from_numpy(cfg.sigma0 * rng.standard_normal(shape)).to(cfg.dtype)

    if cfg.arch == "simplified":
        return {"W": normal(vocab_size, vocab_size), "V": normal(vocab_size, cfg.m, vocab_size)}
    if cfg.arch == "uniform_mlp":
        return {"V": normal(vocab_size, cfg.m, vocab_size)}
    if cfg.arch == "attention_only":
        return {"W": normal(vocab_size, vocab_size), "U": normal(vocab_size, vocab_size)}
    # standard: one pre-norm block, one head of width vocab_size, MLP of width 4 vocab_size, final norm.
    p = {n: normal(vocab_size, vocab_size) for n in ("Wq", "Wk", "Wv", "Wo")}
    p.update(W1=normal(vocab_size, 4 * vocab_size), W2=normal(4 * vocab_size, vocab_size))
    p.update({n: torch.ones(vocab_size, dtype=cfg.dtype) for n in ("ln1", "ln2", "lnf")})
    return p


def attention(W: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
    """Attention of the last token, ``S = softmax(X^T W x_L)`` (Sec. 2), in the token basis.

    ``W`` (vocab_size, vocab_size); ``tokens``, ``mask`` (n, L); ``rho`` (vocab_size,). Returns S (n, L).
    """
    rho_tokens = rho.to(W.dtype)[tokens]
    scores = W[tokens, tokens[:, -1:]] * rho_tokens * rho_tokens[:, -1:]
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), -1)


def mlp_logits(V: torch.Tensor, h_weights: torch.Tensor, tokens: torch.Tensor, lam: float) -> torch.Tensor:
    """``lambda * F`` with ``F_j = sum_n ReLU(<v_{j,n}, h>)`` for ``h = sum_l h_weights_l e_{t_l}``."""
    pre = torch.einsum("nl,nlmj->nmj", h_weights, V[tokens])
    return lam * pre.clamp_min(0).sum(1)


def forward(cfg: ModelConfig, params: dict[str, torch.Tensor], tokens: torch.Tensor,
            mask: torch.Tensor, rho: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (n, vocab_size) and last-position attention (n, L) of one run of ``cfg.arch``
    (``params`` without a run axis); ``tokens``, ``mask`` (n, L), ``rho`` (vocab_size,)."""
    rho_tokens = rho.to(cfg.dtype)[tokens] * mask
    if cfg.arch == "uniform_mlp":
        S = (mask / mask.sum(-1, keepdim=True)).to(cfg.dtype)
        return mlp_logits(params["V"], S * rho_tokens, tokens, cfg.lam), S
    if cfg.arch == "standard":
        return _standard(cfg, params, tokens, mask, rho, rho_tokens)
    S = attention(params["W"], tokens, mask, rho)
    if cfg.arch == "simplified":
        return mlp_logits(params["V"], S * rho_tokens, tokens, cfg.lam), S
    # attention_only: logits = lambda U h, a linear read-out of the attention output.
    return cfg.lam * torch.einsum("nl,nlj->nj", S * rho_tokens, params["U"][tokens]), S


def _standard(cfg: ModelConfig, p: dict[str, torch.Tensor], tokens: torch.Tensor, mask: torch.Tensor,
              rho: torch.Tensor, rho_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A standard pre-norm one-layer transformer read at the last position (Table 3).

    The input at a position is ``rho_t e_t``, so its normalised form, query, key and value
    depend on the token alone: they are computed once per vocabulary token (``vocab_size`` rows)
    and gathered, not once per position. A padding position (``rho = 0``) gets a token's key and
    value, which its attention weight 0 leaves unused."""
    vocab_size = p["Wq"].shape[-1]

    def norm(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.layer_norm(x, x.shape[-1:]) * g

    E = norm(torch.diag(rho.to(cfg.dtype)), p["ln1"])                # (vocab_size, vocab_size): row t is token t
    q = (E @ p["Wq"])[tokens[:, -1]]
    k, v = (E @ p["Wk"])[tokens], (E @ p["Wv"])[tokens]             # (n, L, vocab_size)
    scores = torch.einsum("nu,nlu->nl", q, k) / vocab_size ** 0.5
    S = torch.softmax(scores.masked_fill(~mask, float("-inf")), -1)
    last = torch.nn.functional.one_hot(tokens[:, -1], vocab_size).to(cfg.dtype) * rho_tokens[:, -1:]
    h = last + torch.einsum("nl,nlu->nu", S, v) @ p["Wo"]
    h = h + torch.relu(norm(h, p["ln2"]) @ p["W1"]) @ p["W2"]
    return cfg.lam * norm(h, p["lnf"]), S
