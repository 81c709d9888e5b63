"""Write ``book/claims.md``: every claim, the paper's value, ours, the verdict, the check.

Usage::

    python scripts/claims_page.py            # rewrite book/claims.md
    python scripts/claims_page.py --check    # exit 1 if book/claims.md is out of date

The rows are the ids of :data:`kaol.claims.CLAIMS`, then any other id a chapter records.
For an id that an executed chapter recorded (``kaol.claims.record``) the paper, ours and
verdict cells are ``{glue:text}`` references into that notebook, so the values shown are
the ones the chapter computed when the book is built; the claim cell ends with a link to the
label ``(claim-<id>)=`` in the chapter (or to the chapter when it has no such label) and
typesets the claim's notation as math (``MATH``). An id no chapter records yet is listed as
"not yet checked". Re-run after executing a chapter. The table has five columns so that it
fits the page at a 1280 px window (``tests/browser`` fails on a table wider than the page).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from ast import literal_eval
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from kaol.claims import CLAIMS, glue_name  # noqa: E402

BOOK = ROOT / "book"
PAGE = BOOK / "claims.md"
GLUE_PREFIX = "application/papermill.record/"
KEY = re.compile(r"claim-(?P<id>[a-z0-9-]+?)-verdict")
# The plain-text notation of the claim statements (kaol.claims.CLAIMS) and its TeX: the
# bound (as a power of e: math does not wrap, and exp(...) made the table too wide), the
# product W q and N~_f, then a lone token or size letter (not "App H", "App K").
BOUND = "exp(-N~_f K^2 log R / (2 R^2))"
TEX = {BOUND: r"e^{-\tilde N_f K^2 \log R / (2R^2)}", "W q": "Wq", "N~_f": r"\tilde N_f"}
MATH = re.compile("|".join(map(re.escape, TEX)) + r"|(?<![\w'])(?<!App )[HKRcqrs](?![\w'])")

HEADER = """# Claims

Every claim of {cite:t}`xu2025filtering` that the book checks, in the paper's order: what
the paper states, what our runs measured, and the verdict (*reproduced*, *partly*, *not*).
The values are pasted from the executed chapters (`kaol.claims.record` glues them next to
the `assert` that checks the claim); none is typed on this page. The link after each claim
opens its check.

This page is written by `scripts/claims_page.py` from the executed notebooks; `pytest`
fails when it is out of date.

| | claim | paper | ours | verdict |
|---|---|---|---|---|
"""


def with_math(claim: str) -> str:
    """``claim`` with its notation typeset: ``N~_f`` becomes ``$\\tilde N_f$``, ``K`` ``$K$``."""
    return MATH.sub(lambda m: f"${TEX.get(m[0], m[0])}$", claim)


def recorded(book: Path = BOOK) -> dict[str, dict]:
    """For each claim id glued by an executed notebook: its notebook, title, label, claim text."""
    found: dict[str, dict] = {}
    for nb_path in sorted(book.glob("*.ipynb")):
        nb = json.loads(nb_path.read_text(encoding="utf-8"))
        title, sources = nb_path.stem, []
        glued: dict[str, str] = {}
        for cell in nb["cells"]:
            src = "".join(cell["source"])
            if cell["cell_type"] == "markdown":
                sources.append(src)
                if title == nb_path.stem and (m := re.search(r"^# (.+)$", src, re.M)):
                    title = m.group(1).strip()
            for out in cell.get("outputs", []):
                name = out.get("metadata", {}).get("scrapbook", {}).get("name")
                text = out.get("data", {}).get(GLUE_PREFIX + "text/plain") or out.get("data", {}).get("text/plain")
                if name and text is not None:
                    glued[name] = "".join(text)
        markdown = "\n".join(sources)
        for name in glued:
            if m := KEY.fullmatch(name):
                cid = m.group("id")
                claim = glued.get(glue_name(cid, "claim"), repr(cid))
                found[cid] = {"notebook": nb_path.name, "title": title, "claim": literal_eval(claim),
                              "label": re.search(rf"^\(claim-{re.escape(cid)}\)=\s*$", markdown, re.M) is not None}
    return found


def row(n: int, cid: str, claim: str, where: dict | None) -> str:
    """One table row: glue references if the claim is recorded, a placeholder otherwise."""
    if where is None:
        return f"| {n} | {with_math(claim)} | | | not yet checked |"
    nb = where["notebook"]
    cells = [f"{{glue:text}}`{nb}::{glue_name(cid, f)}:s`" for f in ("paper", "ours", "verdict")]
    link = (f"{{ref}}`{where['title']} <claim-{cid}>`" if where["label"]
            else f"{{doc}}`{where['title']} <{Path(nb).stem}>`")
    return f"| {n} | {with_math(claim)}; checked in {link} | {' | '.join(cells)} |"


def page(book: Path = BOOK) -> str:
    """The text of ``claims.md`` for the notebooks in ``book``."""
    found = recorded(book)
    ids = list(CLAIMS) + sorted(set(found) - set(CLAIMS))
    rows = [row(n, cid, CLAIMS.get(cid) or found[cid]["claim"], found.get(cid)) for n, cid in enumerate(ids, 1)]
    return HEADER + "\n".join(rows) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if book/claims.md is out of date")
    args = parser.parse_args(argv)
    text = page()
    if args.check:
        if not PAGE.exists() or PAGE.read_text(encoding="utf-8") != text:
            print(f"{PAGE.relative_to(ROOT)} is out of date: run python scripts/claims_page.py")
            return 1
        return 0
    tmp = PAGE.with_name(f".{PAGE.name}.tmp")  # written whole, then renamed: never half a page
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, PAGE)
    missing = [cid for cid in CLAIMS if cid not in recorded()]
    print(f"wrote {PAGE.relative_to(ROOT)}: {len(CLAIMS) - len(missing)}/{len(CLAIMS)} claims recorded"
          + (f"; not yet: {', '.join(missing)}" if missing else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
