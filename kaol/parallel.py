"""Sec. 7's grids run in parallel: each grid is split into independent ``(K, R)`` groups (one
pre-training per seed, all ``N~_f`` fine-tuned together, see ``kaol.sweep.grid``), and
``run_all`` computes the groups on local processes (``concurrent.futures``), on a Dask
cluster or on Ray. Every group runs single-threaded, so its results are bit-identical
wherever it runs.
"""
from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, replace
from itertools import product
from typing import Callable, Iterable

import numba
import pandas as pd
import torch

from . import checks
from .data import DataConfig, make_data
from .model import ModelConfig
from .scales import Scale
from .sweep import grid
from .train import FTConfig, FTHistory, Schedule

ENGINES = ("local", "dask", "ray")


@dataclass(frozen=True)
class Group:
    """One independent piece of a grid: all seeds and all ``N~_f`` of one ``(K, R)``."""

    base: DataConfig
    K: int
    R: int
    N_ft: tuple[int, ...]
    seeds: tuple[int, ...]
    model: ModelConfig
    schedule: Schedule
    ft: FTConfig

    def __str__(self) -> str:
        return f"K={self.K} R={self.R} {'rank-1' if self.ft.rank1 else 'full'} ({len(self.seeds)} seeds)"


def run_group(g: Group) -> tuple[pd.DataFrame, dict[tuple[int, int, int, int], FTHistory]]:
    """``kaol.sweep.grid`` on one group, single-threaded (bit-identical wherever it runs)."""
    with one_thread():
        return grid(g.base, K=[g.K], N_ft=list(g.N_ft), R=[g.R], seeds=list(g.seeds), model=g.model,
                    schedule=g.schedule, ft=g.ft)


@contextmanager
def one_thread():
    """torch and numba on one thread inside, restored after: each worker of a pool keeps to
    its core (numba's default of one thread per core, in every worker, oversubscribes the
    cores several times over); results are bit-identical at any thread count."""
    threads = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(1)
    numba.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads[0])
        numba.set_num_threads(threads[1])


def run_all(fn: Callable, items: list, engine: str = "local", address: str | None = None,
            workers: int | None = None, log: Callable[[str], None] | None = None) -> list:
    """``[fn(x) for x in items]``, computed in parallel by ``engine``, in the order of ``items``.

    ``local``: a ``ProcessPoolExecutor`` (spawned workers; ``workers=1`` runs in this process);
    ``dask``: ``Client.map`` on a ``dask.distributed.Client(address)`` (no address: a local
    cluster), closed at the end; ``ray``: ``ray.remote`` tasks, on the Ray this process is already
    connected to, else on ``ray.init(address)``, shut down at the end. Each item's end is reported
    through ``log`` (default: stderr).
    """
    checks.choice("engine", engine, ENGINES)
    if workers is not None:
        workers = checks.integer("workers", workers, lo=1)
    if address is not None:
        checks.of_type("address", address, str)
        if engine == "local":
            raise ValueError(f"address = {address!r} is ignored by engine = 'local': pass engine='dask' or 'ray', "
                             f"or drop the address")
    items = list(items)
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    start, out, finished = time.perf_counter(), [None] * len(items), []

    def done(i: int, result: object) -> None:
        out[i] = result
        finished.append(i)
        log(f"[{len(finished)}/{len(items)}] {items[i]} done after {time.perf_counter() - start:.0f} s")

    if engine == "local" and (workers == 1 or len(items) <= 1):
        for i, x in enumerate(items):
            done(i, fn(x))
    elif engine == "local":
        import multiprocessing
        n = min(workers or os.cpu_count() or 1, len(items))
        with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_die_with_parent, initargs=(os.getpid(),)) as ex:
            futures = {ex.submit(fn, x): i for i, x in enumerate(items)}
            for f in as_completed(futures):
                done(futures[f], f.result())
    elif engine == "dask":
        from dask.distributed import Client
        from dask.distributed import as_completed as dask_completed
        if address is not None:
            _reachable(address, "Dask scheduler")
        with Client(address, timeout=CONNECT_TIMEOUT) as client:
            futures = client.map(fn, items, pure=False)
            index = {f.key: i for i, f in enumerate(futures)}
            for f in dask_completed(futures):
                done(index[f.key], f.result())
    else:
        import ray
        owned = not ray.is_initialized()
        if owned:
            if address not in (None, "auto", "local"):
                _reachable(address, "Ray cluster")
            ray.init(address=address)
        try:
            remote = ray.remote(fn)
            pending = [remote.remote(x) for x in items]
            index = {r: i for i, r in enumerate(pending)}
            while pending:
                [ready], pending = ray.wait(pending, num_returns=1)
                done(index[ready], ray.get(ready))
        finally:
            if owned:
                ray.shutdown()
    return out


CONNECT_TIMEOUT = 10
"""Seconds to wait for a Dask scheduler or a Ray cluster before giving up with its address."""


def _reachable(address: str, what: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Fail fast, naming ``address``, when nothing listens there (instead of minutes of retries)."""
    from urllib.parse import urlsplit

    parts = urlsplit(address if "://" in address else "tcp://" + address)
    if parts.scheme not in ("tcp", "tls", "ray", "http", "https", "ws", "wss"):
        return                                   # in-process or other transports: the client's own timeout
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host or port is None:
        raise ValueError(f"address = {address!r} is not a {what} address of the form [scheme://]host:port")
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        raise ConnectionError(f"cannot reach the {what} at address = {address!r} within {timeout} s ({err}): "
                              f"start it, or check the address") from None


def _die_with_parent(parent: int) -> None:
    """Pool worker initializer: stop this worker when the process that started it dies (Linux:
    ``PR_SET_PDEATHSIG``; everywhere: a thread that watches ``os.getppid()``)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="kaol-parent-watch").start()


