"""The synthetic experiments of Sec. 7 and App. A at two scales, run in parallel, saved as tidy tables.

Figures (the paper's numbering):

* ``fig2a``: OOD accuracy over multiplicity ``K`` x fine-tuning size ``N~_f`` (Fig. 2a/3a);
* ``fig2b``: OOD accuracy over the number ``R`` of relation phrases (Fig. 2b/3b, Remark 3);
* ``bound``: both grids with Theorem 2's bound ``exp(-N~_f K^2 log R / (2 R^2))`` beside the error;
* ``rank1``: the ``fig2a`` grid fine-tuned in full and with rank-1 updates (App. H);
* ``table3``: the four architectures of App. A on the three-token data and with the context token.

This file is the command line; the pieces are one module each: ``kaol.scales`` (the sizes,
``SCALES``), ``kaol.parallel`` (the grids split into ``(K, R)`` groups, run on local
processes, on a Dask cluster or on Ray), ``kaol.analysis`` (Theorem 2's bound and the
per-cell summary), ``kaol.table3`` (App. A) and ``kaol.plots`` (chapter 6's figures).
Results are cached on disk by ``kaol.cache``, so a group computed once is read back by
every later call. Command line::

    python -m kaol.experiments fig2a --scale paper --seeds 5 --out results/fig2a_paper
    python -m kaol.experiments bound --scale book --engine dask --address tcp://host:8786

writes ``OUT.csv`` (one row per run) and ``OUT.json`` (the command, the git commit, the
configuration with its seeds, and the package versions).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pandas as pd
import torch

from . import checks
from .analysis import with_bound
from .parallel import ENGINES, fig2a, fig2b, pairs_2a, pairs_2b, rank1, run_grid
from .scales import SCALES, Scale
from .table3 import table3

FIGURES = ("fig2a", "fig2b", "bound", "rank1", "table3")


def versions() -> dict[str, str]:
    """Versions of Python, kaol and the packages the results depend on."""
    out = {"python": platform.python_version()}
    for p in ("kaol", "torch", "numpy", "pandas"):
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = "not installed"
    return out


def commit() -> str:
    """The git commit of the code that runs, with ``+changes`` when files of ``kaol/`` differ from
    it; ``"unknown"`` outside a git checkout."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "kaol"], cwd=root, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+changes" if dirty else "")


def _jsonable(x: object) -> object:
    if isinstance(x, torch.dtype):
        return str(x)
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def out_paths(out: str | Path) -> tuple[Path, Path]:
    """``(OUT.csv, OUT.json)`` for the output path ``out`` given without suffix (``name_v1.5`` gives
    ``name_v1.5.csv``; a trailing ``.csv`` or ``.json`` is dropped), its folder created and checked
    writable, so a bad path is said before any computation."""
    raw = str(out)
    if not raw.strip() or raw.endswith(("/", os.sep)):
        raise ValueError(f"out = {raw!r} must name a file (without suffix), e.g. results/fig2a_book")
    out = Path(raw).expanduser()
    if out.suffix in (".csv", ".json"):
        out = out.with_suffix("")
    csv, meta = out.parent / (out.name + ".csv"), out.parent / (out.name + ".json")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"out = {raw!r}: cannot create the folder {out.parent} ({err})") from None
    for p in (csv, meta):
        if p.is_dir():
            raise ValueError(f"out = {raw!r}: {p} is a folder")
    if not os.access(out.parent, os.W_OK):
        raise ValueError(f"out = {raw!r}: the folder {out.parent} is not writable")
    return csv, meta


def _atomic_pair(files: list[tuple[Path, bytes]]) -> None:
    """Write every file to a temporary file beside it, then rename them all (no half-written file)."""
    tmps = []
    try:
        for path, data in files:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
            tmps.append(tmp)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        for (path, _), tmp in zip(files, tmps):
            os.replace(tmp, path)
    finally:
        for tmp in tmps:
            if os.path.exists(tmp):
                os.remove(tmp)


def save(df: pd.DataFrame, out: str | Path, figure: str, scale_name: str, scale: Scale,
         seconds: float, engine: str) -> tuple[Path, Path]:
    """Write ``out.csv`` (tidy, one row per run) and ``out.json`` (configuration, versions, the CSV's
    SHA-256), both through temporary files renamed at the end, so a killed run leaves the old pair."""
    import hashlib

    csv, meta = out_paths(out)
    text = df.drop(columns=[c for c in ("loss_curve", "curve_steps") if c in df]).to_csv(index=False).encode()
    info = {"figure": figure, "scale": scale_name, "config": _jsonable(asdict(scale)), "rows": len(df),
            "seconds": round(seconds, 1), "engine": engine, "versions": versions(),
            "csv": csv.name, "csv_sha256": hashlib.sha256(text).hexdigest(),
            "command": "python -m kaol.experiments " + " ".join(sys.argv[1:]), "commit": commit()}
    _atomic_pair([(csv, text), (meta, json.dumps(info, indent=1, default=str).encode())])
    return csv, meta


def compute(figure: str, scale: Scale, **engine) -> pd.DataFrame:
    """The table of one figure (for ``bound``: both grids, with the bound and the errors)."""
    checks.choice("figure", figure, FIGURES)
    checks.of_type("scale", scale, Scale)
    if figure == "fig2a":
        return fig2a(scale, **engine)[0]
    if figure == "fig2b":
        return fig2b(scale, **engine)[0]
    if figure == "bound":
        return with_bound(run_grid(scale, pairs_2a(scale) + pairs_2b(scale), **engine)[0])
    if figure == "rank1":
        return rank1(scale, **engine)[0]
    if figure == "table3":
        return table3(scale, **engine)
    raise ValueError(f"figure = {figure!r} is not one of {FIGURES}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kaol.experiments", description=__doc__.split("\n")[0])
    p.add_argument("figure", choices=FIGURES)
    p.add_argument("--scale", choices=tuple(SCALES), default="book")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default: the scale's)")
    p.add_argument("--out", default=None, help="output path without suffix (default results/FIGURE_SCALE)")
    p.add_argument("--engine", choices=ENGINES, default="local")
    p.add_argument("--address", default=None, help="Dask scheduler or Ray cluster address")
    p.add_argument("--workers", type=int, default=None, help="local processes (default: all cores)")
    a = p.parse_args(argv)
    if a.seeds is not None and a.seeds < 1:
        p.error(f"--seeds {a.seeds}: the number of seeds must be an int >= 1")
    if a.workers is not None and a.workers < 1:
        p.error(f"--workers {a.workers}: the number of local processes must be an int >= 1")
    if a.address is not None and a.engine == "local":
        p.error(f"--address {a.address!r} is ignored by --engine local: use --engine dask or ray")
    try:
        out_paths(a.out or f"results/{a.figure}_{a.scale}")
    except ValueError as err:
        p.error(f"--out: {err}")
    scale = SCALES[a.scale].with_seeds(a.seeds)
    if a.seeds is not None and a.figure == "table3":
        scale = replace(scale, table3_seeds=tuple(range(a.seeds)))
    start = time.perf_counter()
    df = compute(a.figure, scale, engine=a.engine, address=a.address, workers=a.workers)
    csv, meta = save(df, a.out or f"results/{a.figure}_{a.scale}", a.figure, a.scale, scale,
                     time.perf_counter() - start, a.engine)
    print(f"wrote {csv} ({len(df)} rows) and {meta} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
