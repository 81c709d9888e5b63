"""Report the weight of each page of the built book: its HTML plus the local files it loads.

Usage::

    python scripts/page_weight.py [_build/html]

For every ``*.html`` page (theme assets excluded) it reads the tags that make a browser
fetch something (``img``/``source``/``script``/``iframe`` ``src``, ``link`` ``href`` for
stylesheets, preloads and icons, ``object`` ``data``) and the ``url(...)`` inside the
local stylesheets it loads (fonts, icons), and adds up the sizes of the local files.
Columns, in KiB: ``html`` the page itself, ``inline`` the part of it that is inline
``<script>`` bodies and ``data:`` URIs (plotly.js, widget state, embedded images),
``images``, ``js``, ``css`` (with fonts), ``total`` (what a first visit downloads from this
site) and ``own`` (html + images: what is not shared with other pages). External URLs
(CDNs) are listed by count, not weighed. The last line is the whole book: every page and
every distinct file they load, counted once.
"""

from __future__ import annotations

import re
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {"_static", "_sources", "_images", "_sphinx_design_static"}
CSS_URL = re.compile(r"url\(\s*['\"]?([^'\")]+)['\"]?\s*\)")
LINK_RELS = {"stylesheet", "preload", "icon", "shortcut", "modulepreload"}


class _Fetches(HTMLParser):
    """The URLs a page makes the browser fetch, and the bytes it carries inline."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline = 0
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        url = {"img": a.get("src"), "source": a.get("src"), "script": a.get("src"),
               "iframe": a.get("src"), "object": a.get("data")}.get(tag)
        if tag == "link" and LINK_RELS.intersection(a.get("rel", "").split()):
            url = a.get("href")
        if url:
            if url.startswith("data:"):
                self.inline += len(url)
            else:
                self.urls.append(url)
        self._in_script = tag == "script" and not a.get("src")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.inline += len(data.encode("utf-8"))


def local_file(html: Path, page_url: str, url: str) -> Path | None:
    """The file under ``html`` that ``url`` (relative to ``page_url``) names, if local."""
    full = urljoin(page_url, url)
    if not full.startswith("file:///site/"):
        return None
    path = html / unquote(urlsplit(full).path[len("/site/"):])
    return path if path.is_file() else None


def css_assets(html: Path, css: Path) -> set[Path]:
    """Fonts and images a local stylesheet may load (one level of ``url(...)``; upper bound)."""
    base = "file:///site/" + css.relative_to(html).as_posix()
    found = set()
    for url in CSS_URL.findall(css.read_text(encoding="utf-8", errors="replace")):
        if not url.startswith("data:") and (f := local_file(html, base, url)):
            found.add(f)
    # @font-face lists one font in several formats; a browser fetches one, woff2 if offered
    return {f for f in found if f.suffix not in (".ttf", ".woff", ".eot", ".otf") or f.with_suffix(".woff2") not in found}


def weigh(html: Path, page: Path) -> tuple[dict[str, int], set[Path], int]:
    """Bytes by kind for one page, the local files it loads, and its external URL count."""
    parser = _Fetches()
    parser.feed(page.read_text(encoding="utf-8", errors="replace"))
    page_url = "file:///site/" + page.relative_to(html).as_posix()
    files: set[Path] = set()
    external = 0
    for url in parser.urls:
        f = local_file(html, page_url, url)
        if f:
            files.add(f)
        elif urlsplit(urljoin(page_url, url)).scheme in ("http", "https"):
            external += 1
    for css in [f for f in files if f.suffix == ".css"]:
        files |= css_assets(html, css)
    sizes = {"html": page.stat().st_size, "inline": parser.inline, "images": 0, "js": 0, "css": 0}
    for f in files:
        kind = "js" if f.suffix in (".js", ".mjs") else "images" if f.suffix in (
            ".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp", ".ico") else "css"
        sizes[kind] += f.stat().st_size
    return sizes, files, external


def table(html: Path) -> str:
    """The page-weight table for the book built in ``html``."""
    pages = sorted(p for p in html.rglob("*.html") if not SKIP_DIRS.intersection(p.relative_to(html).parts))
    kib = lambda n: f"{n / 1024:10.1f}"  # noqa: E731
    head = f"{'page':32s}{'html':>10s}{'inline':>10s}{'images':>10s}{'js':>10s}{'css':>10s}{'total':>10s}{'own':>10s}  ext"
    lines = [head, "-" * len(head)]
    every: set[Path] = set()
    pages_bytes = 0
    for page in pages:
        s, files, ext = weigh(html, page)
        every |= files
        pages_bytes += s["html"]
        total = s["html"] + s["images"] + s["js"] + s["css"]
        lines.append(f"{page.relative_to(html).as_posix():32s}{kib(s['html'])}{kib(s['inline'])}{kib(s['images'])}"
                     f"{kib(s['js'])}{kib(s['css'])}{kib(total)}{kib(s['html'] + s['images'])}  {ext}")
    assets = sum(f.stat().st_size for f in every)
    on_disk = sum(f.stat().st_size for f in html.rglob("*") if f.is_file())
    lines.append("-" * len(head))
    lines.append(f"book: {len(pages)} pages {pages_bytes / 2**20:.2f} MiB + {len(every)} distinct local files "
                 f"they load {assets / 2**20:.2f} MiB = {(pages_bytes + assets) / 2**20:.2f} MiB "
                 f"(whole build folder on disk {on_disk / 2**20:.2f} MiB)")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    html = Path(argv[0]) if argv else ROOT / "_build" / "html"
    if not (html / "index.html").exists():
        print(f"no built book at {html}: build it first (README)")
        return 2
    print(table(html))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
