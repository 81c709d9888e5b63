"""The simplified one-layer transformer of Sec. 2 and the three other architectures of Table 3.

All four share one interface: ``init_params(cfg, T, B, seed)`` returns a dict of
parameters with a leading run axis ``B`` (many runs train as one program), and
``forward(cfg, params, tokens, mask, rho)`` returns logits over the ``T``
vocabulary tokens and the attention of the last position. Inputs live in the
token basis (orthogonal embeddings, Sec. 3): token ``t`` is ``rho_t e_t``.

Simplified model (Sec. 2), for input ``X = [x_1 .. x_L]`` with query ``x_L``::

    S = softmax(X^T W x_L)          h = X S
    F_j = sum_n ReLU(<v_{j,n}, h>)  z = lambda F

``V`` is stored as ``(B, T_in, m, T_out)``: ``V[b, t, n, j]`` is coordinate ``t``
of neuron ``v_{j,n}``. This module is the plain autograd version (the reference
of the tests and the path of the three other architectures); ``kaol.fast``
computes the simplified model's exact gradients without autograd.
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

    def n_params(self, T: int) -> int:
        """Number of parameters of one run on a vocabulary of ``T`` tokens."""
        return {"simplified": T * T + T * self.m * T, "uniform_mlp": T * self.m * T, "attention_only": 2 * T * T,
                "standard": 4 * T * T + 8 * T * T + 3 * T}[self.arch]

    def with_(self, **changes) -> "ModelConfig":
        return replace(self, **changes)


def init_params(cfg: ModelConfig, T: int, B: int = 1, seed: int | list[int] = 0) -> dict[str, torch.Tensor]:
    """Gaussian N(0, sigma0^2) initial parameters of ``B`` runs for a vocabulary of ``T``.

    ``seed`` is one seed per run (or one int, giving runs ``seed, seed+1, ...``); run
    ``b`` depends on its own seed only, so a batched run equals the same run alone. The
    draws come from numpy's PCG64 generator and its scalar ziggurat sampler, whose float64
    output is the same on every CPU (torch's sampler is vectorised where AVX2 is present).
    """
    B = checks.integer("B", B, lo=1)
    T = checks.integer("T", T, lo=1)
    if isinstance(seed, (list, tuple)):
        seeds = checks.seeds("seed", seed)
    else:
        seeds = [checks.seed("seed", seed) + b for b in range(B)]
    nbytes = B * cfg.n_params(T) * torch.finfo(cfg.dtype).bits // 8
    checks.fits(f"{B} run(s) of the {cfg.arch} model on {T} tokens ({cfg.n_params(T)} parameters each)",
                4 * nbytes, "parameters, gradients and work space do not fit; lower the vocabulary (N_f, N_r, R), "
                "m or the number of runs")
    if len(seeds) != B:
        raise ValueError(f"{len(seeds)} seeds given for B = {B} runs")
    runs = [_init_one(cfg, T, s) for s in seeds]
    return {k: torch.stack([r[k] for r in runs]) for k in runs[0]}


def _init_one(cfg: ModelConfig, T: int, seed: int) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(drawn(seed))

    def normal(*shape: int) -> torch.Tensor:
        return torch.from_numpy(cfg.sigma0 * rng.standard_normal(shape)).to(cfg.dtype)

    if cfg.arch == "simplified":
        return {"W": normal(T, T), "V": normal(T, cfg.m, T)}
    if cfg.arch == "uniform_mlp":
        return {"V": normal(T, cfg.m, T)}
    if cfg.arch == "attention_only":
        return {"W": normal(T, T), "U": normal(T, T)}
    # standard: one pre-norm block, one head of width T, MLP of width 4T, final norm.
    p = {n: normal(T, T) for n in ("Wq", "Wk", "Wv", "Wo")}
    p.update(W1=normal(T, 4 * T), W2=normal(4 * T, T))
    p.update({n: torch.ones(T, dtype=cfg.dtype) for n in ("ln1", "ln2", "lnf")})
    return p


def norms(rho: torch.Tensor, tokens: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``rho_{t}`` of every token (B, n, L), from norms shared (T,) or per run (B, T)."""
    B = tokens.shape[0]
    rho = rho.to(dtype).expand(B, -1) if rho.dim() == 1 else rho.to(dtype)
    return rho.gather(1, tokens.reshape(B, -1)).view(tokens.shape)


def attention(W: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
    """Attention of the last token, ``S = softmax(X^T W x_L)`` (Sec. 2), in the token basis.

    ``W`` (B, T, T); ``tokens``, ``mask`` (B, n, L) or (n, L); ``rho`` (T,) or (B, T).
    Returns S (B, n, L).
    """
    B, T = W.shape[:2]
    tokens, mask = _batched(tokens, B), _batched(mask, B)
    r = norms(rho, tokens, W.dtype)
    idx = (tokens * T + tokens[..., -1:]).reshape(B, -1)
    scores = W.reshape(B, -1).gather(1, idx).view_as(r) * r * r[..., -1:]
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), -1)


