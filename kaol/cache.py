"""A disk cache of results keyed by configuration, so widgets and chapters reuse pre-trained models.

The key hashes the configuration together with the source of the modules that
compute results, so editing the model or the training invalidates old entries.
Entries are written to a temporary file and renamed, so an interrupted or failed
computation never leaves a half-written entry. The folder is ``$KAOL_CACHE`` or
``~/.cache/kaol``; ``KAOL_CACHE=off`` disables the cache.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Callable, TypeVar

import torch

from .seeds import offset

R = TypeVar("R")
_SOURCES = ("data.py", "model.py", "fast.py", "train.py", "metrics.py", "sweep.py", "experiments.py", "mechanism.py",
            "lora.py")


def cache_dir() -> Path | None:
    """The cache folder, or ``None`` when ``KAOL_CACHE=off``."""
    env = os.environ.get("KAOL_CACHE", "")
    if env.lower() == "off":
        return None
    return Path(env) if env else Path.home() / ".cache" / "kaol"


def _code_hash() -> str:
    here = Path(__file__).parent
    h = hashlib.sha256(torch.__version__.encode())
    for name in _SOURCES:
        p = here / name
        if p.exists():
            h.update(p.read_bytes())
    return h.hexdigest()


def key(*parts: object) -> str:
    """A stable hash of ``parts`` (dataclass configs, numbers, strings, tuples), the code and
    ``$KAOL_SEED_OFFSET`` (results drawn with other seeds never match)."""
    return hashlib.sha256((repr((*parts, offset())) + _code_hash()).encode()).hexdigest()[:20]


def memo(name: str, parts: tuple, compute: Callable[[], R]) -> R:
    """``compute()``, stored on disk under ``name`` and the key of ``parts``."""
    folder = cache_dir()
    if folder is None:
        return compute()
    path = folder / f"{name}-{key(name, *parts)}.pt"
    if path.exists():
        return torch.load(path, weights_only=False)
    result = compute()
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(result, f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return result
