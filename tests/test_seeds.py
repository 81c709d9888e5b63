"""KAOL_SEED_OFFSET shifts every seed kaol draws with (kaol.seeds)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kaol import seeds
from kaol.cache import key
from kaol.data import DataConfig, make_data
from kaol.model import ModelConfig, init_params


def test_offset_shifts_data_and_parameters(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = DataConfig(N_f=8, N_r=4, R=5, K=2, N_ft=4, seed=3)
    monkeypatch.delenv(seeds.ENV, raising=False)
    d0, p0, k0 = make_data(cfg), init_params(ModelConfig(), 20, 1, 3), key("x", cfg)
    d3, p3 = make_data(cfg.with_(seed=13)), init_params(ModelConfig(), 20, 1, 13)
    monkeypatch.setenv(seeds.ENV, "10")
    assert seeds.drawn(3) == 13
    d, p = make_data(cfg), init_params(ModelConfig(), 20, 1, 3)
    assert np.array_equal(d.ft, d3.ft) and all(np.array_equal(a, b) for a, b in zip(d.phrases, d3.phrases))
    assert torch.equal(p["V"], p3["V"]) and not torch.equal(p["V"], p0["V"])
    assert key("x", cfg) != k0, "a cache key carries the offset"
    assert not np.array_equal(d.ft, d0.ft) or d.phrases != d0.phrases


@pytest.mark.parametrize("value", ["-1", "1.5", "many", "1e3"])
def test_bad_offset_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(seeds.ENV, value)
    with pytest.raises(ValueError, match=seeds.ENV):
        seeds.offset()


@pytest.mark.parametrize("bad, error", [(-1, ValueError), (1.0, TypeError), (True, TypeError), ("3", TypeError)])
def test_bad_seed(bad: object, error: type) -> None:
    with pytest.raises(error, match="seed"):
        seeds.drawn(bad)  # type: ignore[arg-type]
