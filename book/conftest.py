"""nbval settings for the book's notebooks (pytest --nbval, see pyproject.toml).

nbval re-executes each notebook and compares outputs with the committed ones. Rich
outputs that are not reproducible as text are skipped: HTML and Markdown (pandas tables
and ``kaol.claims.Claim`` boxes are checked through their text/plain twin), JavaScript,
plotly figures and widget views. Images are never compared by nbval. Text, streams and
errors are compared exactly, after the substitutions of book/sanitize.cfg.

A notebook whose runs depend on the CPU's floating point (torch kernels that are
dispatched by CPU capability: the language models of chapters 7 and 8) says so in its
metadata, ``"kaol": {"cpu_dependent": true}``; then the values it glues for the prose and
the claims page are not compared either (its compared outputs are verdicts and counts).
"""
from __future__ import annotations

import json

import pytest

SKIP_MIME = (
    "text/html",
    "text/markdown",
    "application/javascript",
    "application/vnd.plotly.v1+json",
    "application/vnd.jupyter.widget-view+json",
    "text/latex",
)
GLUED = ("application/papermill.record/text/plain", "application/papermill.record/text/markdown")


def pytest_collectstart(collector: pytest.Collector) -> None:
    """Tell nbval which output types not to compare (its documented hook)."""
    path = getattr(collector, "path", None)
    if path is None or path.suffix != ".ipynb" or not hasattr(collector, "skip_compare"):
        return
    collector.skip_compare += SKIP_MIME
    meta = json.loads(path.read_text(encoding="utf-8")).get("metadata", {})
    if meta.get("kaol", {}).get("cpu_dependent"):
        collector.skip_compare += GLUED
