"""Write ``book/claims.md``: every claim, the paper's value, ours, the verdict, the check.

Usage::

    python scripts/claims_page.py            # rewrite book/claims.md
    python scripts/claims_page.py --check    # exit 1 if book/claims.md is out of date
    python scripts/claims_page.py --fresh DIR   # record the verdicts of a fresh-seed run

``--fresh DIR`` reads the notebooks that ``scripts/execute_notebooks.py --seed-offset 1000
--out DIR`` executed and writes their verdicts to ``results/claims_fresh_seeds.json``
(atomically); the page shows them beside the book's own, and says where a verdict changes
with the seeds. ``DIR`` may hold some chapters only (``execute_notebooks.py --seed-offset
1000 --out DIR book/06_experiments.ipynb``, after a change that touches that chapter): the
claims of the other chapters keep the verdicts recorded for them, with the same offset.

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
from kaol.claims import CLAIMS, FIELDS, VERDICTS, glue_name  # noqa: E402

BOOK = ROOT / "book"
PAGE = BOOK / "claims.md"
FRESH = ROOT / "results" / "claims_fresh_seeds.json"
# The plain-text notation of the claim statements (kaol.claims.CLAIMS) and its TeX: the
# bound (as a power of e: math does not wrap, and exp(...) made the table too wide), the
# product W q and N~_f, then a lone token or size letter (not "App H", "App K").
BOUND = "exp(-N~_f K^2 log R / (2 R^2))"
TEX = {BOUND: r"e^{-\tilde N_f K^2 \log R / (2R^2)}", "W q": "Wq", "N~_f": r"\tilde N_f"}
MATH = re.compile("|".join(map(re.escape, TEX)) + r"|(?<![\w'])(?<!App )[HKRcqrs](?![\w'])")
GLUE_PREFIX = "application/papermill.record/"
KEY = re.compile(r"claim-(?P<id>[a-z0-9-]+?)-verdict")

HEADER = """# Claims

Every claim of {{cite:t}}`xu2025filtering` that the book checks, in the paper's order: what
the paper states, what our runs measured (mean ± standard deviation over seeds), and the
verdict. Each claim is one or more effects measured once per seed; an effect *holds* when
its mean exceeds the paper's threshold by more than two standard errors and at least four
in five seeds exceed it on their own. A claim is *reproduced* when all its effects hold,
*not* when all fail, *partly* otherwise (`kaol.claims`). The values are pasted from the
executed chapters; none is typed on this page. The link after each claim opens its check.

**{summary}**

The column *fresh seeds* is the verdict of the same checks re-run with every seed shifted
by {offset} (`KAOL_SEED_OFFSET={offset}`, {fresh_note}); a claim whose verdict changes with
the seeds says so there.

This page is written by `scripts/claims_page.py` from the executed notebooks; `pytest`
fails when it is out of date.

