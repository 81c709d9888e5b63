"""Sphinx extension: serve MathJax 3 from the book itself, so equations typeset offline.

Sphinx loads MathJax from a CDN by default, so a downloaded copy of the book read offline
showed every equation (the paper's numbered ones, eqs. (1)-(18), and all
``$...$``) as raw TeX. This extension points ``mathjax_path`` at ``_static/mathjax`` and
copies there, from the MathJax 3.2.2 tree that the ``sphinx-mathjax-offline`` package ships
(it is used as a file source only, not as an extension), just what the pages load: the
combined component, the CHTML fonts it fetches, and the TeX packages its ``autoload``
fetches when a page uses one of their macros. ``mathjax3_config`` still applies (Sphinx
writes it before the component). The extras of MathJax's right-click menu (other
renderers, the accessibility explorer) are not copied: they load only when a reader picks
one, and then need the network.
"""
from __future__ import annotations

import importlib.metadata
import shutil
from pathlib import Path
from typing import Any

COMPONENT = "tex-chtml.js"  # TeX input, HTML-CSS output, menu; as the CDN's tex-mml-chtml.js without MathML input
LAZY = ("output/chtml/fonts/woff-v2", "input/tex/extensions")  # what the component fetches later


def _source() -> Path:
    dist = importlib.metadata.distribution("sphinx-mathjax-offline")
    return Path(dist.locate_file("sphinx-mathjax-offline/static/mathjax"))


def use_local(app: Any, config: Any) -> None:
    """Load MathJax from ``_static/mathjax`` (a path relative to ``_static``, as Sphinx expects)."""
    config.mathjax_path = f"mathjax/{COMPONENT}"


def copy_mathjax(app: Any, exception: Exception | None) -> None:
    if exception is None and app.builder.format == "html":
        src, dest = _source(), Path(app.outdir) / "_static" / "mathjax"
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / COMPONENT, dest / COMPONENT)
        for folder in LAZY:
            shutil.copytree(src / folder, dest / folder, dirs_exist_ok=True)


def setup(app: Any) -> dict[str, Any]:
    app.connect("config-inited", use_local)
    app.connect("build-finished", copy_mathjax)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
