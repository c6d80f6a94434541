"""`tether demo --quick` runs end to end: every variant, the table, the chart, the JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tether.cli import main
from tether.demo import VARIANTS


@pytest.mark.slow
def test_quick_demo_runs_every_variant(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["demo", "--quick", "--output", str(tmp_path)], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    assert "Same workload, same faults" in result.output
    assert (tmp_path / "timeline.png").stat().st_size > 1000
    rows = json.loads((tmp_path / "results.json").read_text())
    assert [r["variant"] for r in rows] == [v.name for v in VARIANTS]
    for row in rows:
        assert row["requests"] > 0
        for key in ("errors", "writes_lost", "writes_duplicated", "connections_left_open"):
            assert isinstance(row[key], int) and row[key] >= 0
    tether_row = rows[-1]
    assert tether_row["variant"] == "tether Pool"
    # tether never loses or duplicates a write, and never reports a write failed that happened.
    assert tether_row["writes_lost"] == 0
    assert tether_row["writes_duplicated"] == 0
    assert tether_row["half_committed"] == 0
    assert tether_row["failed_writes_that_happened"] == 0
    assert tether_row["connections_left_open"] == 0
