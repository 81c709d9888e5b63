"""Speed of the kaol training code against the targets of the issue.

Run from the repository root::

    python benchmarks/bench.py | tee benchmarks/results.txt

It measures, in one run (a few minutes on 2 CPU cores):

(r) the machine's own reference rates, in the same run: a single-thread float32 matmul
    (multiply-adds per second) and a memory copy of an array the size of ``V`` (bytes
    read plus written per second), so every rate below is also given as a fraction of
    what this machine does;
(a) one book-scale run: ``make_data(DataConfig())``, ``pretrain`` with the default
    ``Schedule`` and ``finetune`` with the default ``FTConfig``, each the best of a few runs
    (targets: the whole run < 1 s, fine-tuning < 0.05 s), with the multiply-adds per pre-training step that the
    kernel does (Lemma 1: ``m vocab_size`` per token of a row forward, twice that backward;
    tokens of a weight below ``fast.NEGLIGIBLE``, which it leaves out, not counted: their share
    at the end of pre-training), the rate achieved, and the bytes of ``V`` it moves per step (the rows of ``V`` and
    ``dL/dV`` that the inputs touch: ``V`` read, ``dL/dV`` written, then read with ``V``
    and ``V`` written by the update) and that rate;
(b) the dense autograd reference of ``kaol.dense`` (random orthonormal embeddings in
    ``d`` = 2048, Sec. 2 as written) against the token-basis fast path of ``kaol.fast``,
    per pre-training step on the same data in float64, and the largest difference of
    their losses over the compared steps (target: fast >= 100x dense, equal results);
(c) a sweep of 64 runs (seeds 0..63, each with its own data draw), a reduced number of
    steps: one run at a time as the tasks of a pool of one and of two warm processes, as
    ``kaol.parallel`` runs a grid (target: the second core >= 1.8x the throughput of one);
    and, for comparison, the 64 runs in turn in one fresh process (``pretrain`` and
    ``finetune`` on the list of runs) with one and with two threads (``NUMBA_NUM_THREADS``:
    each run's chunks of rows in parallel);
(d) the peak resident memory of a fresh process that pre-trains the 64 runs of (c) in turn
    (keeping the parameters of all), and of one that pre-trains a single run.

Options: ``--threads N`` (torch threads, default 1), ``--d`` (dense dimension),
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

import numba
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kaol import dense, fast  # noqa: E402
from kaol.data import DataConfig, make_data  # noqa: E402
from kaol.model import ModelConfig  # noqa: E402
from kaol.train import FTConfig, Schedule, finetune, pretrain  # noqa: E402

B_RUNS = 64
PT_REPEATS, FT_REPEATS = 3, 25
"""(a) takes the best of this many runs: on a shared machine one run's wall time also holds
the waits for a core that other jobs cause."""


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


def reference_rates() -> tuple[float, float, list[Row]]:
    """(r) Multiply-adds per second of a single-thread float32 matmul, and bytes per second
    (read + written) of a copy of an array the size of ``V`` at book scale."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    A = torch.randn(1024, 1024)
    A @ A
    reps, start = 10, time.perf_counter()
    for _ in range(reps):
        A @ A
    mac = reps * 1024 ** 3 / (time.perf_counter() - start)
    torch.set_num_threads(threads)
    vocab_size, m = make_data(DataConfig()).vocab.size, ModelConfig().m
    src = np.random.default_rng(0).standard_normal(vocab_size * m * vocab_size).astype(np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    reps, start = 200, time.perf_counter()
    for _ in range(reps):
        np.copyto(dst, src)
    copy = reps * 2 * src.nbytes / (time.perf_counter() - start)
    return mac, copy, [Row("(r) reference: float32 matmul 1024^3, one thread", f"{mac / 1e9:.1f} GMAC/s"),
                       Row(f"(r) reference: copy of {src.nbytes / 2 ** 20:.1f} MiB (the size of V)",
                           f"{copy / 1e9:.1f} GB/s (read + write)")]


def step_work(data, model: ModelConfig, params: dict[str, torch.Tensor]) -> tuple[float, float, float]:
    """Multiply-adds and bytes of ``V`` moved by one pre-training step of ``kaol.fast`` at
    ``params`` (see (a)), and the fraction of tokens it leaves out (``fast.NEGLIGIBLE``)."""
    s, vocab_size, m = data.pretrain, data.vocab.size, model.m
    batch = fast.Batch.build(s, vocab_size, data.vocab.rho, model.dtype)
    tokens = float(fast.used_tokens(fast.attention(params["W"][0], batch), batch).sum())
    rows = len(torch.unique(s.tokens[s.mask]))
    size = torch.finfo(model.dtype).bits // 8
    return 3 * tokens * m * vocab_size, 5 * rows * m * vocab_size * size, 1 - tokens / float(s.mask.sum())


def book_run(mac_ref: float, copy_ref: float) -> list[Row]:
    """(a) One pre-training + fine-tuning run at the book's default scale."""
    data = make_data(DataConfig())
    pretrain(data, schedule=Schedule(T1=1, T2=2, T=3))                  # warm-up (first-call costs)
    finetune(*pretrain(data, schedule=Schedule(T1=1, T2=2, T=3))[:1], data, cfg=FTConfig(steps=2))
    t_pt, (params, _) = min((timed(pretrain, data) for _ in range(PT_REPEATS)), key=lambda r: r[0])
    t_ft = min(timed(finetune, params, data)[0] for _ in range(FT_REPEATS))
    total = t_pt + t_ft
    s, f = Schedule(), FTConfig()
    macs, nbytes, left_out = step_work(data, ModelConfig(), params)
    mac_rate, byte_rate = macs * s.T / t_pt, nbytes * s.T / t_pt
    return [Row(f"(a) book run: pre-training, {s.T} steps (best of {PT_REPEATS})",
                f"{t_pt:.3f} s ({1e3 * t_pt / s.T:.2f} ms/step)"),
            Row("(a) pre-training step: multiply-adds, rate", f"{macs / 1e6:.1f} M/step ({100 * left_out:.0f}% of "
                f"tokens negligible at the end), {mac_rate / 1e9:.2f} GMAC/s = {mac_rate / mac_ref:.2f} of the matmul "
                "reference"),
            Row("(a) pre-training step: bytes of V moved, rate", f"{nbytes / 2 ** 20:.1f} MiB/step, "
                f"{byte_rate / 1e9:.2f} GB/s = {byte_rate / copy_ref:.2f} of the copy reference"),
            Row(f"(a) book run: fine-tuning, {f.steps} steps (best of {FT_REPEATS})", f"{t_ft:.3f} s ({1e3 * t_ft / f.steps:.2f} ms/step)",
                "< 0.05 s", _yes(t_ft < 0.05)),
            Row("(a) book run: PT + FT total, wall time", f"{total:.3f} s", "< 1 s", _yes(total < 1.0))]


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


_SWEEP = """
import sys, time, torch
sys.path.insert(0, {root!r})
torch.set_num_threads(1)
from kaol import DataConfig, FTConfig, Schedule, finetune, make_data, pretrain
ds = [make_data(DataConfig(seed=s)) for s in range({B})]
warm, _ = pretrain(ds[:1], schedule=Schedule(T1=1, T2=2, T=2))
finetune(warm, ds[:1], cfg=FTConfig(steps=2))
start = time.perf_counter()
params, _ = pretrain(ds, schedule=Schedule(T1=min(5, {steps}), T2=min(10, {steps}), T={steps}), seed=list(range({B})))
finetune(params, ds, cfg=FTConfig(steps={steps}))
print(time.perf_counter() - start)
"""


def sweep_threads(steps: int) -> list[Row]:
    """(c) The 64 runs in turn in one fresh process, pre-training then fine-tuning, with one and
    with two threads: what the second core adds inside a run (no target: see the processes)."""
    code = _SWEEP.format(root=str(ROOT), B=B_RUNS, steps=steps)
    times = {}
    for threads in (1, 2):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, "NUMBA_NUM_THREADS": str(threads)})
        times[threads] = float(out.stdout.split()[-1])
    n = 2 * B_RUNS * steps
    ratio = times[1] / times[2]
    return [Row(f"(c) sweep: {B_RUNS} runs in turn in one process, {steps} PT + {steps} FT steps, {t} "
                f"thread{'s' * (t > 1)}", f"{times[t]:.2f} s = {n / times[t]:.0f} run-steps/s") for t in (1, 2)] + \
        [Row("(c) sweep in one process: throughput 2 threads / 1 thread", f"{ratio:.2f}x")]


