"""Open every page of the built HTML book in headless Chromium and check what a reader sees.

The book is built first (README: ``jupyter-book build . -W -n --keep-going``); this module
builds nothing. It serves ``_build/html`` on 127.0.0.1 and, page by page, records:

* failures: a JavaScript exception, a console error from the book's own code, a local
  request that answers 4xx/5xx, an image that does not decode, an internal link whose file
  or ``#anchor`` does not exist, an empty output area, a plotly figure with no rendered
  ``svg``, math that MathJax (served by the book, ``book/_ext/mathjax_static.py``) did not
  typeset or typeset as a TeX error, raw TeX (``\\begin{``, ``$$``, ``\\(``, ``\\[``) left
  in the page's visible text outside code, a notebook page without its Binder, Colab and
  Thebe launch buttons;
* ``widgets_missing``: a widget view that the widget manager (served by the book,
  ``book/_static/jupyter-widgets``) did not draw;
* ``overflow``: a code block, output, display equation or table wider than its box at a
  1280 px wide window (``scrollWidth > clientWidth + 1``: the reader gets a scroll bar or
  text cut off), and a page that scrolls sideways;
* ``shrunk``: an image shown at less than 1/1.5 of its natural width (its text shrinks
  below what the figure was drawn for);
* ``uncaptioned``: an image or plotly figure that is not in a ``<figure>`` with a caption
  (myst-nb renders one for a cell's ``mystnb: figure: caption`` metadata, ``{glue:figure}``
  and the ``{figure}`` directive);
* what needs the network: every request to another host is *blocked* (the book must read
  the same on a laptop offline and in CI, online or not), listed by host. These are
  reported, not failures;
* each page's weight: the bytes of the page and of every local file it fetched (scripts,
  styles, images, fonts and the files MathJax and the widget manager load on demand).

Open toggles (``<details>``, e.g. hidden code cells) are opened before the layout checks.
Every check lists all its violations, page by page (``violations``).

Run it alone with ``python -m tests.browser.bookcheck [_build/html]`` (prints the report,
exit code 1 on failures) or through ``pytest tests/browser``. Chromium is Debian's
``/usr/bin/chromium`` (``KAOL_CHROMIUM`` overrides), driven by Playwright with a fresh
profile; ``playwright install`` is never needed.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

ROOT = Path(__file__).resolve().parents[2]
HTML = ROOT / "_build" / "html"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SKIP_DIRS = {"_static", "_sources", "_images", "_sphinx_design_static"}
LAUNCH = {"Binder": "a[href*='mybinder.org']", "Colab": "a[href*='colab.research.google.com']",
          "Thebe": "button.btn-launch-thebe"}


def chromium_path() -> str | None:
    """The Chromium binary to drive: ``$KAOL_CHROMIUM`` or Debian's ``chromium`` on PATH."""
    return os.environ.get("KAOL_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class PageReport:
    """What one page showed: the lists named in ``CHECKS`` fail the tests, ``offline`` only reports."""

    page: str
    failures: list[str] = field(default_factory=list)
    widgets_missing: list[str] = field(default_factory=list)
    overflow: list[str] = field(default_factory=list)
    shrunk: list[str] = field(default_factory=list)
    uncaptioned: list[str] = field(default_factory=list)
    offline: list[str] = field(default_factory=list)
    external_requests: list[str] = field(default_factory=list)
    images: int = 0
    math: int = 0
    plotly: int = 0
    widgets: int = 0
    links_checked: int = 0
    weight: int = 0      # bytes fetched from the book's own server
    requests: int = 0    # local requests made


# The checks of a page, by ``PageReport`` field: what a violation means.
CHECKS = {"failures": "errors",
          "widgets_missing": "widget views not drawn (network blocked)",
          "overflow": "wider than its box at a 1280 px window",
          "shrunk": "image shown below 1/1.5 of its natural width",
          "uncaptioned": "figure without a caption"}
MIN_SHOWN = 1 / 1.5  # smallest shown / natural width of an image


class _Anchors(HTMLParser):
    """Collect every ``id`` and ``<a name>`` of a static HTML file."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for key, value in attrs:
            if value and (key == "id" or (tag == "a" and key == "name")):
                self.ids.add(value)


@functools.lru_cache(maxsize=None)
def anchors(path: Path) -> frozenset[str]:
    """The anchors a link ``path#x`` may point to."""
    parser = _Anchors()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    return frozenset(parser.ids)


def pages(html: Path) -> list[Path]:
    """Every HTML page of the build, relative to ``html`` (theme assets excluded)."""
    return sorted(p.relative_to(html) for p in html.rglob("*.html")
                  if not SKIP_DIRS.intersection(p.relative_to(html).parts))


def is_notebook_page(html: Path, page: Path) -> bool:
    """True if the page was built from a notebook (its source is copied as ``.ipynb``)."""
    return (html / "_sources" / page.with_suffix(".ipynb")).exists()


@contextmanager
def serve(html: Path) -> Iterator[str]:
    """Serve ``html`` on 127.0.0.1 at a free port, in a thread; yield the base URL."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(html))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def check_link(html: Path, page_url: str, href: str, base: str) -> str | None:
    """Why the local link ``href`` on ``page_url`` is broken, or None if it resolves."""
    url = urljoin(page_url, href)
    if not url.startswith(base):
        return None
    parts = urlsplit(url)
    rel = unquote(parts.path)[1:]
    target = html / rel
    if target.is_dir():
        target = target / "index.html"
    if not target.is_file():
        return f"broken link {href!r}: {rel or '/'} does not exist"
    fragment = unquote(parts.fragment)
    if fragment and target.suffix == ".html" and fragment not in anchors(target):
        return f"broken link {href!r}: no #{fragment} in {target.relative_to(html)}"
    return None


# True once the widget manager has drawn every widget view of the page (it inserts a
# ``.widget-subarea`` holding the view just before the view's script).
WIDGETS_DRAWN = """() => [...document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]')]
  .every(s => s.previousElementSibling?.matches('.widget-subarea') && s.previousElementSibling.childElementCount)"""

# Runs in the page once it has loaded (and MathJax has typeset it): images decoded, outputs inspected.
PAGE_PROBE = r"""async (minShown) => {
  document.querySelectorAll('details').forEach(d => { d.open = true; });
  const cells = [...document.querySelectorAll('.cell')];
  const where = e => {  // 'code cell 7, section "Title"': where a reader finds the element
    const cell = e.closest('.cell');
    const heading = e.closest('section')?.querySelector('h1, h2, h3, h4, h5, h6');
    const title = heading ? heading.textContent.replace(/#$/, '').trim().slice(0, 60) : '';
    return [cell ? `code cell ${cells.indexOf(cell) + 1}` : 'text', title && `section "${title}"`]
      .filter(Boolean).join(', ');
  };
  const kind = e => e.matches('div.math, mjx-container') ? 'display math'
    : e.matches('table, .pst-scrollable-table-container') || e.querySelector('table') ? 'table'
    : e.closest('.cell_output') ? 'output' : 'code';
  const snippet = e => (e.textContent || '').trim().replace(/\s+/g, ' ').slice(0, 50);
  const rawTex = () => {  // TeX a reader would see: text outside code and typeset math
    const skip = 'pre, code, script, style, textarea, mjx-container, .highlight';
    const walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT,
      {acceptNode: n => n.parentElement.closest(skip) ? NodeFilter.FILTER_REJECT : NodeFilter.FILTER_ACCEPT});
    const found = [];
    for (let n = walk.nextNode(); n && found.length < 3; n = walk.nextNode()) {
      const i = n.data.search(/\\begin\{|\$\$|\\\(|\\\[/);
      if (i >= 0) found.push(n.data.slice(i, i + 60));
    }
    return found;
  };
  const imgs = [...document.images];
  await Promise.all(imgs.map(i => { i.loading = 'eager'; return i.decode().catch(() => null); }));
  await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));  // laid out with toggles open
  const caption = e => {  // the caption text of the <figure> around e ('' if none)
    const c = e.closest('figure')?.querySelector(':scope > figcaption');
    return c ? (c.querySelector('.caption-text') || c).textContent.trim() : '';
  };
  const boxes = 'pre, div.highlight, .cell_output > *, .cell_output .output, div.math, '
              + 'mjx-container[display="true"], table, .pst-scrollable-table-container';
  const wide = [...document.querySelectorAll(boxes)].filter(e => e.scrollWidth > e.clientWidth + 1);
  const root = document.scrollingElement;
  const content = [...document.querySelectorAll('article.bd-article img')].filter(i => i.getClientRects().length);
  const widgetViews = [...document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]')];
  const outputs = [...document.querySelectorAll('.cell_output > .output, .cell_output > img')];
  return {
    images: imgs.map(i => ({src: i.getAttribute('src') || '', url: i.currentSrc || i.src, w: i.naturalWidth})),
    plotly: [...document.querySelectorAll('.plotly-graph-div')].map(d => !!d.querySelector('svg.main-svg')),
    widgets: widgetViews.length,
    widgetsMissing: widgetViews.filter(s => !(s.previousElementSibling?.matches('.widget-subarea')
                                              && s.previousElementSibling.childElementCount)).map(where),
    overflow: wide.filter(e => !wide.some(o => o !== e && e.contains(o)))   // the innermost wide box
                  .map(e => `${kind(e)} in ${where(e)} ("${snippet(e)}"): scrollWidth ${e.scrollWidth} px > clientWidth ${e.clientWidth} px`)
                  .concat(root.scrollWidth > root.clientWidth + 1
                          ? [`the page scrolls sideways: ${root.scrollWidth} px wide in a ${root.clientWidth} px window`] : []),
    shrunk: content.filter(i => i.naturalWidth && i.getBoundingClientRect().width < minShown * i.naturalWidth)
                   .map(i => `image ${i.getAttribute('src')} in ${where(i)}: shown ${Math.round(i.getBoundingClientRect().width)} px `
                             + `wide, natural ${i.naturalWidth} px (${(i.getBoundingClientRect().width / i.naturalWidth).toFixed(2)}x)`),
    uncaptioned: [...content, ...document.querySelectorAll('.plotly-graph-div')].filter(e => !caption(e))
                   .map(e => (e.tagName === 'IMG' ? `image ${e.getAttribute('src')}` : 'plotly figure') + ` in ${where(e)}`),
    empty: outputs.filter(o => o.tagName !== 'IMG' && !o.innerText.trim()
                           && !o.querySelector('img, svg, canvas, iframe, video, script, .plotly-graph-div'))
                  .map(o => o.className),
    math: document.querySelectorAll('.math').length,
    untypeset: [...document.querySelectorAll('.math')].filter(m => !m.querySelector('mjx-container')).length,
    texErrors: [...document.querySelectorAll('mjx-merror')].map(e => e.getAttribute('data-mjx-error') || e.textContent),
    rawTex: rawTex(),
    links: [...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href')),
  };
}"""


# The requests a page made to the book's server and their bytes (the page itself included;
# a file the browser had cached counts its full size, as on a first visit).
PAGE_WEIGHT = """(base) => {
  const local = performance.getEntries().filter(e => e.name.startsWith(base) && 'decodedBodySize' in e);
  return [local.length, local.reduce((sum, e) => sum + e.decodedBodySize, 0)];
}"""


def wait_for_math(tab) -> str | None:
    """Wait until MathJax has typeset the page (``MathJax.startup.promise``); why not, or None."""
    try:
        tab.wait_for_function("() => !document.querySelector('.math') || window.MathJax?.startup?.promise",
                              timeout=8000)
        tab.evaluate("() => window.MathJax?.startup?.promise")
    except Exception as exc:
        return f"MathJax did not typeset the page: {str(exc).splitlines()[0]}"
    return None


def check_page(context, html: Path, base: str, page: Path) -> PageReport:
    """Load one page in a fresh tab and return what went wrong on it."""
    report = PageReport(str(page))
    tab = context.new_page()
    blocked: set[str] = set()

    def on_console(msg) -> None:
        if msg.type != "error":
            return
        where = (msg.location or {}).get("url", "")
        if "ERR_BLOCKED_BY_CLIENT" in msg.text and where and not where.startswith(base):
            return  # a blocked external request: listed under external_requests
        report.failures.append(f"console error: {msg.text} ({where})")

    def on_response(resp) -> None:
        if resp.url.startswith(base) and resp.status >= 400:
            report.failures.append(f"HTTP {resp.status} for local {resp.url[len(base) - 1:]}")

    def route(r) -> None:
        if r.request.url.startswith(base) or r.request.url.startswith("data:"):
            r.continue_()
        else:
            blocked.add(r.request.url)
            r.abort("blockedbyclient")

    tab.on("pageerror", lambda exc: report.failures.append(f"JavaScript error: {exc}"))
    tab.on("console", on_console)
    tab.on("response", on_response)
    tab.route("**/*", route)
    tab.add_init_script("performance.setResourceTimingBufferSize(100000)")  # weigh every request
    url = urljoin(base, page.as_posix())
    try:
        tab.goto(url, wait_until="load")
    except Exception as exc:  # a page that never loads is one failure; the other pages are still checked
        report.failures.append(f"page did not load: {str(exc).splitlines()[0]}")
        tab.close()
        return report
    if re.search(r'http-equiv="refresh"', (html / page).read_text(errors="replace")[:1000], re.I):
        tab.wait_for_url(lambda u: u != url)   # index.html: a redirect stub; check its target
        tab.wait_for_load_state("load")
    try:  # plotly draws after load; give it a few seconds
        tab.wait_for_function("() => [...document.querySelectorAll('.plotly-graph-div')]"
                              ".every(d => d.querySelector('svg.main-svg'))", timeout=8000)
    except Exception:
        pass
    try:  # the widget manager draws the views after load
        tab.wait_for_function(WIDGETS_DRAWN, timeout=30_000)
    except Exception:
        pass
    math_failure = wait_for_math(tab)
    probe = tab.evaluate(PAGE_PROBE, MIN_SHOWN)
    report.requests, report.weight = tab.evaluate(PAGE_WEIGHT, base)
    page_url = tab.url  # index.html redirects
    tab.close()

    report.external_requests = sorted(blocked)
    report.images = len(probe["images"])
    for img in probe["images"]:
        if img["w"] == 0:
            if img["url"].startswith(base) or img["url"].startswith("data:"):
                report.failures.append(f"image does not load: {img['src']}")
            else:
                report.offline.append(f"external image not shown: {img['url']}")
    report.plotly = len(probe["plotly"])
    for i, drawn in enumerate(probe["plotly"]):
        if not drawn:
            report.failures.append(f"plotly figure {i + 1} has no rendered svg")
    report.widgets = probe["widgets"]
    report.widgets_missing = [f"widget view in {w} not drawn" for w in probe["widgetsMissing"]]
    report.overflow, report.shrunk, report.uncaptioned = probe["overflow"], probe["shrunk"], probe["uncaptioned"]
    for cls in probe["empty"]:
        report.failures.append(f"empty output area ({cls})")
    report.math = probe["math"]
    if probe["math"] and math_failure:
        report.failures.append(math_failure)
    if probe["untypeset"]:
        report.failures.append(f"{probe['untypeset']} of {probe['math']} math blocks not typeset by MathJax")
    report.failures += [f"TeX error: {e}" for e in probe["texErrors"]]
    report.failures += [f"raw TeX visible: {t!r}" for t in probe["rawTex"]]
    for href in dict.fromkeys(probe["links"]):
        if href.startswith(("mailto:", "javascript:")) or href in ("#", ""):
            continue
        report.links_checked += 1
        problem = check_link(html, page_url, href, base)
        if problem:
            report.failures.append(problem)
    return report


def check_launch_buttons(html: Path, page: Path) -> list[str]:
    """Missing launch buttons on a page built from a notebook (static HTML check)."""
    if not is_notebook_page(html, page):
        return []
    text = (html / page).read_text(encoding="utf-8")
    needles = {"Binder": "mybinder.org", "Colab": "colab.research.google.com", "Thebe": "btn-launch-thebe"}
    return [f"no {name} launch button" for name, needle in needles.items() if needle not in text]


def screenshots(context, base: str, html: Path, reports: list[PageReport], out: Path) -> list[Path]:
    """Screenshots of the intro, a page with an image figure, the first page with math (its first
    display equation) and a page with plotly or a widget."""
    out.mkdir(parents=True, exist_ok=True)
    wanted: dict[str, tuple[str, str | None]] = {}
    intro = next((r.page for r in reports if r.page.endswith("intro.html")), reports[0].page)
    wanted["intro"] = (intro, None)
    figure = next((r.page for r in reports if r.page != intro and r.images
                   and "cell_output" in (html / r.page).read_text(encoding="utf-8")), None)
    if figure:
        wanted["figure"] = (figure, ".cell_output img")
    math = next((r.page for r in reports if r.math), None)
    if math:
        wanted["equations"] = (math, "mjx-container[display='true']")
    interactive = next((r for r in reports if r.plotly), None) or next((r for r in reports if r.widgets), None)
    if interactive:
        wanted["interactive"] = (interactive.page, ".plotly-graph-div" if interactive.plotly
                                 else "script[type='application/vnd.jupyter.widget-view+json']")
    saved = []
    for name, (page, selector) in wanted.items():
        tab = context.new_page()
        tab.route("**/*", lambda r: r.continue_() if r.request.url.startswith(base) else r.abort("blockedbyclient"))
        tab.goto(urljoin(base, page), wait_until="load")
        tab.wait_for_timeout(1500)
        wait_for_math(tab)
        if selector and tab.locator(selector).count():
            tab.locator(selector).first.evaluate("e => (e.parentElement || e).scrollIntoView({block: 'center'})")
        path = out / f"{name}-{Path(page).stem}.png"
        tab.screenshot(path=str(path))
        saved.append(path)
        tab.close()
    return saved


def run(html: Path = HTML, shots: Path | None = None) -> list[PageReport]:
    """Check every page of ``html``; save screenshots to ``shots`` (default ``_build/screenshots``)."""
    from playwright.sync_api import sync_playwright

    shots = shots or html.parent / "screenshots"
    with serve(html) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})  # fresh profile
        context.set_default_navigation_timeout(90_000)  # pages with plotly.js weigh 10 MB: slow on a busy machine
        reports = []
        for page in pages(html):
            report = check_page(context, html, base, page)
            report.failures += check_launch_buttons(html, page)
            reports.append(report)
        screenshots(context, base, html, reports, shots)
        browser.close()
    return reports


def failed(report: PageReport) -> bool:
    """True if any check of ``CHECKS`` found something on the page."""
    return any(getattr(report, check) for check in CHECKS)


def violations(reports: list[PageReport], check: str) -> str:
    """Every violation of ``check`` (a key of ``CHECKS``), page by page: an assertion message."""
    bad = [r for r in reports if getattr(r, check)]
    lines = [f"{CHECKS[check]}: {sum(len(getattr(r, check)) for r in bad)} on {len(bad)} of {len(reports)} pages"]
    for r in bad:
        lines.append(r.page)
        lines += [f"  - {v}" for v in getattr(r, check)]
    return "\n".join(lines)


def summary(reports: list[PageReport]) -> str:
    """A readable report: per page (counts, weight, every violation), then the external hosts requested."""
    lines = [f"{len(reports)} pages checked"]
    for r in reports:
        status = "FAIL" if failed(r) else "ok"
        lines.append(f"{status:4s} {r.page}: {r.weight / 1024:.0f} KiB in {r.requests} requests; {r.images} images, "
                     f"{r.math} math, {r.plotly} plotly, {r.widgets} widgets, {r.links_checked} links, "
                     f"{len(r.external_requests)} blocked external requests")
        for check, meaning in CHECKS.items():
            lines += [f"       {meaning}: {v}" for v in getattr(r, check)]
        lines += [f"       offline: {o}" for o in r.offline]
    hosts: dict[str, int] = {}
    for r in reports:
        for url in r.external_requests:
            host = urlsplit(url).netloc
            hosts[host] = hosts.get(host, 0) + 1
    lines.append("needs the network (blocked here, pages requesting it): "
                 + (", ".join(f"{h} ({n})" for h, n in sorted(hosts.items())) or "nothing"))
    lines.append(f"book: {sum(r.weight for r in reports) / 2**20:.2f} MiB over {len(reports)} page loads "
                 f"(each counted as a first visit)")
    return "\n".join(lines)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, so a reader never sees half of it."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    html = Path(argv[0]) if argv else HTML
    if not (html / "index.html").exists():
        print(f"no built book at {html}: build it first (README)")
        return 2
    reports = run(html)
    print(summary(reports))
    write_atomic(html.parent / "browser_report.json", json.dumps([r.__dict__ for r in reports], indent=1))
    return 1 if any(map(failed, reports)) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
