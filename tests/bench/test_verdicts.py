"""bench/run.py's targets: which variants are judged at which thread count, against which raw
variant, with which threshold, and how a row shows a figure close to its target."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import micro  # bench/ holds scripts, not a package: imported from its directory
import run
from common import SEPARATE, SHARED

POOL, LOCAL, DEFAULTS = "tether Pool", "tether ThreadLocalPool", "tether ThreadLocalPool, defaults"
RAW, AGAIN, CONTROL = micro.Raw.name, micro.RawAgain.name, micro.RawPlusPython.name


def test_the_targets() -> None:
    assert (run.target(1), run.target(16), run.target(64)) == (0.90, 0.85, 0.90)
    assert run.ACQUIRE_TARGET_US == 4.0
    assert run.judged(1) == run.judged(64) == (POOL, LOCAL)
    assert run.judged(16) == (POOL, LOCAL, DEFAULTS)
    assert run.DEFAULTS == DEFAULTS and micro.TetherThreadLocalDefaults in micro.VARIANTS


@pytest.mark.parametrize(
    ("threads", "ratio", "shown", "met"),
    [
        (16, 0.8483, "0.848", False),
        (16, 0.8531, "0.853", True),
        (16, 0.85, "0.85", True),
        (16, 0.8449, "0.84", False),
        (16, 0.8712, "0.87", True),
        (1, 0.8996, "0.8996", False),  # three places would still round onto the target
        (1, 0.9031, "0.903", True),
        (1, 0.8712, "0.87", False),
        (64, 0.8951, "0.895", False),
        (64, 1.004, "1.00", True),
    ],
)
def test_verdict_shows_the_side_of_the_target(
    threads: int, ratio: float, shown: str, met: bool
) -> None:
    v = run.Verdict(POOL, "pymysql", threads, SEPARATE, ratio, ratio - 0.03, ratio + 0.03)
    assert v.shown == shown
    assert v.met is met


def test_each_variant_is_compared_with_raw_on_like_connections() -> None:
    # Up to 16 threads: Pool with raw on Pool's connections, the rest with raw on
    # ThreadLocalPool's; above, every variant with raw holding a connection per thread.
    for threads in (1, 16):
        assert micro.base_of(POOL, threads) == AGAIN
        for name in (LOCAL, DEFAULTS, AGAIN, CONTROL):
            assert micro.base_of(name, threads) == RAW
    for name in (POOL, LOCAL, AGAIN, CONTROL):
        assert micro.base_of(name, 64) == RAW


def slices(**qps: float) -> dict[str, list[float]]:
    """An A/B's per-slice figures: 40 slices of each variant, the same in every cycle."""
    names = {"pool": POOL, "local": LOCAL, "defaults": DEFAULTS, "raw": RAW, "again": AGAIN}
    return {names[k]: [v] * 40 for k, v in qps.items()}


def test_ab_ratio_against_its_base() -> None:
    per_slice = slices(pool=900.0, local=850.0, raw=1000.0, again=800.0)
    ratio, low, high = run.ab_ratios(per_slice, POOL, 16) or (0.0, 0.0, 0.0)
    assert ratio == pytest.approx(900 / 800) and low == pytest.approx(high)
    assert (run.ab_ratios(per_slice, LOCAL, 16) or [0])[0] == pytest.approx(0.85)
    assert (run.ab_ratios(per_slice, POOL, 64) or [0])[0] == pytest.approx(0.90)
    assert run.ab_ratios(per_slice, DEFAULTS, 16) is None  # not in this A/B


def test_the_ab_interval_covers_the_cycles_spread() -> None:
    raw = [1000.0, 1200.0, 800.0, 1000.0] * 25
    ours = [900.0, 1000.0, 800.0, 880.0] * 25
    ratio, low, high = run.ab_ratios({POOL: ours, AGAIN: raw}, POOL, 1) or (0.0, 0.0, 0.0)
    assert ratio == pytest.approx(sum(ours) / sum(raw))
    assert low < ratio < high


