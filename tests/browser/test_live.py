"""The live figures (``web/``) in headless Chromium: the model trained in the reader's browser.

Like ``test_book_html.py`` this builds nothing (build the book first, README) and uses
``bookcheck``'s server and Chromium. Every request to another host is blocked. For each
live figure of chapters 3, 4 and 6 it waits until the figure has run (``data-kaol-status``
``done``), moves its first control and waits for the re-run; it fails on a JavaScript
error, a console error, an ``error`` status, a request to another host (other than the
scripts the page's HTML names, which bookcheck reports). The wall times of the first run
and of the re-run (with the part spent in the Web Worker) go to ``_build/live_report.json``
and are printed; with ``KAOL_LIVE_RANK1=1`` the chapter-4 figure then also runs with rank-1
updates and its time is recorded too. Speed targets (the chapter-4 re-run within 1 s) belong
to ``benchmarks/``, not to this test, since a shared machine's wall time says little
(``benchmarks/README.md``). A chapter that does not include its figure yet is skipped.
Separately, ``web/kaol.js`` runs the fixtures of ``tests/js`` in Chromium (1e-9 against kaol).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import urljoin

import pytest

from tests.browser import bookcheck

HTML = Path(os.environ.get("KAOL_BOOK_HTML", bookcheck.HTML))
LIVE = {"pretrain": "book/03_pretraining.html", "finetune": "book/04_finetuning.html", "cell": "book/06_experiments.html"}
TIMEOUT_MS = 180_000   # a first run includes loading the data; the pre-training runs take seconds
REPORT = HTML.parent / "live_report.json"

if bookcheck.chromium_path() is None:
    pytest.skip("no Chromium: apt-get install -y chromium (or set KAOL_CHROMIUM)", allow_module_level=True)
pytest.importorskip("playwright", reason="Playwright drives Chromium: pip install playwright")

# Move the first control of a live figure to another value, as a reader would.
MOVE_FIRST = """el => {
  const input = el.querySelector('input[name], select[name]');
  if (input.tagName === 'SELECT') input.selectedIndex = (input.selectedIndex + 1) % input.options.length;
  else if (input.type === 'checkbox') input.checked = !input.checked;
  else {
    const lo = Number(input.min), hi = Number(input.max), v = Number(input.value);
    input.value = String(v - lo > (hi - lo) / 2 ? lo + (hi - lo) / 4 : lo + 3 * (hi - lo) / 4);
  }
  input.dispatchEvent(new Event('input', {bubbles: true}));
  input.dispatchEvent(new Event('change', {bubbles: true}));
  return input.name + ' = ' + (input.type === 'checkbox' ? input.checked : input.value);
}"""


# Tick the rank-1 box of the chapter-4 figure (with KAOL_LIVE_RANK1=1; benchmarks/README.md).
RANK1 = """el => {
  const box = el.querySelector('input[name="rank1"]');
  box.checked = true;
  box.dispatchEvent(new Event('change', {bubbles: true}));
}"""


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=bookcheck.chromium_path(), args=bookcheck.CHROMIUM_ARGS)
        yield b
        b.close()


def _tab(browser, base: str, problems: list[str], named: str = ""):
    """A fresh tab that blocks every request to another host and records JS errors and the blocked
    requests that the page's HTML ``named`` does not itself name (those, the book's own CDN
    scripts, are bookcheck's report; the live figures must add none)."""
    tab = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    tab.set_default_timeout(TIMEOUT_MS)

    def route(r) -> None:
        if r.request.url.startswith(base) or r.request.url.startswith("data:"):
            r.continue_()
        else:
            if r.request.url not in named:
                problems.append(f"request to another host: {r.request.url}")
            r.abort("blockedbyclient")

    tab.route("**/*", route)
    tab.on("pageerror", lambda exc: problems.append(f"JavaScript error: {exc}"))
    tab.on("console", lambda m: m.type == "error" and "ERR_BLOCKED_BY_CLIENT" not in m.text
           and problems.append(f"console error: {m.text}"))
    return tab


def _wait_run(tab, sel: str, runs: int) -> dict:
    """Wait until the figure has finished run number ``runs`` (or failed); its status, time and message."""
    tab.wait_for_function(f"""() => {{ const e = document.querySelector('{sel}');
        return e && (e.dataset.kaolStatus === 'error' || (e.dataset.kaolStatus === 'done' && Number(e.dataset.kaolRuns) >= {runs})); }}""",
                          timeout=TIMEOUT_MS)
    return tab.eval_on_selector(sel, "e => ({status: e.dataset.kaolStatus, ms: Number(e.dataset.kaolMs), "
                                     "worker_ms: e.dataset.kaolWorkerMs ? Number(e.dataset.kaolWorkerMs) : null, "
                                     "msg: e.querySelector('.kaol-live-msg').textContent})")


@pytest.mark.parametrize("name", list(LIVE))
def test_live_figure_runs_and_reruns(browser, name: str) -> None:
    page = HTML / LIVE[name]
    if not page.exists():
        pytest.fail(f"no built book at {HTML}: run `jupyter-book build . -W -n --keep-going` first")
    if f'data-kaol-live="{name}"' not in page.read_text(encoding="utf-8"):
        pytest.skip(f"{LIVE[name]} does not include web/embed/{name}.html yet (see web/README.md)")
    problems: list[str] = []
    sel = f'[data-kaol-live="{name}"]'
    with bookcheck.serve(HTML) as base:
        tab = _tab(browser, base, problems, page.read_text(encoding="utf-8"))
        tab.goto(urljoin(base, LIVE[name]), wait_until="load")
        first = _wait_run(tab, sel, 1)
        moved = tab.eval_on_selector(sel, MOVE_FIRST)
        rerun = _wait_run(tab, sel, 2)
        rank1 = None
        if name == "finetune" and os.environ.get("KAOL_LIVE_RANK1"):   # also time the rank-1 updates
            tab.eval_on_selector(sel, RANK1)
            rank1 = _wait_run(tab, sel, 3)
        tab.close()
    record = {"page": LIVE[name], "first_ms": first["ms"], "first_worker_ms": first["worker_ms"], "moved": moved,
              "rerun_ms": rerun["ms"], "rerun_worker_ms": rerun["worker_ms"], "status": rerun["status"],
              "message": rerun["msg"]}
    if rank1:
        record.update(rank1_ms=rank1["ms"], rank1_worker_ms=rank1["worker_ms"], rank1_status=rank1["status"])
    report = json.loads(REPORT.read_text()) if REPORT.exists() else {}
    report[name] = record
    REPORT.write_text(json.dumps(report, indent=1) + "\n")
    print(name, record)
    assert first["status"] == "done" and rerun["status"] == "done", record
    assert rank1 is None or rank1["status"] == "done", record
    assert not problems, problems


def test_fixtures_in_chromium(browser) -> None:
    """web/kaol.js in Chromium agrees with kaol to 1e-9 on tests/js/fixtures.json (as under node)."""
    problems: list[str] = []
    with bookcheck.serve(bookcheck.ROOT) as base:
        tab = _tab(browser, base, problems)
        tab.goto(urljoin(base, "web/embed/finetune.html"), wait_until="load")
        diffs = tab.evaluate("""async () => {
            const kaol = await import('/web/kaol.js'), { compare } = await import('/tests/js/check.js');
            return compare(kaol, await (await fetch('/tests/js/fixtures.json')).json()); }""")
        tab.close()
    assert len(diffs) == 12 and all(d <= 1e-9 for d in diffs.values()), diffs
    assert not problems, problems
