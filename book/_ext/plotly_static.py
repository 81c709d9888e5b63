"""Sphinx extension: serve plotly.js from the book itself, on the pages that draw plotly figures.

``kaol.plots.show_plotly`` writes each figure as a ``div`` of class ``kaol-plotly`` and a
script that draws it with ``window.Plotly`` (loading plotly.js from its CDN only when no
copy is on the page). This extension copies the plotly.js that ships with the installed
``plotly`` package into the build's ``_static`` folder and adds it to the pages whose body
holds such a figure, so the HTML book renders its figures offline and pages without
figures stay light. The browser caches the one file across pages.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

MARKER = 'class="kaol-plotly'
JS = "plotly.min.js"


def _source() -> Path:
    import plotly

    return Path(plotly.__file__).parent / "package_data" / JS


def add_plotly(app: Any, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    """Add plotly.js to a page whose body holds a ``kaol-plotly`` figure (before the body's scripts)."""
    if MARKER in context.get("body", ""):
        app.add_js_file(JS, priority=200)


def copy_plotly(app: Any, exception: Exception | None) -> None:
    if exception is None and app.builder.format == "html":
        static = Path(app.outdir) / "_static"
        static.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_source(), static / JS)


def setup(app: Any) -> dict[str, Any]:
    app.connect("html-page-context", add_plotly)
    app.connect("build-finished", copy_plotly)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
