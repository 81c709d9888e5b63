"""Checks of user input, shared by every public entry point of ``kaol``.

Each helper returns the checked value or raises a ``TypeError`` (wrong type) or a
``ValueError`` (wrong value) whose message names the parameter, the value given and
what is allowed, so a bad setting stops before any computation with a message that
says how to fix it.
"""
from __future__ import annotations

import math
import numbers
import os
from typing import Any, Iterable, Sequence

import numpy as np
import torch

DTYPES = (torch.float32, torch.float64)
"""The floating-point types the models compute in."""


def integer(name: str, value: Any, lo: int | None = None, hi: int | None = None) -> int:
    """``value`` as an ``int`` in ``[lo, hi]``: an int (numpy ints too), not a bool or a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} = {value!r} must be an int{_range(lo, hi)}, not {type(value).__name__}")
    value = int(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ValueError(f"{name} = {value} must be an int{_range(lo, hi)}")
    return value


def real(name: str, value: Any, lo: float | None = None, hi: float | None = None,
         lo_open: bool = False, hi_open: bool = False) -> float:
    """``value`` as a finite ``float`` in the range given (open ends with ``lo_open``/``hi_open``);
    ints are accepted, bools and strings are not."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} = {value!r} must be a finite number{_range(lo, hi, lo_open, hi_open)}, "
                        f"not {type(value).__name__}")
    x = float(value)
    if not math.isfinite(x):
        raise ValueError(f"{name} = {value!r} must be a finite number{_range(lo, hi, lo_open, hi_open)}")
    if lo is not None and (x < lo or (lo_open and x == lo)) or hi is not None and (x > hi or (hi_open and x == hi)):
        raise ValueError(f"{name} = {value!r} must be a finite number{_range(lo, hi, lo_open, hi_open)}")
    return x


def positive(name: str, value: Any) -> float:
    """A finite number > 0 (rates, scales, norms)."""
    return real(name, value, lo=0, lo_open=True)


def boolean(name: str, value: Any) -> bool:
    """``True`` or ``False`` (numpy bools too), not 0/1 or a string."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} = {value!r} must be True or False, not {type(value).__name__}")
    return bool(value)


def choice(name: str, value: Any, allowed: Sequence[Any]) -> Any:
    """``value`` if it is one of ``allowed``."""
    try:
        ok = value in allowed
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f"{name} = {value!r} is not one of {tuple(allowed)}")
    return value


def seed(name: str, value: Any) -> int:
    """A seed: a non-negative int (``None`` is refused: every kaol result is reproducible)."""
    if value is None:
        raise TypeError(f"{name} = None: pass a non-negative int seed (kaol never draws unseeded)")
    return integer(name, value, lo=0)


def seeds(name: str, values: Any, distinct: bool = False) -> list[int]:
    """A non-empty list of non-negative int seeds (all different when ``distinct``)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise TypeError(f"{name} = {values!r} must be a list of non-negative int seeds")
    out = [seed(f"{name}[{i}]", s) for i, s in enumerate(values)]
    if not out:
        raise ValueError(f"{name} = {values!r} is empty: pass at least one seed")
    if distinct and len(set(out)) != len(out):
        raise ValueError(f"{name} = {values!r} repeats a seed: pass distinct seeds")
    return out


def ints(name: str, values: Any, lo: int | None = None, hi: int | None = None, empty: bool = False) -> list[int]:
    """A list of ints in ``[lo, hi]`` (non-empty unless ``empty``)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise TypeError(f"{name} = {values!r} must be a list of ints{_range(lo, hi)}")
    out = [integer(f"{name}[{i}]", v, lo, hi) for i, v in enumerate(values)]
    if not out and not empty:
        raise ValueError(f"{name} = {values!r} is empty: pass at least one value")
    return out


def dtype(name: str, value: Any) -> torch.dtype:
    """One of ``DTYPES``."""
    if not isinstance(value, torch.dtype):
        raise TypeError(f"{name} = {value!r} must be a torch dtype, one of {DTYPES} (e.g. torch.float32, "
                        f"not the string)")
    return choice(name, value, DTYPES)


def of_type(name: str, value: Any, cls: type | tuple[type, ...]) -> Any:
    """``value`` if it is an instance of ``cls``."""
    if not isinstance(value, cls):
        want = " or ".join(c.__name__ for c in (cls if isinstance(cls, tuple) else (cls,)))
        raise TypeError(f"{name} = {value!r} must be a {want}, not {type(value).__name__}")
    return value


def memory() -> int:
    """Physical memory of this machine in bytes (``$KAOL_MAX_BYTES`` overrides it)."""
    env = os.environ.get("KAOL_MAX_BYTES", "").strip()
    if env:
        return integer("KAOL_MAX_BYTES", int(env) if env.isdigit() else env, lo=1)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 16 * 2 ** 30


def fits(what: str, nbytes: float, hint: str) -> None:
    """Refuse up front a computation whose estimated memory ``nbytes`` exceeds the machine's."""
    have = memory()
    if nbytes > have:
        raise ValueError(f"{what} needs about {_gb(nbytes)} of memory, more than this machine's {_gb(have)}: "
                         f"{hint}")


def _gb(n: float) -> str:
    return f"{n / 2 ** 30:.3g} GiB"


def _range(lo, hi, lo_open: bool = False, hi_open: bool = False) -> str:
    if lo is not None and hi is not None:
        return f" in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f" {'>' if lo_open else '>='} {lo}"
    if hi is not None:
        return f" {'<' if hi_open else '<='} {hi}"
    return ""
