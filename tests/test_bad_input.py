"""Bad input, as a hostile user would give it: every case is a clear ``TypeError``/``ValueError`` that
names the parameter (or a warning naming the file for the cache), never a deep traceback, a silently
wrong result, a hang or a crash."""
from __future__ import annotations

import json
import math
import os
import pickle
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kaol import cache, checks, experiments, fast, parallel, popqa, scales, sweep
from kaol.data import DataConfig, make_data
from kaol.model import ModelConfig, init_params
from kaol.train import FTConfig, FTHistory, PTHistory, Schedule, finetune, pretrain

TINY = DataConfig(N_f=6, N_r=2, R=3, K=2, N_ft=3)
FAST = Schedule(eta=(1.0, 2.0, 1.0), T1=1, T2=2, T=3)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("KAOL_CACHE", str(folder))
    return folder


# ---------------------------------------------------------------- configurations

BAD_CONFIGS = [
    (DataConfig, dict(N_f=10.0), TypeError, r"N_f = 10\.0"),
    (DataConfig, dict(N_f=True), TypeError, r"N_f = True"),
    (DataConfig, dict(K=2.5), TypeError, r"K = 2\.5"),
    (DataConfig, dict(N_r=-1), ValueError, r"N_r = -1"),
    (DataConfig, dict(N_ft="3"), TypeError, r"N_ft = '3'"),
    (DataConfig, dict(rho_c=math.nan), ValueError, r"rho_c = nan"),
    (DataConfig, dict(rho_c=math.inf), ValueError, r"rho_c = inf"),
    (DataConfig, dict(rare_weight=math.nan), ValueError, r"rare_weight.* = nan"),
    (DataConfig, dict(rare_weight=0.0), ValueError, r"rare_weight"),
    (DataConfig, dict(seed=None), TypeError, r"seed = None"),
    (DataConfig, dict(seed=-1), ValueError, r"seed = -1"),
    (DataConfig, dict(context=1), TypeError, r"context = 1"),
    (DataConfig, dict(N_f=10 ** 7, N_ft=1), ValueError, r"N_f=10000000.*memory"),
    (ModelConfig, dict(dtype="float32"), TypeError, r"dtype = 'float32'"),
    (ModelConfig, dict(dtype=torch.int64), ValueError, r"dtype = torch\.int64"),
    (ModelConfig, dict(lam=math.nan), ValueError, r"lam = nan"),
    (ModelConfig, dict(m=2.0), TypeError, r"m = 2\.0"),
    (ModelConfig, dict(sigma0=math.inf), ValueError, r"sigma0 = inf"),
    (ModelConfig, dict(arch="gpt"), ValueError, r"arch = 'gpt'"),
    (Schedule, dict(eta=(math.nan, 1.0, 1.0)), ValueError, r"eta\[0\] = nan"),
    (Schedule, dict(eta="abc"), ValueError, r"eta = 'abc'"),
    (Schedule, dict(T=10.5), TypeError, r"T = 10\.5"),
    (FTConfig, dict(eta=math.nan), ValueError, r"eta = nan"),
    (FTConfig, dict(steps=3.0), TypeError, r"steps = 3\.0"),
    (FTConfig, dict(rank1="yes"), TypeError, r"rank1 = 'yes'"),
]


@pytest.mark.parametrize("cls,kw,err,pattern", BAD_CONFIGS, ids=[p for *_, p in BAD_CONFIGS])
def test_bad_config(cls, kw: dict, err: type, pattern: str) -> None:
    base = TINY.__dict__ if cls is DataConfig else {}
    with pytest.raises(err, match=pattern):
        cls(**{**base, **kw})


@settings(max_examples=10)
@given(field=st.sampled_from(["N_f", "N_r", "R", "K", "N_ft", "seed"]),
       value=st.one_of(st.floats(allow_nan=True), st.booleans(), st.text(max_size=3), st.none()))
def test_any_non_int_size_is_a_type_error(field: str, value: object) -> None:
    with pytest.raises(TypeError, match=rf"\b{field} = "):
        TINY.with_(**{field: value})


