"""Why rank-1 fine-tuning at paper scale needs more than a power iteration (App. H).

Run from the repository root (about 3 minutes on 2 CPU cores)::

    python benchmarks/rank1_spectrum.py

It pre-trains one paper-scale run (``SCALES["paper"]``, K = 4, seed 0), fine-tunes it with
rank-1 updates on N~_f = 150 facts for 1000 steps, and every 100 steps takes the gradient
``M`` of ``V`` (the rows the fine-tuning inputs read, as ``kaol.metrics.rank1`` sees it) and
prints:

* ``lambda_2 / lambda_1`` of the Gram matrix ``M M^T`` (from a float64 SVD of ``M``);
* ``kaol.metrics.rank1``: its time and its error, the largest entry of its result minus
  ``sigma_1 u_1 v_1^T`` of the SVD, relative to the largest entry of the latter;
* the method it replaced on 2026-12-02, a power iteration on ``M M^T`` from the column of
  largest diagonal of ``(M M^T)^256`` until ``u`` moves by less than 1e-13, at most 10^4
  steps: its number of steps and its error (numpy, float64; its time is not comparable).
"""
from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from kaol import fast, metrics
from kaol.data import make_data
from kaol.scales import SCALES
from kaol.train import finetune, pretrain


def power_iteration(G: np.ndarray, cap: int = 10_000) -> tuple[np.ndarray, int]:
    """Top eigenvector of ``G`` as ``kaol.metrics`` found it before 2026-12-02, and its steps."""
    A = G / np.abs(G).max()
    for _ in range(8):
        A = A @ A
        A /= np.abs(A).max()
    u = A[:, np.argmax(np.diag(A))]
    u = u / np.linalg.norm(u)
    for step in range(1, cap + 1):
        x = G @ u
        x /= np.linalg.norm(x)
        moved, u = np.abs(x - u).max(), x
        if moved < 1e-13:
            return u, step
    return u, cap


def main() -> None:
    scale = SCALES["paper"]
    data = make_data(scale.base.with_(K=4, N_ft=150, seed=0))
    start = time.perf_counter()
    params, _ = pretrain(data, scale.model, scale.schedule)
    print(f"pre-training: {time.perf_counter() - start:.0f} s")
    v = data.vocab
    batch = fast.Batch.build(data.qa_train, v.size, v.rho, scale.model.dtype)
    ft = replace(scale.ft, rank1=True, steps=100)
    print("step  lambda_2/lambda_1  rank1: ms, error  power iteration: steps, error")
    for step in range(0, 1001, 100):
        if step:
            params, _ = finetune(params, data, scale.model, ft)
        S = fast.attention(params["W"][0], batch)
        gV = fast.run(params["W"][0], params["V"][0], batch, scale.model.lam, grad_W=False, S=S).gV_rows
        M = gV.reshape(gV.shape[0], -1)
        metrics.rank1(M)                                        # compiled, warm
        t = time.perf_counter()
        got = metrics.rank1(M).double().numpy()
        ms = 1e3 * (time.perf_counter() - t)
        Mr = M.double().numpy()
        U, s, Vt = np.linalg.svd(Mr, full_matrices=False)
        best = s[0] * np.outer(U[:, 0], Vt[0])
        scale_ = np.abs(best).max()
        u, steps = power_iteration(Mr @ Mr.T)
        old = np.outer(u, u @ Mr)
        print(f"{step:4d}  {(s[1] / s[0]) ** 2:.5f}  {ms:6.1f} ms, {np.abs(got - best).max() / scale_:.1e}"
              f"  {steps:5d}, {np.abs(old - best).max() / scale_:.1e}", flush=True)


if __name__ == "__main__":
    main()
