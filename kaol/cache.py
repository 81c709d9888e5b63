"""The one disk cache of ``kaol``: results keyed by configuration and code, stored so that
loading an entry can run no code and a damaged entry is never trusted.

Rule, for every cached result of the package (``sweep``, ``table3``, the language-model modules):

* **Key**: the configuration (``parts``), a hash of the source of the whole ``kaol``
  package (every ``.py`` file under ``kaol/``), the versions of torch, numpy and numba, and
  ``$KAOL_SEED_OFFSET`` (``kaol.seeds.offset``). Editing any module invalidates every entry.
* **Format**: one file ``NAME-KEY.pt`` holding a dict of tensors and one JSON string, written
  with ``torch.save`` and read with ``torch.load(weights_only=True)``, which unpickles
  tensors and plain containers only. Results are flattened into that form by ``encode``:
  tensors and numeric numpy arrays become tensors; numbers, strings, lists, tuples, dicts
  and ``torch.dtype`` go to the JSON; dataclasses are rebuilt only if their class is in
  ``ALLOWED`` (kaol's result classes). The JSON records the entry's name, key and a SHA-256
  digest of the content.
* **Trust**: an entry that cannot be read, whose key or name differs, or whose digest does
  not match its content (truncated, edited, planted) is ignored with a warning naming the
  file, and the result is recomputed and rewritten.
* **Writes** go to a temporary file in the same folder, then ``os.replace``: an interrupted
  write never leaves a half entry. Temporary files older than ``STALE_SECONDS`` (left by
  killed processes) are removed on the next write. A folder that cannot be written gives a
  warning and the computed result is still returned.
* **Folder**: ``$KAOL_CACHE``, or ``~/.cache/kaol`` when unset; ``KAOL_CACHE=off`` (any case)
  disables the cache; a value that is not a usable folder path is a ``ValueError``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import io
import json
import math
import os
import tempfile
import time
import warnings
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np
import torch

from .seeds import offset

R = TypeVar("R")
ENV = "KAOL_CACHE"
FORMAT = 2
STALE_SECONDS = 600
"""A ``*.tmp`` file in the cache folder older than this (seconds) was left by a killed writer."""

ALLOWED = ("kaol.train.PTHistory", "kaol.train.FTHistory", "kaol.lora.LoRAHistory")
"""The dataclasses an entry may be rebuilt into (``module.Class``); nothing else is ever constructed."""


class CacheWarning(UserWarning):
    """A cache entry was ignored or could not be written; the result is computed anyway."""


def cache_dir() -> Path | None:
    """The cache folder, or ``None`` when ``KAOL_CACHE=off`` (any case)."""
    env = os.environ.get(ENV, "")
    if env.strip().lower() == "off":
        return None
    if not env.strip():
        return Path.home() / ".cache" / "kaol"
    if "\0" in env:
        raise ValueError(f"{ENV}={env!r} is not a usable path (it contains a NUL byte): set it to a folder "
                         f"or to 'off'")
    path = Path(env).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"{ENV}={env!r} is not a usable path: {path} exists and is not a folder; set it to a "
                         f"folder or to 'off'")
    return path


@lru_cache(maxsize=1)
def _code_hash() -> str:
    """Hash of every ``.py`` file of the package (subfolders included) and of the versions of
    torch, numpy and numba."""
    h = hashlib.sha256()
    root = Path(__file__).parent
    for p in sorted(root.rglob("*.py")):
        h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    for pkg in ("torch", "numpy", "numba"):
        try:
            v = version(pkg)
        except PackageNotFoundError:
            v = "absent"
        h.update(f"{pkg}={v}\0".encode())
    return h.hexdigest()


def key(*parts: object) -> str:
    """A stable hash of ``parts`` (dataclass configs, numbers, strings, tuples), the package source,
    the versions of torch, numpy and numba, and ``$KAOL_SEED_OFFSET``."""
    return hashlib.sha256((repr((*parts, offset())) + _code_hash()).encode()).hexdigest()[:20]


# ---------------------------------------------------------------- safe serialisation

def encode(obj: Any) -> tuple[dict, dict[str, torch.Tensor]]:
    """``obj`` as (JSON-able tree, dict of tensors); ``TypeError`` for anything not storable."""
    tensors: dict[str, torch.Tensor] = {}

    def put(t: torch.Tensor) -> str:
        name = str(len(tensors))
        tensors[name] = t.detach().cpu().contiguous()
        return name

    def enc(x: Any) -> Any:
        if x is None or isinstance(x, (bool, str)):
            return x
        if isinstance(x, int):
            return int(x)
        if isinstance(x, float):
            return x if math.isfinite(x) else {"float": repr(x)}
        if isinstance(x, torch.Tensor):
            return {"tensor": put(x)}
        if isinstance(x, np.ndarray):
            if x.dtype.kind not in "biuf" or x.dtype.byteorder == ">":
                raise TypeError(f"numpy arrays of dtype {x.dtype} are not cached")
            return {"ndarray": put(torch.from_numpy(np.ascontiguousarray(x))), "dtype": x.dtype.str}
        if isinstance(x, np.generic):
            if x.dtype.kind not in "biuf":
                raise TypeError(f"numpy scalars of dtype {x.dtype} are not cached")
            return {"npscalar": enc(x.item()), "dtype": x.dtype.str}
        if isinstance(x, torch.dtype):
            return {"dtype": str(x).removeprefix("torch.")}
        if isinstance(x, list):
            return {"list": [enc(v) for v in x]}
        if isinstance(x, tuple):
            return {"tuple": [enc(v) for v in x]}
        if isinstance(x, dict):
            return {"dict": [[enc(k), enc(v)] for k, v in x.items()]}
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            cls = f"{type(x).__module__}.{type(x).__qualname__}"
            if cls not in ALLOWED:
                raise TypeError(f"dataclass {cls} is not in kaol.cache.ALLOWED")
            return {"dataclass": cls, "fields": {f.name: enc(getattr(x, f.name)) for f in dataclasses.fields(x)}}
        raise TypeError(f"{type(x).__name__} values are not cached")

    return enc(obj), tensors


def decode(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of ``encode``; rebuilds only ``ALLOWED`` dataclasses (``ValueError`` otherwise)."""
    if tree is None or isinstance(tree, (bool, int, float, str)):
        return tree
    if not isinstance(tree, dict) or len(tree) == 0:
        raise ValueError(f"unexpected node {tree!r}")
    if "float" in tree:
        return float(tree["float"])
    if "tensor" in tree:
        return tensors[tree["tensor"]]
    if "ndarray" in tree:
        arr = tensors[tree["ndarray"]].numpy()
        return arr.astype(np.dtype(tree["dtype"]), copy=False)
    if "npscalar" in tree:
        return np.dtype(tree["dtype"]).type(decode(tree["npscalar"], tensors))
    if "dtype" in tree:
        dt = getattr(torch, tree["dtype"])
        if not isinstance(dt, torch.dtype):
            raise ValueError(f"not a torch dtype: {tree['dtype']!r}")
        return dt
    if "list" in tree:
        return [decode(v, tensors) for v in tree["list"]]
    if "tuple" in tree:
        return tuple(decode(v, tensors) for v in tree["tuple"])
    if "dict" in tree:
        return {_hashable(decode(k, tensors)): decode(v, tensors) for k, v in tree["dict"]}
    if "dataclass" in tree:
        cls_name = tree["dataclass"]
        if cls_name not in ALLOWED:
            raise ValueError(f"dataclass {cls_name!r} is not in kaol.cache.ALLOWED")
        module, _, name = cls_name.rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        fields = {k: decode(v, tensors) for k, v in tree["fields"].items()}
        return cls(**fields)
    raise ValueError(f"unexpected node {sorted(tree)}")