@given(st.integers(min_value=1, max_value=6))
def test_n_ft_equal_to_n_f_is_valid(n: int) -> None:
    assert TINY.with_(N_f=n, N_ft=n).N_ft == n


def test_numpy_ints_are_plain_ints() -> None:
    cfg = TINY.with_(N_f=np.int64(6))
    assert type(cfg.N_f) is int and cfg == TINY


# ---------------------------------------------------------------- training entry points

def test_pretrain_and_finetune_arguments() -> None:
    d = make_data(TINY)
    with pytest.raises(ValueError, match=r"log_every = 0"):
        pretrain(d, schedule=FAST, log_every=0)
    with pytest.raises(TypeError, match=r"log_every = 1\.5"):
        pretrain(d, schedule=FAST, log_every=1.5)
    with pytest.raises(ValueError, match=r"data = \[\]"):
        pretrain([], schedule=FAST)
    with pytest.raises(TypeError, match=r"data = 'x'"):
        pretrain("x", schedule=FAST)
    with pytest.raises(TypeError, match=r"schedule = "):
        pretrain(d, schedule=(1, 2, 3))
    with pytest.raises(ValueError, match=r"seed\[0\] = -1"):
        init_params(ModelConfig(), d.vocab.size, 1, [-1])
    with pytest.raises(TypeError, match=r"seed = None"):
        init_params(ModelConfig(), d.vocab.size, 1, None)
    with pytest.raises(TypeError, match=r"params must be a non-empty dict"):
        finetune(None, d)
    with pytest.raises(TypeError, match=r"cfg = "):
        finetune(init_params(ModelConfig(), d.vocab.size), d, cfg={"eta": 1.0})


def test_exploding_finetuning_stops_and_is_not_cached(_cache: Path) -> None:
    """eta = 1e38 once ended with loss 0 and |V| ~ 1e37, cached as a normal result."""
    with pytest.raises(ValueError, match=r"fine-tuning.*step \d+.*learning rate 1e\+38.*lower that rate"):
        sweep.grid(TINY, seeds=[0], schedule=FAST, ft=FTConfig(eta=1e38, steps=3))
    assert not list(_cache.glob("finetune-*"))


def test_batch_build_refuses_out_of_range_ids() -> None:
    """The compiled loop has no bounds checks: an out-of-range target once gave a wrong loss or a segfault.
    It reads ``x_L`` at the last position and takes one run's ``Samples``: a row without its last token,
    or a list of runs (the former batched interface), is refused too."""
    d = make_data(TINY)
    vocab_size = d.vocab.size
    s = d.qa_train
    bad = replace(s, y_idx=s.y_idx.clone())
    bad.y_idx[0, 0] = vocab_size
    with pytest.raises(ValueError, match=rf"target ids must lie in \[0, {vocab_size}\)"):
        fast.Batch.build(bad, vocab_size, d.vocab.rho, torch.float32)
    bad = replace(s, tokens=s.tokens.clone())
    bad.tokens[0, -1] = -1
    with pytest.raises(ValueError, match=r"token ids"):
        fast.Batch.build(bad, vocab_size, d.vocab.rho, torch.float32)
    bad = replace(s, mask=s.mask.clone())
    bad.mask[0, -1] = False
    with pytest.raises(ValueError, match=r"last token x_L.*mask\[:, -1\]"):
        fast.Batch.build(bad, vocab_size, d.vocab.rho, torch.float32)
    rho = d.vocab.rho.clone()
    rho[0] = math.nan
    with pytest.raises(ValueError, match=r"rho must hold finite norms > 0"):
        fast.Batch.build(s, vocab_size, rho, torch.float32)
    with pytest.raises(ValueError, match=rf"rho has shape \(2, {vocab_size}\)"):
        fast.Batch.build(s, vocab_size, d.vocab.rho.expand(2, -1), torch.float32)
    with pytest.raises(TypeError, match=r"one run's Samples.*not list"):
        fast.Batch.build([s, s], vocab_size, d.vocab.rho, torch.float32)



