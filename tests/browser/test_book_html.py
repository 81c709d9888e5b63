"""The built book as a reader's browser shows it (see ``tests/browser/bookcheck.py``).

Builds nothing: build the book first (README), then ``pytest tests/browser -s`` to see the
report. Skipped only when no Chromium (or its driver, Playwright) is installed; fails when
the book has not been built. ``KAOL_BOOK_HTML`` points it to another build folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.browser import bookcheck

HTML = Path(os.environ.get("KAOL_BOOK_HTML", bookcheck.HTML))

if bookcheck.chromium_path() is None:
    pytest.skip("no Chromium: apt-get install -y chromium (or set KAOL_CHROMIUM)", allow_module_level=True)
pytest.importorskip("playwright", reason="Playwright drives Chromium: pip install playwright")


@pytest.fixture(scope="module")
def reports() -> list[bookcheck.PageReport]:
    if not (HTML / "index.html").exists():
        pytest.fail(f"no built book at {HTML}: run `jupyter-book build . -W -n --keep-going` first")
    reports = bookcheck.run(HTML)
    text = bookcheck.summary(reports)
    bookcheck.write_atomic(HTML.parent / "browser_report.txt", text + "\n")
    print(text)
    return reports


def test_every_page_renders_without_errors(reports: list[bookcheck.PageReport]) -> None:
    """No JS error, missing image, broken internal link, empty output or blank plotly figure."""
    assert len(reports) >= 2
    assert not any(r.failures for r in reports), bookcheck.violations(reports, "failures")


def test_widget_views_drawn_offline(reports: list[bookcheck.PageReport]) -> None:
    """Every saved widget view is drawn by the book's own widget manager, network blocked."""
    assert any(r.widgets for r in reports), "no page has a widget view"
    assert not any(r.widgets_missing for r in reports), bookcheck.violations(reports, "widgets_missing")


def test_nothing_wider_than_its_box(reports: list[bookcheck.PageReport]) -> None:
    """No code, output, display equation or table overflows sideways at a 1280 px window."""
    assert not any(r.overflow for r in reports), bookcheck.violations(reports, "overflow")


def test_images_not_shrunk(reports: list[bookcheck.PageReport]) -> None:
    """No image is shown below 1/1.5 of its natural width (its labels would be too small)."""
    assert not any(r.shrunk for r in reports), bookcheck.violations(reports, "shrunk")


def test_figures_have_captions(reports: list[bookcheck.PageReport]) -> None:
    """Every image and plotly figure sits in a <figure> with a caption."""
    assert not any(r.uncaptioned for r in reports), bookcheck.violations(reports, "uncaptioned")


def test_notebook_pages_have_launch_buttons(reports: list[bookcheck.PageReport]) -> None:
    """Every page built from a notebook offers Binder, Colab and Thebe (``_config.yml``)."""
    notebooks = [r.page for r in reports if bookcheck.is_notebook_page(HTML, Path(r.page))]
    assert notebooks, "no page was built from a notebook"
    missing = {p: bookcheck.check_launch_buttons(HTML, Path(p)) for p in notebooks}
    assert not any(missing.values()), missing


def test_screenshots_saved(reports: list[bookcheck.PageReport]) -> None:
    shots = sorted((HTML.parent / "screenshots").glob("*.png"))
    assert any(s.name.startswith("intro") for s in shots), shots
