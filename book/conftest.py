"""nbval settings for the book's notebooks (pytest --nbval, see pyproject.toml).

nbval re-executes each notebook and compares outputs with the committed ones. Rich
outputs that are not reproducible as text are skipped: HTML (pandas tables are also
checked through their text/plain twin), JavaScript, plotly figures and widget views.
Images are never compared by nbval. Text, streams and errors are compared exactly,
after the substitutions of book/sanitize.cfg.
"""
from __future__ import annotations

import pytest

SKIP_MIME = (
    "text/html",
    "application/javascript",
    "application/vnd.plotly.v1+json",
    "application/vnd.jupyter.widget-view+json",
    "text/latex",
)


def pytest_collectstart(collector: pytest.Collector) -> None:
    """Tell nbval which output types not to compare (its documented hook)."""
    path = getattr(collector, "path", None)
    if path is not None and path.suffix == ".ipynb" and hasattr(collector, "skip_compare"):
        collector.skip_compare += SKIP_MIME