def test_core_refuses_stacked_parameters() -> None:
    """The core takes one run: stacked parameters (B, ...) passed whole once made ``fast.descend``
    write past its rows (no bounds checks) and ``metrics.rank1`` treat the runs as rows. Each
    now says what it needs."""
    from kaol import metrics
    d = make_data(TINY)
    v = d.vocab
    p = init_params(ModelConfig(), v.size, 2, 0)
    batch = fast.Batch.build(d.pretrain, v.size, v.rho, torch.float32)
    with pytest.raises(ValueError, match=r"not one run's .*params\[name\]\[b\]"):
        fast.run(p["W"], p["V"], batch, 1.0)
    g = torch.ones(len(batch.rows), ModelConfig().m, v.size)
    with pytest.raises(ValueError, match=r"descend needs one run's parameter"):
        fast.descend(p["V"].clone(), g, 0.1, batch.rows)
    with pytest.raises(ValueError, match=r"descend needs"):
        fast.descend(p["V"][0].clone(), g, 0.1, batch.rows + v.size)        # rows out of range
    with pytest.raises(ValueError, match=r"descend needs"):
        fast.descend(p["V"][0].clone(), g.double(), 0.1, batch.rows)         # another dtype
    for fn in (metrics.rank1, lambda x: metrics.gradient_spectrum(x, v.q)):
        with pytest.raises(ValueError, match=r"one run's V gradient .*g\[b\]"):
            fn(p["V"])
    with pytest.raises(ValueError, match=r"rows must be a tensor of the 3 token ids"):
        metrics.gradient_spectrum(g[:3], v.q, batch.rows)


# ---------------------------------------------------------------- sweeps

@pytest.mark.parametrize("kw,err,pattern", [
    (dict(N_ft=[]), ValueError, r"N_ft = \[\] is empty"),
    (dict(K=[4]), ValueError, r"K = 4 .*K <= R = 3"),
    (dict(N_ft=[7]), ValueError, r"N_ft = 7"),
    (dict(K=[2.0]), TypeError, r"K\[0\] = 2\.0"),
    (dict(seeds=[]), ValueError, r"seeds = \[\] is empty"),
    (dict(seeds=[0, 0]), ValueError, r"seeds = \[0, 0\] repeats"),
    (dict(seeds=[None]), TypeError, r"seeds\[0\] = None"),
], ids=["empty N_ft", "K > R", "N_ft > N_f", "float K", "no seeds", "repeated seed", "None seed"])
def test_bad_grid(kw: dict, err: type, pattern: str) -> None:
    with pytest.raises(err, match=pattern):
        sweep.grid(TINY, schedule=FAST, ft=FTConfig(steps=1), **kw)


def test_scale_refuses_k_above_r_and_too_large_n_ft() -> None:
    s = scales.SCALES["book"]
    with pytest.raises(ValueError, match=r"K = 40"):
        replace(s, K=(1, 40))
    with pytest.raises(ValueError, match=r"N_ft = 101"):
        replace(s, N_ft=(10, 101))
    with pytest.raises(ValueError, match=r"seeds = \(\) is empty"):
        replace(s, seeds=())
    with pytest.raises(ValueError, match=r"seeds = 0"):
        s.with_seeds(0)


@pytest.mark.parametrize("kw,err,pattern", [
    (dict(workers=0), ValueError, r"workers = 0"),
    (dict(workers=1.5), TypeError, r"workers = 1\.5"),
    (dict(engine="spark"), ValueError, r"engine = 'spark'"),
    (dict(address="tcp://10.0.0.1:8786"), ValueError, r"address = 'tcp://10\.0\.0\.1:8786' is ignored"),
])
def test_bad_run_all(kw: dict, err: type, pattern: str) -> None:
    with pytest.raises(err, match=pattern):
        parallel.run_all(abs, [1, 2], **kw)


