"""kaol.claims (the values glued for the claims page) and scripts/claims_page.py."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from kaol import claims

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("claims_page", ROOT / "scripts" / "claims_page.py")
claims_page = importlib.util.module_from_spec(spec)
spec.loader.exec_module(claims_page)


def test_glue_names() -> None:
    assert claims.glue_name("ood-r", "verdict") == "claim-ood-r-verdict"
    assert all(claims.glue_name(cid, "ours") for cid in claims.CLAIMS)
    for bad in ("OOD r", "-x", "x_y", ""):
        with pytest.raises(ValueError):
            claims.glue_name(bad, "ours")
    with pytest.raises(ValueError):
        claims.glue_name("ood-r", "value")


def test_effect_statistics() -> None:
    e = claims.Effect("gain", [0.34, 0.30, 0.41, 0.29, 0.36], range(5))
    assert e.n == 5 and abs(e.mean - 0.34) < 1e-12 and e.above == 5 and e.status == "holds"
    assert e.text() == "0.34 ± 0.05 over 5 seeds, 5/5 above 0"
    # a mean above the threshold but within two standard errors is weak
    assert claims.Effect("x", [0.5, -0.3, 0.4, -0.2, 0.1], range(5)).status == "weak"
    # one seed in five below the threshold still holds; two do not
    assert claims.Effect("x", [1.0, 1.1, 0.9, 1.0, -0.01], range(5)).status == "holds"
    assert claims.Effect("x", [1.0, 1.1, 0.9, -0.01, -0.01], range(5)).status == "weak"
    assert claims.Effect("x", [0.01, 0.0, 0.02], range(3), threshold=0.05).status == "fails"
    assert claims.verdict([e, e]) == "reproduced"
    assert claims.verdict([e, claims.Effect("x", [0.0, 0.0], range(2))]) == "partly"
    assert claims.verdict([claims.Effect("x", [0.0, 0.0], range(2))]) == "not"


@pytest.mark.parametrize("se, d", [(0.0, 3), (0.023, 2), (0.004, 3), (0.3, 1), (0.049, 2), (3.0, 0), (1e-9, 3)])
def test_decimals_follow_the_spread(se: float, d: int) -> None:
    assert claims.decimals(se) == d


@pytest.mark.parametrize("kwargs, error", [
    ({"values": [1.0, 2.0], "seeds": [0]}, ValueError),            # one value per seed
    ({"values": [1.0, 2.0], "seeds": [0, 0]}, ValueError),         # repeated seed
    ({"values": [1.0, float("nan")], "seeds": [0, 1]}, ValueError),
    ({"values": [], "seeds": []}, ValueError),
    ({"values": [1.0], "seeds": [0], "threshold": float("inf")}, ValueError),
])
def test_effect_rejects_bad_input(kwargs: dict, error: type) -> None:
    with pytest.raises(error):
        claims.Effect("x", **kwargs)


def test_record_glues_formatted_strings(monkeypatch: pytest.MonkeyPatch) -> None:
    glued: dict[str, object] = {}
    monkeypatch.setattr("myst_nb.glue", lambda name, value, display=True: glued.update({name: (value, display)}))
    monkeypatch.delenv("KAOL_SEED_OFFSET", raising=False)
    e = claims.Effect("drop from R = 20 to 40", [0.3, 0.35, 0.28], [0, 1, 2])
    out = claims.record("ood-r", "falls", [e])
    assert glued == {"claim-ood-r-claim": (claims.CLAIMS["ood-r"], False), "claim-ood-r-paper": ("falls", False),
                     "claim-ood-r-ours": (f"drop from R = 20 to 40: {e.text()}", False),
                     "claim-ood-r-verdict": ("reproduced", False), "claim-ood-r-seeds": ("0-2", False)}
    assert repr(out).splitlines()[0] == "claim ood-r: reproduced"
    assert "**Verdict: reproduced**" in out._repr_markdown_()
    quiet = claims.record("ood-r", "falls", [e], numbers_compared=False)
    assert repr(quiet) == "claim ood-r: reproduced (effects: holds; seeds 0-2)"
    monkeypatch.setenv("KAOL_SEED_OFFSET", "1000")
    assert claims.record("ood-r", "falls", [e]).seeds == "1000-1002"
    with pytest.raises(ValueError):
        claims.record("no-such-claim", "p", [e])
    with pytest.raises(TypeError):
        claims.record("ood-r", "", [e])
    with pytest.raises(ValueError):
        claims.record("ood-r", "p", [])


def fake_chapter(folder: Path, label: bool, verdict: str = "partly", seed_offset: int = 0) -> None:
    """An executed notebook as kaol.claims.record leaves it (glue outputs, optional label)."""
    def glued(name: str, value: str) -> dict:
        prefix = "application/papermill.record/"
        return {"output_type": "display_data", "data": {prefix + "text/plain": repr(value)},
                "metadata": {"scrapbook": {"name": name, "mime_prefix": prefix}}}
    md = "(claim-ood-r)=\n## R" if label else "## R"
    cells = [{"cell_type": "markdown", "metadata": {}, "source": ["# Experiments\n"]},
             {"cell_type": "markdown", "metadata": {}, "source": [md]},
             {"cell_type": "code", "metadata": {}, "execution_count": 1, "source": ["record(...)"],
              "outputs": [glued(f"claim-{cid}-{f}", v) for cid in ("ood-r", "new-one")
                          for f, v in zip(claims.FIELDS, ("a claim", "falls", "0.9 -> 0.4", verdict, "0-4"))]}]
    meta = {"kaol": {"seed_offset": seed_offset}} if seed_offset else {}
    (folder / "06_experiments.ipynb").write_text(json.dumps({"cells": cells, "metadata": meta, "nbformat": 4,
                                                             "nbformat_minor": 5}))


@pytest.mark.parametrize("label", [True, False])
def test_claims_page_rows(tmp_path: Path, label: bool) -> None:
    fake_chapter(tmp_path, label)
    lines = claims_page.page(tmp_path, tmp_path / "no-fresh-run.json").splitlines()
    row = next(line for line in lines if claims_page.with_math(claims.CLAIMS["ood-r"]) in line)
    assert "{glue:text}`06_experiments.ipynb::claim-ood-r-ours:s`" in row
    assert row.endswith("{glue:text}`06_experiments.ipynb::claim-ood-r-verdict:s` "
                        "(seeds {glue:text}`06_experiments.ipynb::claim-ood-r-seeds:s`); fresh seeds: not run |")
    link = "{ref}`Experiments <claim-ood-r>`" if label else "{doc}`Experiments <06_experiments>`"
    assert f"; checked in {link} |" in row
    assert lines[-1].startswith(f"| {len(claims.CLAIMS) + 1} | a claim; checked in ")  # recorded, not in CLAIMS
    other = next(line for line in lines if claims_page.with_math(claims.CLAIMS["pt-loss-entropy"]) in line)
    assert "not yet checked" in other and "glue" not in other
    assert all(line.count("|") == 6 for line in lines if line.startswith("|"))  # five columns: fits the page
    assert "**2 of 17 claims checked: 0 reproduced, 2 partly, 0 not**" in lines


def test_fresh_seed_verdicts(tmp_path: Path) -> None:
    """--fresh records the verdicts of a run with KAOL_SEED_OFFSET; the page shows where they change."""
    book, fresh = tmp_path / "book", tmp_path / "fresh"
    book.mkdir(), fresh.mkdir()
    fake_chapter(book, True, "partly")
    fake_chapter(fresh, True, "reproduced", seed_offset=1000)
    record = claims_page.record_fresh(fresh, tmp_path / "fresh.json")
    assert record["offset"] == 1000 and record["verdicts"]["ood-r"]["verdict"] == "reproduced"
    text = claims_page.page(book, tmp_path / "fresh.json")
    row = next(line for line in text.splitlines() if claims_page.with_math(claims.CLAIMS["ood-r"]) in line)
    assert "; fresh seeds 0-4: reproduced; **changes with the seeds** |" in row
    assert "2 change with fresh seeds" in text
    # A later run of some chapters only: the claims of the others keep their recorded verdicts.
    kept = {"verdict": "partly", "ours": "x", "seeds": "1000-1004"}
    (tmp_path / "fresh.json").write_text(json.dumps({**record, "verdicts": {**record["verdicts"],
                                                                            "elsewhere": kept, "gone": kept}}))
    (book / "04_finetuning.ipynb").write_text((book / "06_experiments.ipynb").read_text()
                                              .replace("claim-ood-r-", "claim-elsewhere-"))
    (book / "06_experiments.ipynb").write_text((book / "06_experiments.ipynb").read_text()
                                               .replace("claim-new-one-", "claim-gone-"))
    record = claims_page.record_fresh(fresh, tmp_path / "fresh.json", book)
    assert record["verdicts"]["elsewhere"] == kept and "gone" not in record["verdicts"]
    assert record["verdicts"]["ood-r"]["verdict"] == "reproduced"
    fake_chapter(fresh, True, "reproduced")            # executed without an offset: refused
    with pytest.raises(SystemExit):
        claims_page.record_fresh(fresh, tmp_path / "fresh.json")


def test_claims_notation_as_math() -> None:
    assert claims_page.with_math("OOD error bound exp(-N~_f K^2 log R / (2 R^2)) (Thm 2)") == \
        r"OOD error bound $e^{-\tilde N_f K^2 \log R / (2R^2)}$ (Thm 2)"
    assert claims_page.with_math("q is never a query: W q stays, on s and r (App H, App K)") == \
        "$q$ is never a query: $Wq$ stays, on $s$ and $r$ (App H, App K)"
    assert claims_page.with_math("Rank-1 FT with N~_f and K; Theorem 2's bound") == \
        r"Rank-1 FT with $\tilde N_f$ and $K$; Theorem 2's bound"


def test_claims_page_is_up_to_date() -> None:
    """book/claims.md is what scripts/claims_page.py writes for the executed chapters."""
    assert claims_page.main(["--check"]) == 0, "run python scripts/claims_page.py"


def test_mean_sd_rounds_to_the_spread() -> None:
    from kaol.claims import mean_sd
    assert mean_sd([0.5, 0.5, 0.5]) == "0.500 ± 0.000"
    assert mean_sd([0.41, 0.45, 0.52, 0.47, 0.44]) == "0.46 ± 0.04"
    assert mean_sd([30.0, 37.0, 41.0]) == "36 ± 6"
    with pytest.raises(ValueError):
        mean_sd([])


def test_markdown_escapes_pipes_in_effect_names() -> None:
    c = claims.Claim("x", "claim", "paper", (claims.Effect("|<u_1, e_q>|", [1.0, 1.0], [0, 1]),))
    row = c._repr_markdown_().splitlines()[-1]
    assert row.startswith("| \\|<u_1, e_q>\\| |") and row.count(" | ") == 3