def run_grid(scale: Scale, pairs: Iterable[tuple[int, int]], rank1: bool = False, **engine
             ) -> tuple[pd.DataFrame, dict[tuple[int, int, int, int], FTHistory]]:
    """The ``N~_f x seeds`` grid of ``scale`` at every ``(K, R)`` of ``pairs``, one parallel task each,
    the largest started first (``work``), so that no core is left alone with a large group at the
    end; the table keeps the order of ``pairs``."""
    return _collect(_run_groups([_groups(scale, pairs, rank1)], **engine))


def _run_groups(lists: list[list[Group]], **engine) -> list:
    """``run_group`` on every group of ``lists``, in one pool: the lists one after another, each
    list's groups largest first (``work``), so that no core is left alone with a large group at
    the end; the results in the order given."""
    items = [(i, j) for i, groups in enumerate(lists)
             for j in sorted(range(len(groups)), key=lambda j: -work(groups[j]))]
    out: list = [[None] * len(groups) for groups in lists]
    for (i, j), r in zip(items, run_all(run_group, [lists[i][j] for i, j in items], **engine)):
        out[i][j] = r
    return [r for rs in out for r in rs]


def work(g: Group) -> int:
    """A group's cost in multiply-adds per neuron, roughly: each step reads ``V``'s slice of every
    token of every row three times with the gradient (forward, ``dL/dV``, ``dS``), and fine-tuning
    also evaluates the unseen facts at every step; a rank-1 step adds the Gram matrix of the
    ``N~_f + 1`` gradient rows (half of it)."""
    d = make_data(g.base.with_(K=g.K, R=g.R, N_ft=0))
    n_pt = int(d.pretrain.mask.sum())
    n_test = g.base.N_f + g.base.N_r
    ft = sum(3 * 2 * n + 2 * (n_test - n) + ((n + 1) ** 2 // 2 if g.ft.rank1 else 0) for n in g.N_ft)
    return len(g.seeds) * d.vocab.size * (3 * g.schedule.T * n_pt + g.ft.steps * ft)


def _groups(scale: Scale, pairs: Iterable[tuple[int, int]], rank1: bool = False) -> list[Group]:
    """One ``Group`` per distinct ``(K, R)`` of ``pairs``, every cell checked before any run."""
    ft = replace(scale.ft, rank1=rank1)
    pairs = list(dict.fromkeys(pairs))
    if not pairs:
        raise ValueError("pairs = []: pass at least one (K, R)")
    for k, r in pairs:
        for n in scale.N_ft:
            scale.base.with_(K=k, R=r, N_ft=n)   # K <= R and N_ft <= N_f, said before any run
    return [Group(scale.base, k, r, scale.N_ft, scale.seeds, scale.model, scale.schedule, ft) for k, r in pairs]


def _collect(results: list) -> tuple[pd.DataFrame, dict[tuple[int, int, int, int], FTHistory]]:
    """The groups' tables as one, and their curves in one dict."""
    curves = {key: h for _, c in results for key, h in c.items()}
    return pd.concat([df for df, _ in results], ignore_index=True), curves


def pairs_2a(scale: Scale) -> list[tuple[int, int]]:
    """Fig. 2a/3a: every ``K`` at ``R = scale.base.R``."""
    return [(k, scale.base.R) for k in scale.K]


def pairs_2b(scale: Scale) -> list[tuple[int, int]]:
    """Fig. 2b/3b and Remark 3: every ``R`` for the ``K`` values ``scale.K_of_R``."""
    return list(product(scale.K_of_R, scale.R))


def fig2a(scale: Scale, **engine) -> tuple[pd.DataFrame, dict]:
    """Fig. 2a/3a: accuracy over ``K x N~_f`` at ``R = scale.base.R``."""
    return run_grid(scale, pairs_2a(scale), **engine)


def fig2b(scale: Scale, **engine) -> tuple[pd.DataFrame, dict]:
    """Fig. 2b/3b and Remark 3: accuracy over ``R`` for the ``K`` values ``scale.K_of_R``."""
    return run_grid(scale, pairs_2b(scale), **engine)


def rank1(scale: Scale, **engine) -> tuple[pd.DataFrame, dict]:
    """App. H: the Fig. 2a grid fine-tuned in full and with rank-1 updates (column ``ft``).

    Both kinds of group go to one pool, the full ones first, each kind largest first: no core
    waits for the last full group, and each rank-1 group, started when a worker frees, finds its
    pre-training in the cache (or, with more workers than full groups, computes the same one)."""
    full, low = _groups(scale, pairs_2a(scale)), _groups(scale, pairs_2a(scale), rank1=True)
    results = _run_groups([full, low], **engine)
    (df_full, c_full), (df_low, c_low) = _collect(results[:len(full)]), _collect(results[len(full):])
    return pd.concat([df_full, df_low], ignore_index=True), {**{k + ("full",): v for k, v in c_full.items()},
                                                               **{k + ("rank1",): v for k, v in c_low.items()}}