def test_unreachable_dask_address_fails_fast() -> None:
    pytest.importorskip("dask.distributed")
    t0 = time.perf_counter()
    with pytest.raises(ConnectionError, match=r"address = 'tcp://127\.0\.0\.1:9'"):
        parallel.run_all(abs, [1], engine="dask", address="tcp://127.0.0.1:9")
    assert time.perf_counter() - t0 < parallel.CONNECT_TIMEOUT + 5


@pytest.mark.parametrize("address,err,pattern", [
    ("127.0.0.1:9", ConnectionError, r"Ray cluster at address = '127\.0\.0\.1:9'"),
    ("ray://127.0.0.1:9", ConnectionError, r"address = 'ray://127\.0\.0\.1:9'"),
    ("nonsense", ValueError, r"address = 'nonsense' is not a Ray cluster address"),
])
def test_ray_addresses_are_probed_first(address: str, err: type, pattern: str) -> None:
    with pytest.raises(err, match=pattern):
        parallel._reachable(address, "Ray cluster", timeout=2)


def test_pool_workers_die_with_their_parent() -> None:
    """A killed parent used to leave its workers computing: the local engine's workers run
    ``_die_with_parent``; here a forked worker outlives its parent by at most a moment."""
    import inspect
    assert "initializer=_die_with_parent" in inspect.getsource(parallel.run_all)
    r, w = os.pipe()
    parent = os.fork()
    if parent == 0:                             # the "parent": starts a worker, then dies
        try:
            me = os.getpid()                        # as run_all passes its own pid: the worker's
            worker = os.fork()                      # getppid() may already be the reaper's
            if worker == 0:
                parallel._die_with_parent(me)
                time.sleep(60)
                os._exit(0)
            os.write(w, str(worker).encode())
        finally:
            os._exit(0)
    os.waitpid(parent, 0)
    worker = int(os.read(r, 32))
    os.close(r)
    os.close(w)
    deadline = time.time() + 10
    while time.time() < deadline and _alive(worker):
        time.sleep(0.05)
    assert not _alive(worker)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


# ---------------------------------------------------------------- result files and command line