def mlp_logits(V: torch.Tensor, h_weights: torch.Tensor, tokens: torch.Tensor, lam: float) -> torch.Tensor:
    """``lambda * F`` with ``F_j = sum_n ReLU(<v_{j,n}, h>)`` for ``h = sum_l h_weights_l e_{t_l}``."""
    B = V.shape[0]
    rows = V[torch.arange(B)[:, None, None], _batched(tokens, B)]        # (B, n, L, m, T)
    pre = torch.einsum("bnl,bnlmj->bnmj", h_weights, rows)
    return lam * pre.clamp_min(0).sum(2)


def forward(cfg: ModelConfig, params: dict[str, torch.Tensor], tokens: torch.Tensor,
            mask: torch.Tensor, rho: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (B, n, T) and last-position attention (B, n, L) of ``cfg.arch``; ``rho`` (T,) or (B, T)."""
    B = next(iter(params.values())).shape[0]
    tokens, mask = _batched(tokens, B), _batched(mask, B)
    r = norms(rho, tokens, cfg.dtype) * mask
    if cfg.arch == "uniform_mlp":
        S = (mask / mask.sum(-1, keepdim=True)).to(cfg.dtype)
        return mlp_logits(params["V"], S * r, tokens, cfg.lam), S
    if cfg.arch == "standard":
        return _standard(cfg, params, tokens, mask, r)
    S = attention(params["W"], tokens, mask, rho)
    if cfg.arch == "simplified":
        return mlp_logits(params["V"], S * r, tokens, cfg.lam), S
    # attention_only: logits = lambda U h, a linear read-out of the attention output.
    U = params["U"][torch.arange(B)[:, None, None], tokens]                # (B, n, L, T)
    return cfg.lam * torch.einsum("bnl,bnlj->bnj", S * r, U), S


def _standard(cfg: ModelConfig, p: dict[str, torch.Tensor], tokens: torch.Tensor, mask: torch.Tensor,
              r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A standard pre-norm one-layer transformer read at the last position (Table 3)."""
    T = p["Wq"].shape[-1]
    X = torch.nn.functional.one_hot(tokens, T).to(cfg.dtype) * r[..., None]   # (B, n, L, T)

    def norm(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.layer_norm(x, x.shape[-1:]) * g[:, None, None]

    Xn = norm(X, p["ln1"])
    q = torch.einsum("bnt,btu->bnu", Xn[:, :, -1], p["Wq"])
    k = torch.einsum("bnlt,btu->bnlu", Xn, p["Wk"])
    scores = torch.einsum("bnu,bnlu->bnl", q, k) / T ** 0.5
    S = torch.softmax(scores.masked_fill(~mask, float("-inf")), -1)
    v = torch.einsum("bnlt,btu->bnlu", Xn, p["Wv"])
    h = X[:, :, -1] + torch.einsum("bnu,but->bnt", torch.einsum("bnl,bnlu->bnu", S, v), p["Wo"])
    h = h + torch.einsum("bnk,bkt->bnt", torch.relu(torch.einsum("bnt,btk->bnk", norm(h[:, :, None], p["ln2"])[:, :, 0], p["W1"])), p["W2"])
    return cfg.lam * norm(h[:, :, None], p["lnf"])[:, :, 0], S


def _batched(x: torch.Tensor, B: int) -> torch.Tensor:
    return x if x.dim() == 3 else x.expand(B, *x.shape)
