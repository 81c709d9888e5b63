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


def test_record_glues_formatted_strings(monkeypatch: pytest.MonkeyPatch) -> None:
    glued: dict[str, object] = {}
    monkeypatch.setattr("myst_nb.glue", lambda name, value, display=True: glued.update({name: (value, display)}))
    line = claims.record("ood-r", "OOD accuracy falls with R", "falls", "0.91 -> 0.40", "reproduced")
    assert glued == {"claim-ood-r-claim": ("OOD accuracy falls with R", False), "claim-ood-r-paper": ("falls", False),
                     "claim-ood-r-ours": ("0.91 -> 0.40", False), "claim-ood-r-verdict": ("reproduced", False)}
    assert line == "claim ood-r [reproduced]: OOD accuracy falls with R | paper: falls | ours: 0.91 -> 0.40"
    with pytest.raises(ValueError):
        claims.record("ood-r", "c", "p", "o", "yes")
    with pytest.raises(TypeError):
        claims.record("ood-r", "c", "p", 0.4, "not")  # numbers are formatted by the chapter


def fake_chapter(folder: Path, label: bool) -> None:
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
                          for f, v in zip(claims.FIELDS, ("a claim", "falls", "0.9 -> 0.4", "partly"))]}]
    (folder / "06_experiments.ipynb").write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4,
                                                             "nbformat_minor": 5}))


@pytest.mark.parametrize("label", [True, False])
def test_claims_page_rows(tmp_path: Path, label: bool) -> None:
    fake_chapter(tmp_path, label)
    lines = claims_page.page(tmp_path).splitlines()
    row = next(line for line in lines if claims.CLAIMS["ood-r"] in line)
    assert "{glue:text}`06_experiments.ipynb::claim-ood-r-ours:s`" in row
    assert "{glue:text}`06_experiments.ipynb::claim-ood-r-verdict:s`" in row
    assert row.endswith("{ref}`Experiments <claim-ood-r>` |" if label else "{doc}`Experiments <06_experiments>` |")
    assert lines[-1].startswith(f"| {len(claims.CLAIMS) + 1} | a claim |")  # recorded, not in CLAIMS
    other = next(line for line in lines if claims.CLAIMS["pt-loss-entropy"] in line)
    assert "not yet checked" in other and "glue" not in other


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