def test_out_keeps_dots_and_pair_is_atomic(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    csv, meta = experiments.out_paths(tmp_path / "name_v1.5")
    assert csv.name == "name_v1.5.csv" and meta.name == "name_v1.5.json"
    df = pd.DataFrame({"a": [1, 2]})
    scale = scales.SCALES["book"]
    experiments.save(df, tmp_path / "name_v1.5", "fig2a", "book", scale, 1.0, "local")
    old = csv.read_bytes(), meta.read_bytes()
    info = json.loads(meta.read_text())
    import hashlib
    assert info["csv_sha256"] == hashlib.sha256(old[0]).hexdigest()
    calls = []

    def dying_fsync(fd: int) -> None:          # a kill between the two files
        calls.append(fd)
        if len(calls) == 2:
            raise OSError("killed")
    monkeypatch.setattr(os, "fsync", dying_fsync)
    with pytest.raises(OSError):
        experiments.save(pd.DataFrame({"a": [3]}), tmp_path / "name_v1.5", "fig2a", "book", scale, 1.0, "local")
    assert (csv.read_bytes(), meta.read_bytes()) == old
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*tmp"))


@pytest.mark.parametrize("args,pattern", [
    (["--workers", "0"], r"--workers 0"),
    (["--seeds", "0"], r"--seeds 0"),
    (["--address", "tcp://h:1"], r"--address 'tcp://h:1' is ignored by --engine local"),
    (["--seeds", "2.5"], r"--seeds.*invalid int"),
    (["--out", "/proc/kaol/x"], r"--out"),
])
def test_cli_refuses_before_computing(args: list[str], pattern: str, capsys) -> None:
    t0 = time.perf_counter()
    with pytest.raises(SystemExit) as exit_:
        experiments.main(["fig2a", *args])
    assert exit_.value.code == 2
    assert __import__("re").search(pattern, capsys.readouterr().err)
    assert time.perf_counter() - t0 < 5


# ---------------------------------------------------------------- the cache

def _entry(folder: Path, name: str, parts: tuple) -> Path:
    return folder / f"{name}-{cache.key(name, *parts)}.pt"


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch " + str(Path(os.environ["KAOL_CACHE"]) / "PWNED"),))


def _counting(value):
    calls = []

    def compute():
        calls.append(1)
        return value
    return compute, calls


def test_planted_pickle_runs_no_code(_cache: Path) -> None:
    _cache.mkdir()
    path = _entry(_cache, "t", (1,))
    path.write_bytes(pickle.dumps(_Boom()))
    torch.save({"x": _Boom()}, _cache / "t2.pt")
    compute, calls = _counting({"x": torch.ones(2)})
    with pytest.warns(cache.CacheWarning, match=str(path)):
        out = cache.memo("t", (1,), compute)
    assert calls == [1] and torch.equal(out["x"], torch.ones(2))
    assert not (_cache / "PWNED").exists()
    assert cache.memo("t", (1,), compute)["x"].sum() == 2 and calls == [1]     # rewritten, read back


@pytest.mark.parametrize("damage", ["truncate", "edit", "rename", "empty"])
def test_damaged_entry_is_recomputed_with_a_warning(_cache: Path, damage: str) -> None:
    compute, calls = _counting({"x": torch.arange(3.0)})
    cache.memo("t", (1,), compute)
    path = _entry(_cache, "t", (1,))
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "edit":
        raw = torch.load(path, weights_only=True)
        raw["tensors"]["0"] += 1
        torch.save(raw, path)
    else:                                       # an entry of another key, moved to this name
        other = _entry(_cache, "t", (2,))
        cache.memo("t", (2,), lambda: {"x": torch.zeros(3)})
        os.replace(other, path)
    with pytest.warns(cache.CacheWarning, match=r"ignoring the entry .*" + path.name):
        out = cache.memo("t", (1,), compute)
    assert torch.equal(out["x"], torch.arange(3.0)) and calls == [1, 1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(cache.memo("t", (1,), compute)["x"], torch.arange(3.0)) and calls == [1, 1]


def test_unknown_dataclass_is_not_rebuilt(_cache: Path) -> None:
    tree, tensors = cache.encode(PTHistory([0], [np.ones(1)]))
    tree["dataclass"] = "subprocess.Popen"
    with pytest.raises(ValueError, match="ALLOWED"):
        cache.decode(tree, tensors)


def test_histories_round_trip(_cache: Path) -> None:
    pt = PTHistory([0, 5], [np.ones(2)] * 2, [np.zeros((2, 5))] * 2, [np.zeros((2, 2, 3))] * 2, [])
    ft = FTHistory(np.ones((3, 2)), np.full((3, 2), np.nan), np.ones((3, 2)), np.zeros((0, 2, 4), np.int64),
                   np.ones((2, 1)), np.ones(2), np.array([3, 0]), 2)
    value = ({"W": torch.ones(2, 2, dtype=torch.float64)}, pt, ft, {"a": [1.5, math.inf, "s"], "d": torch.float32})
    cache.memo("rt", (0,), lambda: value)
    back = cache.memo("rt", (0,), lambda: pytest.fail("recomputed"))
    assert back[0]["W"].dtype == torch.float64 and back[1].steps == [0, 5]
    assert np.array_equal(back[2].acc_freq, ft.acc_freq, equal_nan=True) and back[2].pred.dtype == np.int64
    assert back[3] == {"a": [1.5, math.inf, "s"], "d": torch.float32}


def test_unwritable_folder_warns_and_returns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAOL_CACHE", "/proc/kaol-cache-cannot-exist")
    with pytest.warns(cache.CacheWarning, match=r"could not write /proc/kaol-cache-cannot-exist"):
        assert cache.memo("t", (1,), lambda: 42) == 42


def test_stale_temporary_files_are_removed(_cache: Path) -> None:
    _cache.mkdir()
    stale, fresh = _cache / ".t-old.tmp", _cache / ".t-new.tmp"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"x")
    old = time.time() - cache.STALE_SECONDS - 60
    os.utime(stale, (old, old))
    cache.memo("t", (1,), lambda: 1)
    assert not stale.exists() and fresh.exists()


@pytest.mark.parametrize("value", ["off", "OFF", " Off "])
def test_cache_off_any_case(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("KAOL_CACHE", value)
    assert cache.cache_dir() is None


def test_cache_path_that_is_a_file_is_an_error(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    monkeypatch.setenv("KAOL_CACHE", str(f))
    with pytest.raises(ValueError, match=r"KAOL_CACHE=.*not a usable path"):
        cache.memo("t", (1,), lambda: 1)


def test_key_covers_package_and_versions() -> None:
    import inspect
    src = inspect.getsource(cache._code_hash)
    assert 'glob("*.py")' in src and all(p in src for p in ("torch", "numpy", "numba"))


# ---------------------------------------------------------------- PopQA files

def _tsv(tmp_path: Path, text: str | bytes) -> Path:
    p = tmp_path / "popQA.tsv"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


HEADER = "subj\tprop\tobj\ts_pop\tquestion\tpossible_answers\n"


@pytest.mark.parametrize("text,pattern", [
    ("", r"popQA\.tsv is empty"),
    (HEADER + "Caf\xe9\tcapital\tX\t5\tq?\t[\"X\"]\n", None),
    (HEADER.encode() + "Caf\xe9\tcapital\tX\t5\tq?\t[]\n".encode("latin-1"), r"popQA\.tsv, line 2, column 4: .*UTF-8"),
    (HEADER + "A\tcapital\tX\t5\n", r"popQA\.tsv, line 2: 4 tab-separated fields"),
    (HEADER + "A\tcapital\tX\t7.9\tq?\t[\"X\"]\n", r"popQA\.tsv, line 2, column s_pop: '7\.9'"),
    (HEADER + "A\tcapital\tX\t7\tq?\tnot json\n", r"popQA\.tsv, line 2, column possible_answers"),
], ids=["empty", "utf-8 ok", "latin-1", "short row", "fractional s_pop", "bad answers"])
def test_bad_tsv(tmp_path, text, pattern) -> None:
    path = _tsv(tmp_path, text)
    if pattern is None:
        assert popqa.load("capital", source=path)["subj"].tolist() == ["Caf\xe9"]
        return
    with pytest.raises(ValueError, match=pattern):
        popqa.load("capital", source=path)


def test_missing_tsv_names_the_path(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"nope\.tsv'?: no such file"):
        popqa.load(source=tmp_path / "nope.tsv")


def test_split_arguments_and_duplicate_subjects() -> None:
    df = pd.DataFrame({"subj": [f"s{i // 2}" for i in range(40)], "prop": "capital", "obj": "x",
                       "s_pop": np.arange(40)[::-1], "question": "q", "possible_answers": [["x"]] * 40})
    with pytest.raises(ValueError, match=r"n_train = -1"):
        popqa.split_by_popularity(df, -1, 2)
    with pytest.raises(TypeError, match=r"n_train = 2\.5"):
        popqa.split_by_popularity(df, 2.5, 2)
    with pytest.raises(ValueError, match=r"seed = -3"):
        popqa.split_by_popularity(df, 2, 2, seed=-3)
    sp = popqa.split_by_popularity(df, 5, 4, seed=1)
    sets = [set(x["subj"]) for x in (sp.frequent, sp.rare, sp.test)]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])


# ---------------------------------------------------------------- LoRA, language models, widgets

def test_bad_lora() -> None:
    from kaol.lora import finetune_lora
    d = make_data(TINY)
    p = init_params(ModelConfig(), d.vocab.size, 1, 0)
    W, V = p["W"][0], p["V"][0]
    for kw, err, pattern in [(dict(optimizer="adamw"), ValueError, r"optimizer = 'adamw'"),
                             (dict(lr=math.nan), ValueError, r"lr = nan"),
                             (dict(r=0), ValueError, r"r = 0"),
                             (dict(r=2.0), TypeError, r"r = 2\.0"),
                             (dict(steps=-1), ValueError, r"steps = -1")]:
        with pytest.raises(err, match=pattern):
            finetune_lora(W, V, d, **{**dict(lam=1.0, r=1, lr=0.1, steps=1), **kw})
    with pytest.raises(ValueError, match=r"V has shape"):
        finetune_lora(W, p["V"], d, 1.0, 1, 0.1, 1)


def test_lora_divergence_stops() -> None:
    pytest.importorskip("peft")
    from kaol.lora import finetune_lora
    d = make_data(TINY)
    p = init_params(ModelConfig(), d.vocab.size, 1, 0)
    W, V = p["W"][0], p["V"][0]
    with pytest.raises(ValueError, match=r"LoRA fine-tuning.*step \d+.*lower that rate"):
        finetune_lora(W, V, d, 1.0, 1, 1e30, 3, optimizer="sgd")


def test_bad_lm_configs_and_cli(tmp_path, capsys) -> None:
    from kaol import causal_lm, gpt2, gpt2_synthetic, gpt2_text
    for cls, kw, err, pattern in [(gpt2_synthetic.SynthConfig, dict(pt_lr=math.nan), ValueError, r"pt_lr = nan"),
                                  (gpt2_synthetic.SynthConfig, dict(seed=-1), ValueError, r"seed = -1"),
                                  (gpt2_text.TextConfig, dict(batch=0), ValueError, r"batch = 0"),
                                  (causal_lm.FinetuneConfig, dict(epochs=1.5), TypeError, r"epochs = 1\.5"),
                                  (gpt2.GPT2Size, dict(n_layer=True), TypeError, r"n_layer = True")]:
        with pytest.raises(err, match=pattern):
            cls(**kw)
    t0 = time.perf_counter()
    for args, pattern in [(["--K", "5", "--R", "4"], r"K = 5"), (["--seeds"], r"--seeds"),
                          (["--N-ft", "0"], r"--N-ft\[0\] = 0"), (["--threads", "0"], r"--threads = 0")]:
        with pytest.raises(SystemExit):
            gpt2_synthetic.main([*args, "--out", str(tmp_path / "o.json")])
        assert __import__("re").search(pattern, capsys.readouterr().err)
    assert time.perf_counter() - t0 < 5


def test_lm_divergence_stops_and_results_go_to_the_package_cache(_cache: Path) -> None:
    from kaol import lmtrain
    lin = torch.nn.Linear(1, 1)
    with pytest.raises(ValueError, match=r"x loss became nan at step 0 with learning rate 0\.1.*lower that rate"):
        lmtrain.train(lin, lambda _: lin.weight.sum() * math.nan, None, 1, 0.1, what="x")
    pytest.importorskip("transformers")
    from kaol import gpt2, gpt2_synthetic
    gpt2_synthetic.pretrain_synthetic(make_data(TINY), gpt2_synthetic.SynthConfig(size=gpt2.SIZES["tiny"], pt_steps=1))
    assert list(_cache.glob("synth-pt-*.pt"))


def test_bad_widget_arguments() -> None:
    pytest.importorskip("ipywidgets")
    from kaol import widgets
    with pytest.raises(ValueError, match=r"n_rare = -1"):
        widgets.data_report(TINY, n_rare=-1)
    with pytest.raises(TypeError, match=r"cfg = "):
        widgets.data_report({"N_f": 3})


def test_checks_messages_name_value_and_range() -> None:
    with pytest.raises(ValueError, match=r"x = 5 must be an int in \[0, 3\]"):
        checks.integer("x", 5, 0, 3)
    with pytest.raises(ValueError, match=r"y = -0\.5 must be a finite number > 0"):
        checks.positive("y", -0.5)
    with pytest.raises(ValueError, match=r"z = 'b' is not one of \('a',\)"):
        checks.choice("z", "b", ("a",))
