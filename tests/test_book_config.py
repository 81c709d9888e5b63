"""The nbval configuration of the book: every sanitize rule is read, none is broad."""
from __future__ import annotations

import configparser
import re
from pathlib import Path

from nbval.plugin import get_sanitize_patterns

ROOT = Path(__file__).resolve().parents[1]
CFG = ROOT / "book" / "sanitize.cfg"


def test_every_sanitize_section_is_read_by_nbval() -> None:
    """nbval silently drops a rule whose `replace:` lacks the space after the colon."""
    sections = configparser.ConfigParser(interpolation=None)
    sections.read(CFG, encoding="utf-8")
    patterns = get_sanitize_patterns(CFG.read_text(encoding="utf-8"))
    assert len(patterns) == len(sections.sections()), (patterns, sections.sections())
    assert all(replace.strip() for _, replace in patterns), "an empty replacement is dropped"


def test_sanitize_rules_leave_claims_and_numbers_alone() -> None:
    """A rule must not erase a claim line, a verdict or a printed number."""
    lines = ["claim ood-r: reproduced", "  holds  drop from R = 20 to 40: 0.34 ± 0.05 over 5 seeds, 5/5 above 0",
             "final loss 0.488 took 3 steps", "elapsed 12 s", "accuracy 0.91 per step"]
    for regex, replace in get_sanitize_patterns(CFG.read_text(encoding="utf-8")):
        for line in lines:
            assert re.sub(regex, replace, line) == line, (regex, line)
    progress = "[1/5] K=1 R=20 full (5 seeds) done after 46 s"
    out = progress
    for regex, replace in get_sanitize_patterns(CFG.read_text(encoding="utf-8")):
        out = re.sub(regex, replace, out)
    assert out == "[1/5] K=1 R=20 full (5 seeds) done after TIME"
