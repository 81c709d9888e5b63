"""The exports of ``kaol.web`` are current: the fixtures of ``tests/js`` equal a fresh kaol run,
and the data and initialisations shipped in ``web/data`` are the ones kaol draws."""
from __future__ import annotations

import json

import numpy as np
import pytest

from kaol import web
from kaol.data import make_data
from kaol.model import ModelConfig, init_params


def _same(got, want, path: str = "") -> None:
    """Equal structure, equal integers and strings, floats to 1e-9 relative (kaol's float64 results
    move by ~1e-12 with its summation order; the JS is held to 1e-9 against this file)."""
    if isinstance(want, dict):
        assert sorted(got) == sorted(want), path
        for k in want:
            _same(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, list):
        assert len(got) == len(want), path
        if want and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in want):
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-11, err_msg=path)
        else:
            for i, (g, w) in enumerate(zip(got, want)):
                _same(g, w, f"{path}[{i}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-9, abs=1e-11), path
    else:
        assert got == want, path


def test_fixtures_are_current() -> None:
    """`python -m kaol.web fixtures` reproduces tests/js/fixtures.json (rerun it after a change of kaol)."""
    _same(json.loads(web.to_json(web.fixtures())), json.loads(web.FIXTURES.read_text()))


def test_permutation_gives_make_data_split() -> None:
    cfg = web.FIX_DATA
    perm = web.permutation(cfg)
    assert sorted(perm) == list(range(cfg.N_f))
    for n in (1, 4, cfg.N_f - 1):
        assert sorted(perm[:n]) == make_data(cfg.with_(N_ft=n)).ft.tolist()


@pytest.mark.parametrize("name", ["finetune", "pretrain"])
def test_shipped_data_is_kaols(name: str) -> None:
    """The data of web/data/<name>.json is make_data's draw of its config (phrases and split)."""
    meta = json.loads((web.WEB_DATA / f"{name}.json").read_text())
    d = meta["data"]
    cfg = (web.BOOK if name == "finetune" else web.SMALL).with_(seed=d["seed"])
    assert d == web.data_json(make_data(cfg))


def test_shipped_initialisation_is_kaols() -> None:
    """web/data/pretrain.bin holds kaol's float32 initial W then V of chapter 3's small run."""
    meta = json.loads((web.WEB_DATA / "pretrain.json").read_text())
    p0 = init_params(ModelConfig(), meta["model"]["T"], 1, meta["data"]["seed"])
    raw = np.fromfile(web.WEB_DATA / "pretrain.bin", dtype="<f4")
    np.testing.assert_array_equal(raw, np.concatenate([p0["W"].reshape(-1).numpy(), p0["V"].reshape(-1).numpy()]))


def test_cell_index_lists_every_shipped_run() -> None:
    meta = json.loads((web.WEB_DATA / "cell.json").read_text())
    assert [(r["K"], r["R"]) for r in meta["runs"]] == list(web.CELLS)
    for r in meta["runs"]:
        vocab_size = r["model"]["T"]             # the exported key keeps the name web/kaol.js reads
        assert (web.WEB_DATA / f"{r['file']}.bin").stat().st_size == \
            2 * (vocab_size * vocab_size + vocab_size * r["model"]["m"] * vocab_size)
