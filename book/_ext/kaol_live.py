"""Sphinx extension: the live figures, which train the model in the reader's browser (``web/``).

A chapter includes a figure's snippet (``web/embed/<name>.html``, an element with
``data-kaol-live``) with a ``{raw} html`` directive. This extension copies ``web/*.js``
(the model, its Web Worker and the figures' code) and ``web/data/`` (what ``python -m
kaol.web checkpoint`` exported) into the build's ``_static/kaol/``, and adds the figures'
module script to the pages that hold one, with plotly.js, which draws them, when
``plotly_static`` does not already add it. Pages without a live figure load nothing more.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from plotly_static import JS as PLOTLY, MARKER as PLOTLY_MARKER

MARKER = "data-kaol-live="
WEB = Path(__file__).resolve().parents[2] / "web"


def add_live(app: Any, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    """Add the live figures' script (and plotly.js) to a page whose body holds one."""
    body = context.get("body", "")
    if MARKER in body:
        if PLOTLY_MARKER not in body:
            app.add_js_file(PLOTLY, priority=200)
        app.add_js_file("kaol/live.js", type="module")


def copy_web(app: Any, exception: Exception | None) -> None:
    if exception is None and app.builder.format == "html":
        dest = Path(app.outdir) / "_static" / "kaol"
        dest.mkdir(parents=True, exist_ok=True)
        for js in WEB.glob("*.js"):
            shutil.copyfile(js, dest / js.name)
        shutil.copytree(WEB / "data", dest / "data", dirs_exist_ok=True)


def setup(app: Any) -> dict[str, Any]:
    app.connect("html-page-context", add_live)
    app.connect("build-finished", copy_web)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