def _hashable(k: Any) -> Any:
    return tuple(_hashable(v) for v in k) if isinstance(k, list) else k


def _digest(meta: str, tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256(meta.encode())
    for name in sorted(tensors, key=int):
        t = tensors[name]
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def dumps(obj: Any, name: str, k: str) -> bytes:
    """The bytes of one entry of ``obj`` stored under ``name`` and key ``k``."""
    tree, tensors = encode(obj)
    meta = json.dumps({"format": FORMAT, "name": name, "key": k, "value": tree})
    buf = io.BytesIO()
    torch.save({"meta": meta, "digest": _digest(meta, tensors), "tensors": tensors}, buf)
    return buf.getvalue()


def load(path: Path, name: str, k: str) -> Any:
    """The value stored in the entry at ``path``; ``ValueError`` (or any load error) if it is not an
    intact entry of ``name`` under key ``k``. Never runs code: ``weights_only=True``."""
    raw = torch.load(path, weights_only=True, map_location="cpu")
    if not isinstance(raw, dict) or set(raw) != {"meta", "digest", "tensors"}:
        raise ValueError("not a kaol cache entry")
    meta, tensors = raw["meta"], raw["tensors"]
    if not isinstance(meta, str) or not isinstance(tensors, dict) or \
            not all(isinstance(t, torch.Tensor) for t in tensors.values()):
        raise ValueError("not a kaol cache entry")
    if raw["digest"] != _digest(meta, tensors):
        raise ValueError("its content does not match its digest (edited or damaged)")
    info = json.loads(meta)
    if info.get("format") != FORMAT or info.get("name") != name or info.get("key") != k:
        raise ValueError(f"it records name={info.get('name')!r}, key={info.get('key')!r}, not {name!r}, {k!r}")
    return decode(info["value"], tensors)


def _clean_stale(folder: Path) -> None:
    now = time.time()
    for p in folder.glob("*.tmp"):
        try:
            if now - p.stat().st_mtime > STALE_SECONDS:
                p.unlink()
        except OSError:
            pass


def _write(folder: Path, path: Path, data: bytes) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    _clean_stale(folder)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.stem}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def memo(name: str, parts: tuple, compute: Callable[[], R], enabled: bool = True) -> R:
    """``compute()``, stored on disk under ``name`` and the key of ``parts`` (see the module's rule).

    ``enabled=False`` (or ``KAOL_CACHE=off``) computes without reading or writing the cache.
    """
    folder = cache_dir() if enabled else None
    if folder is None:
        return compute()
    k = key(name, *parts)
    path = folder / f"{name}-{k}.pt"
    if path.exists():
        try:
            return load(path, name, k)
        except Exception as err:  # noqa: BLE001 - any unreadable entry is recomputed
            warnings.warn(f"kaol cache: ignoring the entry {path} ({type(err).__name__}: {err}); "
                          f"recomputing it", CacheWarning, stacklevel=2)
    result = compute()
    try:
        data = dumps(result, name, k)
    except TypeError as err:
        warnings.warn(f"kaol cache: the result for {path} is not storable ({err}); returned uncached",
                      CacheWarning, stacklevel=2)
        return result
    try:
        _write(folder, path, data)
    except OSError as err:
        warnings.warn(f"kaol cache: could not write {path} ({err}); the result is returned but not cached "
                      f"(set {ENV} to a writable folder, or to 'off')", CacheWarning, stacklevel=2)
    return result
