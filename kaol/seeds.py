"""Every random draw of kaol goes through ``drawn()``, so one variable re-seeds the whole book.

``KAOL_SEED_OFFSET`` (default 0) is a non-negative integer added to every seed that
``kaol`` draws with: the data (phrasings, fine-tuning split), the initial parameters,
LoRA's adapters, the language models and the PopQA split. Running the book with
``KAOL_SEED_OFFSET=1000`` re-runs every claim on fresh seeds; the cache keys carry the
offset, so results of one offset are never served for another.
"""
from __future__ import annotations

import os

ENV = "KAOL_SEED_OFFSET"


def offset() -> int:
    """The value of ``$KAOL_SEED_OFFSET`` (0 when unset), checked."""
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return 0
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{ENV}={raw!r} is not an integer: set it to a non-negative integer "
                         f"(0, the default, reproduces the book)") from None
    if value < 0:
        raise ValueError(f"{ENV}={value} is negative: set it to a non-negative integer")
    return value


def drawn(s: int) -> int:
    """The seed actually drawn with for the nominal seed ``s`` (``s + $KAOL_SEED_OFFSET``)."""
    if isinstance(s, bool) or not isinstance(s, (int,)) and not hasattr(s, "__index__"):
        raise TypeError(f"seed = {s!r} must be an int")
    s = int(s)
    if s < 0:
        raise ValueError(f"seed = {s} must be a non-negative int")
    return s + offset()
