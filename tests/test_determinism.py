"""Bit-for-bit reproducibility of training (Sec. 4, App. H) across processes, thread counts and CPUs.

Each case runs a short pre-training and fine-tuning (full and rank-1, float32) in a fresh
Python process and prints a digest of every parameter and every logged curve. The
simplified model must give identical digests (a) in two fresh processes, (b) with one or
two threads (numba and torch) and (c) with numba compiled for a generic x86-64 CPU (no
AVX, no FMA; fresh cache) and torch's kernels pinned to their plain C versions, which is
what another CPU would run. The other architectures (autograd) must pass (a) and (b).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow   # every test here starts fresh Python processes

ROOT = Path(__file__).resolve().parents[1]

_SCRIPT = """
import hashlib, json, sys
import numpy as np, torch
torch.set_num_threads(int(sys.argv[1]))
from kaol import FTConfig, ModelConfig, Schedule, finetune, make_data, pretrain
from tests.reference import SMALL

def digest(x):
    a = np.ascontiguousarray(x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x))
    return hashlib.sha256(a.tobytes()).hexdigest()[:16]

datas = [make_data(SMALL.with_(seed=s)) for s in (0, 1)]
out = {}
for arch, steps in [("simplified", 40), ("uniform_mlp", 8), ("attention_only", 8), ("standard", 4)]:
    model = ModelConfig(arch=arch)
    params, ph = pretrain(datas, model, Schedule(eta=(5.0, 20.0, 10.0), T1=2, T2=steps // 2, T=steps),
                          seed=[0, 1], log_every=5)
    out.update({f"{arch} pt {k}": digest(v) for k, v in params.items()})
    out.update({f"{arch} pt history {k}": digest(v) for k, v in ph.arrays().items()})
    for rank1 in (False, True):
        ft, fh = finetune(params, datas, model, FTConfig(eta=10.0, steps=steps // 2, rank1=rank1))
        out.update({f"{arch} ft rank1={rank1} {k}": digest(v) for k, v in ft.items()})
        out.update({f"{arch} ft rank1={rank1} {f}": digest(getattr(fh, f)) for f in ("loss", "pred")})
print(json.dumps(out))
"""


def _digests(threads: int = 1, **env: str) -> dict[str, str]:
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(threads)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT), "NUMBA_NUM_THREADS": str(threads),
                                            **env})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def reference() -> dict[str, str]:
    return _digests()


def _differ(a: dict[str, str], b: dict[str, str], archs: tuple[str, ...]) -> list[str]:
    keys = [k for k in a if k.startswith(archs)]
    assert keys and set(keys) <= set(b)
    return [k for k in keys if a[k] != b[k]]


ALL = ("simplified", "uniform_mlp", "attention_only", "standard")


def test_fresh_processes_agree(reference: dict[str, str]) -> None:
    """(a) Two fresh processes give identical parameters and curves, every architecture."""
    assert _differ(reference, _digests(), ALL) == []


def test_thread_count_does_not_matter(reference: dict[str, str]) -> None:
    """(b) Two threads (numba and torch) give what one thread gives, every architecture."""
    assert _differ(reference, _digests(threads=2), ALL) == []


def test_generic_cpu_agrees(reference: dict[str, str], tmp_path: Path) -> None:
    """(c) The simplified model's kernels compiled for a generic x86-64 CPU (fresh numba
    cache), with torch on its default (non-vectorised) kernels, give the same bits."""
    other = _digests(NUMBA_CPU_NAME="generic", ATEN_CPU_CAPABILITY="default", NUMBA_CACHE_DIR=str(tmp_path))
    assert _differ(reference, other, ("simplified",)) == []
