"""bench/run.py's target rows: a ratio that rounds onto the target is shown to three places,
so that the row says which side of the target its verdict was taken on."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import run  # bench/ holds scripts, not a package: imported from its directory


@pytest.mark.parametrize(
    ("ratio", "shown", "met"),
    [
        (0.9483, "0.948", False),
        (0.9531, "0.953", True),
        (0.95, "0.950", True),
        (0.9449, "0.94", False),
        (0.9712, "0.97", True),
        (1.004, "1.00", True),
    ],
)
def test_verdict_shows_the_side_of_the_target(ratio: float, shown: str, met: bool) -> None:
    v = run.Verdict("tether Pool", "pymysql", 16, "separate", ratio, ratio - 0.03, ratio + 0.03)
    assert v.shown == shown
    assert v.met is met
