"""Execute the book's notebooks in place, top to bottom, with a fresh kernel.

Notebooks are committed *executed* (see README, "Executing the notebooks"): nbval
compares a fresh run against the stored outputs, and the HTML book shows the stored
outputs (``execute_notebooks: off`` in ``_config.yml``). This script is the only way
outputs should be produced: one clean kernel per notebook, cells in order, widget
state saved so that widgets render in the static HTML.

Usage::

    python scripts/execute_notebooks.py                      # every book/*.ipynb
    python scripts/execute_notebooks.py book/01_architecture.ipynb [...]
    python scripts/execute_notebooks.py --seed-offset 1000 --out /tmp/fresh   # fresh seeds

``--seed-offset N`` runs the kernels with ``KAOL_SEED_OFFSET=N`` (every seed kaol draws
with is shifted by N, see ``kaol.seeds``) and ``--out DIR`` writes the executed notebooks
to ``DIR`` instead of over the committed ones (the kernel still runs in ``book/``);
``scripts/claims_page.py --fresh DIR`` then records the verdicts of that run.

Fails (exit code 1) if any cell raises; the failing notebook is not overwritten.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from jupyter_client.kernelspec import KernelSpecManager
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"


def check_kernel(kernel: str) -> None:
    """Fail early if the kernelspec ``kernel`` would start another Python than this one.

    A kernelspec whose command is plain ``python`` runs ``sys.executable`` (jupyter_client
    substitutes it); an absolute path elsewhere (say a user-level ``python3`` spec from
    another install) would execute the book without ``kaol``. Fix it with
    ``python -m ipykernel install --sys-prefix --name python3`` or remove the stray spec.
    """
    spec = KernelSpecManager().get_kernel_spec(kernel)
    exe = spec.argv[0]
    if exe in {"python", "python3", f"python{sys.version_info[0]}.{sys.version_info[1]}"}:
        return
    if Path(exe).resolve() != Path(sys.executable).resolve():
        raise SystemExit(f"kernelspec {kernel!r} ({spec.resource_dir}) runs {exe}, not this Python "
                         f"({sys.executable}): run `python -m ipykernel install --sys-prefix --name {kernel}`")


def execute(path: Path, timeout: int = 1800, kernel: str = "python3", out: Path | None = None) -> float:
    """Execute one notebook, in place or into ``out``; return the wall time in seconds.

    The kernel's working directory is the notebook's folder, as in Jupyter and in
    nbval, so relative paths behave the same in all three.
    """
    nb = nbformat.read(path, as_version=4)
    nb.metadata.setdefault("kernelspec", {
        "name": kernel, "display_name": "Python 3", "language": "python"})
    if os.environ.get("KAOL_SEED_OFFSET", "0") not in ("", "0"):      # recorded for claims_page.py --fresh
        nb.metadata.setdefault("kaol", {})["seed_offset"] = int(os.environ["KAOL_SEED_OFFSET"])
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name=kernel,
        allow_errors=False,
        store_widget_state=True,
        record_timing=False,  # no timestamps in metadata: keeps diffs small
        resources={"metadata": {"path": str(path.parent)}},
    )
    # nbclient mimics a frontend for ipywidgets' Output widget (what `interact` draws into) by
    # sending the captured outputs back to the kernel on the shell channel while it waits on
    # that channel for the cell's reply; that can deadlock (jupyter/nbclient#312: a chapter-6
    # widget cell hung every time). Without the mimic the outputs of the widget's first call
    # are stored as the cell's own outputs, which the static HTML shows without any JavaScript.
    client.comm_open_handlers["jupyter.widget"] = lambda msg: None
    start = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - start
    nbformat.validate(nb)
    target = out or path
    tmp = target.with_name(f".{target.name}.tmp")
    nbformat.write(nb, tmp)
    os.replace(tmp, target)                     # never a half-written notebook
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path,
                        help="notebooks to execute (default: every book/*.ipynb)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    parser.add_argument("--kernel", default="python3", help="kernelspec name")
    parser.add_argument("--seed-offset", type=int, default=None,
                        help="run with KAOL_SEED_OFFSET set to this non-negative integer")
    parser.add_argument("--out", type=Path, default=None,
                        help="write executed notebooks to this folder instead of in place")
    args = parser.parse_args(argv)
    if args.seed_offset is not None:
        if args.seed_offset < 0:
            parser.error(f"--seed-offset {args.seed_offset} must be a non-negative integer")
        os.environ["KAOL_SEED_OFFSET"] = str(args.seed_offset)   # the kernels inherit it
    if args.out is not None:
        if args.out.resolve() == BOOK.resolve():
            parser.error("--out must not be book/ itself (omit --out to execute in place)")
        args.out.mkdir(parents=True, exist_ok=True)

    check_kernel(args.kernel)
    paths = args.notebooks or sorted(BOOK.glob("*.ipynb"))
    failed: list[Path] = []
    total = 0.0
    for path in paths:
        print(f"executing {path} ...", flush=True)
        try:
            seconds = execute(path, args.timeout, args.kernel, args.out / path.name if args.out else None)
        except CellExecutionError as err:
            print(f"FAILED {path}:\n{err}", file=sys.stderr, flush=True)
            failed.append(path)
            continue
        total += seconds
        print(f"{seconds:8.1f} s  {path}", flush=True)
    print(f"{total:8.1f} s  total ({len(paths) - len(failed)} of {len(paths)} notebooks)")
    if failed:
        print("failed: " + ", ".join(str(p) for p in failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