def _warm_worker() -> None:
    """Pool initializer of (c): one torch and one numba thread per worker (as ``kaol.parallel``
    runs a group), and the numba kernels loaded before the clock starts."""
    torch.set_num_threads(1)
    numba.set_num_threads(1)
    d = make_data(DataConfig(seed=0))
    params, _ = pretrain([d], schedule=Schedule(T1=1, T2=2, T=2))
    finetune(params, [d], cfg=FTConfig(steps=2))


def _one_run(seed: int, steps: int) -> float:
    """(c) One run of the sweep, alone (B = 1): its data draw, pre-training, fine-tuning."""
    d = make_data(DataConfig(seed=seed))
    params, _ = pretrain([d], schedule=Schedule(T1=min(5, steps), T2=min(10, steps), T=steps), seed=[seed])
    _, hist = finetune(params, [d], cfg=FTConfig(steps=steps))
    return float(hist.loss[-1, 0])


def sweep_processes(steps: int) -> list[Row]:
    """(c) The same 64 runs one at a time, as tasks of a pool of one and of two warm worker
    processes (spawned, one thread each, as ``kaol.parallel.run_all`` runs a grid's groups):
    the throughput the second core adds."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    times, losses = {}, {}
    for workers in (1, 2):
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_warm_worker) as ex:
            list(ex.map(time.sleep, [0.5] * workers))          # every worker started and warm
            start = time.perf_counter()
            losses[workers] = list(ex.map(_one_run, range(B_RUNS), [steps] * B_RUNS))
            times[workers] = time.perf_counter() - start
    n = 2 * B_RUNS * steps
    ratio = times[1] / times[2]
    same = losses[1] == losses[2]
    return [Row(f"(c) sweep: the {B_RUNS} runs one at a time, {w} process{'es' * (w > 1)}",
                f"{times[w]:.2f} s = {n / times[w]:.0f} run-steps/s") for w in (1, 2)] + \
        [Row("(c) sweep: throughput 2 processes / 1 process", f"{ratio:.2f}x", ">= 1.8x", _yes(ratio >= 1.8)),
         Row("(c) final losses, 1 process against 2", "bit-identical" if same else "DIFFER", "equal",
             _yes(same))]


def peak_memory(threads: int, steps: int = 3) -> list[Row]:
    """(d) Peak resident memory (VmHWM of /proc/self/status; ``ru_maxrss`` would carry the
    parent's peak across fork/exec) of a fresh process pre-training the 64 runs of (c) in turn
    for a few steps, and of one pre-training a single run, for reference."""
    rows = []
    for B in (1, B_RUNS):
        code = (f"import sys, torch; sys.path.insert(0, {str(ROOT)!r}); torch.set_num_threads({threads});"
                f"from kaol import DataConfig, Schedule, make_data, pretrain;"
                f"ds = [make_data(DataConfig(seed=s)) for s in range({B})];"
                f"pretrain(ds, schedule=Schedule(T1=1, T2=2, T={steps}), seed=list(range({B})));"
                f"print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        kib = int(out.stdout.split()[-1])
        vocab_size = make_data(DataConfig()).vocab.size
        par = B * (vocab_size * vocab_size + vocab_size * ModelConfig().m * vocab_size) * 4 / 2 ** 20
        rows.append(Row(f"(d) peak RSS, pre-training {B} run{'s' * (B > 1)} (fresh process)",
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
          f"{os.cpu_count()} CPUs, {args.threads} torch threads, numba threads {numba.get_num_threads()}, load average before start "
          f"{os.getloadavg()[0]:.1f} (other jobs share the machine)")
    start = time.perf_counter()
    mac_ref, copy_ref, rows = reference_rates()
    rows += book_run(mac_ref, copy_ref)
    rows += dense_vs_fast(args.d)
    rows += sweep_processes(args.steps)
    rows += sweep_threads(args.steps)
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