def results(
    ab: run.AB, acquire_us: float, *, layouts: tuple[str, ...] = (SEPARATE,)
) -> run.Results:
    plan = run.Plan(
        quick=True,
        shortened=False,
        missing_drivers=[],
        drivers=["pymysql"],
        thread_counts=[],
        rounds=1,
        seconds=0.1,
        acquire_budget=0.1,
        connects=1,
        breakdown_requests=1,
        breakdown_rounds=1,
        profile_requests=1,
        ab_threads=[1, 16, 64],
        ab_slices={1: 40, 16: 40, 64: 40},
        ab_slice_seconds=0.01,
        ab_layouts=list(layouts),
        ab_first_only=True,
    )
    return run.Results(
        plan=plan,
        command="python bench/run.py",
        server_version="",
        server_tls="",
        load_before="",
        load_after="",
        others_cores=0.0,
        elapsed=1.0,
        cells={},
        acquire={"pymysql": {POOL: acquire_us, LOCAL: 3.9}},
        connect={},
        breakdowns={},
        breakdown_where="",
        profiles={},
        ab=ab,
        ab_events={},
        ab_where={x: "pinned" for x in layouts},
        ab_skipped={},
        web=None,
        web_note=None,
    )


def test_verdicts_judge_every_target_on_each_pinned_layout() -> None:
    ab: run.AB = {}
    for layout in (SEPARATE, SHARED):
        ab[(layout, "pymysql", 1)] = slices(pool=905.0, local=880.0, raw=1000.0, again=1000.0)
        ab[(layout, "pymysql", 16)] = slices(
            pool=860.0, local=900.0, defaults=700.0, raw=1000.0, again=1000.0
        )
        ab[(layout, "pymysql", 64)] = slices(pool=950.0, local=890.0, raw=1000.0, again=990.0)
    got = run.verdicts(results(ab, 3.5, layouts=(SEPARATE, SHARED)))
    table = {(v.measured_in, v.threads, v.name): v.met for v in got}
    assert len(got) == 2 * 7
    for layout in (SEPARATE, SHARED):
        assert table[(layout, 1, POOL)] and not table[(layout, 1, LOCAL)]
        assert table[(layout, 16, POOL)] and table[(layout, 16, LOCAL)]
        assert not table[(layout, 16, DEFAULTS)]
        assert table[(layout, 64, POOL)] and not table[(layout, 64, LOCAL)]


def test_the_targets_table_says_what_was_missed() -> None:
    ab: run.AB = {
        (SEPARATE, "pymysql", 1): slices(pool=950.0, local=950.0, raw=1000.0, again=1000.0),
        (SEPARATE, "pymysql", 16): slices(
            pool=900.0, local=900.0, defaults=600.0, raw=1000.0, again=1000.0
        ),
        (SEPARATE, "pymysql", 64): slices(pool=950.0, local=950.0, raw=1000.0, again=1000.0),
    }
    text = "\n".join(run.targets_section(results(ab, 4.2)))
    rows = [line for line in text.splitlines() if line.startswith("| tether")]
    assert len(rows) == 9
    missed = [row for row in rows if row.endswith("| **MISSED** |")]
    assert len(missed) == 2, missed
    assert missed[0].startswith(f"| {DEFAULTS} | pymysql | 16 threads | A/B, separate cores |")
    assert "| 0.60 |" in missed[0] and "| >= 0.85 |" in missed[0]
    assert missed[1].startswith(f"| {POOL} | pymysql | check-out + give-back |")
    assert "| 4.2 µs |" in missed[1] and "| <= 4 µs |" in missed[1]
    assert "Throughput targets met in 6 of 7 rows" in text
    assert "check-out + give-back 3.9-4.2 µs against <= 4 µs (**MISSED**)" in text