| | claim | paper | ours | verdict (book's seeds; fresh seeds) |
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
        seed_offset = nb.get("metadata", {}).get("kaol", {}).get("seed_offset", 0)
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
                    glued[name] = literal_eval("".join(text))
        markdown = "\n".join(sources)
        for name in glued:
            if m := KEY.fullmatch(name):
                cid = m.group("id")
                found[cid] = {"notebook": nb_path.name, "title": title, "seed_offset": seed_offset,
                              "label": re.search(rf"^\(claim-{re.escape(cid)}\)=\s*$", markdown, re.M) is not None,
                              **{f: glued.get(glue_name(cid, f), "") for f in FIELDS}}
                found[cid]["claim"] = found[cid]["claim"] or cid
    return found


def fresh_verdicts(path: Path = FRESH) -> dict:
    """The recorded fresh-seed run (``--fresh``), or an empty record if none was made."""
    if not path.exists():
        return {"offset": None, "verdicts": {}}
    return json.loads(path.read_text(encoding="utf-8"))


def row(n: int, cid: str, claim: str, where: dict | None, fresh: dict | None) -> str:
    """One table row: glue references if the claim is recorded, a placeholder otherwise."""
    if where is None:
        return f"| {n} | {with_math(claim)} | | | not yet checked |"
    nb = where["notebook"]
    paper, ours, seeds, verdict = (f"{{glue:text}}`{nb}::{glue_name(cid, f)}:s`"
                                   for f in ("paper", "ours", "seeds", "verdict"))
    if fresh is None:
        again = "fresh seeds: not run"
    else:
        again = f"fresh seeds {fresh['seeds']}: {fresh['verdict']}"
        if fresh["verdict"] != where["verdict"]:
            again += "; **changes with the seeds**"
    link = (f"{{ref}}`{where['title']} <claim-{cid}>`" if where["label"]
            else f"{{doc}}`{where['title']} <{Path(nb).stem}>`")
    return f"| {n} | {with_math(claim)}; checked in {link} | {paper} | {ours} | {verdict} (seeds {seeds}); {again} |"


def page(book: Path = BOOK, fresh_path: Path = FRESH) -> str:
    """The text of ``claims.md`` for the notebooks in ``book`` and the fresh-seed record."""
    found = recorded(book)
    fresh = fresh_verdicts(fresh_path)
    ids = list(CLAIMS) + sorted(set(found) - set(CLAIMS))
    rows = [row(n, cid, CLAIMS.get(cid) or found[cid]["claim"], found.get(cid), fresh["verdicts"].get(cid))
            for n, cid in enumerate(ids, 1)]
    counts = {v: sum(f["verdict"] == v for f in found.values()) for v in VERDICTS}
    summary = f"{len(found)} of {len(ids)} claims checked: " + ", ".join(f"{counts[v]} {v}" for v in VERDICTS)
    changed = [cid for cid in found if cid in fresh["verdicts"] and fresh["verdicts"][cid]["verdict"] != found[cid]["verdict"]]
    if fresh["verdicts"]:
        summary += f"; {len(changed)} change with fresh seeds"
    fresh_note = (f"recorded by `{fresh['command']}`" if fresh["verdicts"] else "not recorded yet")
    head = HEADER.format(summary=summary, offset=fresh["offset"] or 1000, fresh_note=fresh_note)
    return head + "\n".join(rows) + "\n"


def record_fresh(folder: Path, path: Path = FRESH, book: Path = BOOK) -> dict:
    """Write the verdicts of the notebooks executed in ``folder`` (a fresh-seed run) to ``path``; the
    claims that ``book``'s other chapters record keep their verdicts of ``path`` (same offset)."""
    found = recorded(folder)
    if not found:
        raise SystemExit(f"no executed chapter with claims in {folder}: run scripts/execute_notebooks.py "
                         f"--seed-offset 1000 --out {folder} first")
    offsets = {f["seed_offset"] for f in found.values()}
    if len(offsets) != 1 or not next(iter(offsets)):
        raise SystemExit(f"the chapters in {folder} ran with seed offsets {sorted(offsets)}: execute them all "
                         f"with one --seed-offset N > 0")
    offset = offsets.pop()
    rerun = {p.name for p in folder.glob("*.ipynb")}
    chapter = {cid: f["notebook"] for cid, f in recorded(book).items()}
    old = fresh_verdicts(path)
    kept = {cid: v for cid, v in old["verdicts"].items()
            if old["offset"] == offset and cid not in found and chapter.get(cid) not in rerun}
    data = {"command": f"python scripts/execute_notebooks.py --seed-offset {offset} --out DIR && "
                       f"python scripts/claims_page.py --fresh DIR",
            "offset": offset,
            "verdicts": dict(sorted({**kept, **{cid: {k: f[k] for k in ("verdict", "ours", "seeds")}
                                                for cid, f in found.items()}}.items()))}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return data


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if book/claims.md is out of date")
    parser.add_argument("--fresh", type=Path, default=None,
                        help="folder of notebooks executed with --seed-offset: record their verdicts")
    args = parser.parse_args(argv)
    if args.fresh is not None:
        data = record_fresh(args.fresh)
        print(f"wrote {FRESH.relative_to(ROOT)}: {len(data['verdicts'])} verdicts")
    text = page()
    if args.check:
        if not PAGE.exists() or PAGE.read_text(encoding="utf-8") != text:
            print(f"{PAGE.relative_to(ROOT)} is out of date: run python scripts/claims_page.py")
            return 1
        return 0
    tmp = PAGE.with_name(f".{PAGE.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, PAGE)
    missing = [cid for cid in CLAIMS if cid not in recorded()]
    print(f"wrote {PAGE.relative_to(ROOT)}: {len(CLAIMS) - len(missing)}/{len(CLAIMS)} claims recorded"
          + (f"; not yet: {', '.join(missing)}" if missing else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
