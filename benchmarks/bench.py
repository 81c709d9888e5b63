"""Speed of the kaol training code against the targets of the issue.

Run from the repository root::

    python benchmarks/bench.py | tee benchmarks/results.txt

It measures, in one run (a few minutes on 2 CPU cores):

(a) one book-scale run: ``make_data(DataConfig())``, ``pretrain`` with the default
    ``Schedule`` and ``finetune`` with the default ``FTConfig`` (target: < 1 s);
(b) the dense autograd reference of ``kaol.dense`` (random orthonormal embeddings in
    ``d`` = 2048, Sec. 2 as written) against the token-basis fast path of ``kaol.fast``,
    per pre-training step on the same data in float64, and the largest difference of
    their losses over the compared steps (target: fast >= 100x dense, equal results);
(c) 64 runs (seeds 0..63, each with its own data draw) trained as one batch against the
    same 64 runs one by one, with a reduced number of steps (target: batched >= 4x);
(d) the peak resident memory of a fresh process that runs the batched pre-training of (c).

Options: ``--threads N`` (torch threads, default 1: on a shared, oversubscribed machine two
OpenMP threads per op spin and wait on each other and run many times slower), ``--d`` (dense dimension),
``--steps`` (steps per run in (c), default 10).
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kaol import dense  # noqa: E402
from kaol.data import DataConfig, make_data  # noqa: E402
from kaol.model import ModelConfig  # noqa: E402
from kaol.train import FTConfig, Schedule, finetune, pretrain  # noqa: E402

B_RUNS = 64


@dataclass
class Row:
    """One line of the results table: what was measured, its value, and the target check."""

    name: str
    value: str
    target: str = ""
    met: str = ""


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    """Wall time (s) of one call and its result."""
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


def book_run() -> list[Row]:
    """(a) One pre-training + fine-tuning run at the book's default scale."""
    data = make_data(DataConfig())
    pretrain(data, schedule=Schedule(T1=1, T2=2, T=3))                  # warm-up (first-call costs)
    t_pt, (params, _) = timed(pretrain, data)
    t_ft, _ = timed(finetune, params, data)
    cpu = time.process_time()
    pretrain(data)
    finetune(params, data)
    cpu = time.process_time() - cpu
    total = t_pt + t_ft
    s, f = Schedule(), FTConfig()
    return [Row(f"(a) book run: pre-training, {s.T} steps", f"{t_pt:.3f} s ({1e3 * t_pt / s.T:.2f} ms/step)"),
            Row(f"(a) book run: fine-tuning, {f.steps} steps", f"{t_ft:.3f} s ({1e3 * t_ft / f.steps:.2f} ms/step)"),
            Row("(a) book run: PT + FT total, wall time", f"{total:.3f} s", "< 1 s", _yes(total < 1.0)),
            Row("(a) book run: PT + FT, CPU time of a second run", f"{cpu:.3f} s (what a quiet core would take)",
                "< 1 s", _yes(cpu < 1.0))]


def dense_vs_fast(d: int, steps: int = 4) -> list[Row]:
    """(b) Dense autograd reference in ``d`` dimensions vs the fast path, float64, same data."""
    data = make_data(DataConfig())
    model = ModelConfig(dtype=torch.float64)
    schedule = Schedule(T1=1, T2=2, T=steps)
    res = dense.dense_pretrain(data, model, schedule, d=d, seed=0)
    fast_steps = 50
    pretrain(data, model, Schedule(T1=1, T2=2, T=3), log_every=10 ** 6)  # warm-up
    t_fast, _ = timed(pretrain, data, model, Schedule(T1=5, T2=25, T=fast_steps), log_every=10 ** 6)
    _, hist = pretrain(data, model, schedule, seed=0, log_every=1)
    diff = float(np.abs(res.loss - np.array(hist.loss)[:, 0]).max())
    per_dense = float(np.median(res.step_times[1:] if len(res.step_times) > 1 else res.step_times))
    per_fast = t_fast / fast_steps
    ratio = per_dense / per_fast
    return [Row(f"(b) dense reference, d = {d}, float64", f"{1e3 * per_dense:.1f} ms/step (median of {steps - 1})"),
            Row(f"(b) fast path, token basis T = {data.vocab.size}, float64", f"{1e3 * per_fast:.2f} ms/step "
                f"(mean of {fast_steps})"),
            Row("(b) speed-up fast / dense", f"{ratio:.0f}x", ">= 100x", _yes(ratio >= 100)),
            Row(f"(b) max |loss difference| over {steps + 1} losses", f"{diff:.1e}", "equal (< 1e-9)", _yes(diff < 1e-9))]


def _datas(n: int) -> list:
    return [make_data(DataConfig(seed=s)) for s in range(n)]


def batched_vs_sequential(steps: int) -> list[Row]:
    """(c) B = 64 runs as one batch vs one by one: pre-training and fine-tuning throughput."""
    datas, seeds = _datas(B_RUNS), list(range(B_RUNS))
    schedule = Schedule(T1=min(5, steps), T2=min(10, steps), T=steps)
    ft = FTConfig(steps=steps)
    pretrain(datas[0], schedule=Schedule(T1=1, T2=2, T=3))              # warm-up
    t_pb, (pb, _) = timed(pretrain, datas, schedule=schedule, seed=seeds)
    t_fb, _ = timed(finetune, pb, datas, cfg=ft)
    t_ps = t_fs = 0.0
    for d, s in zip(datas, seeds):
        t, (p1, _) = timed(pretrain, d, schedule=schedule, seed=s)
        t_ps += t
        t, _ = timed(finetune, p1, d, cfg=ft)
        t_fs += t
    n = B_RUNS * steps
    rows = []
    for what, tb, ts in [("pre-training", t_pb, t_ps), ("fine-tuning", t_fb, t_fs)]:
        ratio = ts / tb
        rows += [Row(f"(c) {what}: {B_RUNS} runs batched, {steps} steps", f"{tb:.2f} s = {n / tb:.0f} run-steps/s"),
                 Row(f"(c) {what}: {B_RUNS} runs one by one", f"{ts:.2f} s = {n / ts:.0f} run-steps/s"),
                 Row(f"(c) {what}: batched / sequential throughput", f"{ratio:.1f}x", ">= 4x", _yes(ratio >= 4))]
    return rows


def peak_memory(threads: int, steps: int = 3) -> list[Row]:
    """(d) Peak resident memory (VmHWM of /proc/self/status; ``ru_maxrss`` would carry the
    parent's peak across fork/exec) of a fresh process running the batched pre-training of
    (c) for a few steps, and of one running a single run, for reference."""
    rows = []
    for B in (1, B_RUNS):
        code = (f"import sys, torch; sys.path.insert(0, {str(ROOT)!r}); torch.set_num_threads({threads});"
                f"from kaol import DataConfig, Schedule, make_data, pretrain;"
                f"ds = [make_data(DataConfig(seed=s)) for s in range({B})];"
                f"pretrain(ds, schedule=Schedule(T1=1, T2=2, T={steps}), seed=list(range({B})));"
                f"print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        kib = int(out.stdout.split()[-1])
        T = make_data(DataConfig()).vocab.size
        par = B * (T * T + T * ModelConfig().m * T) * 4 / 2 ** 20
        rows.append(Row(f"(d) peak RSS, pre-training B = {B} (fresh process)",
                        f"{kib / 1024:.0f} MiB (parameters {par:.0f} MiB)"))
    return rows


def _yes(ok: bool) -> str:
    return "yes" if ok else "NO"


def table(rows: list[Row]) -> str:
    w = [max(len(getattr(r, f)) for r in rows + [Row("measurement", "value", "target", "met")])
         for f in ("name", "value", "target", "met")]
    head = Row("measurement", "value", "target", "met")
    line = lambda r: "  ".join(getattr(r, f).ljust(n) for f, n in zip(("name", "value", "target", "met"), w))
    return "\n".join([line(head), "  ".join("-" * n for n in w)] + [line(r) for r in rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--d", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"kaol benchmark: torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, {args.threads} torch threads, load average before start "
          f"{os.getloadavg()[0]:.1f} (other jobs share the machine)")
    start = time.perf_counter()
    rows = book_run()
    rows += dense_vs_fast(args.d)
    rows += batched_vs_sequential(args.steps)
    rows += peak_memory(args.threads)
    print(table(rows))
    print(f"(c) uses {args.steps} steps per run instead of the book's {Schedule().T} + {FTConfig().steps}, "
          f"to keep the benchmark short; (b) compares float64, the other parts run in float32.")
    wall = time.perf_counter() - start
    use = resource.getrusage(resource.RUSAGE_SELF)
    print(f"total benchmark time {wall:.0f} s, of which this process ran on a CPU {use.ru_utime + use.ru_stime:.0f} s "
          f"({100 * (use.ru_utime + use.ru_stime) / wall:.0f}%: the rest is waiting for a core); load average at the "
          f"end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
