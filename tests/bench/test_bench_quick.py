"""The benchmark harness keeps working: a quick run completes and reports numbers for every
variant. No timing is asserted here; speed is measured and reported by bench/run.py."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_benchmark_runs_and_reports_every_variant(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--output", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    text = (tmp_path / "RESULTS.md").read_text()
    assert (tmp_path / "ratios-quick.png").stat().st_size > 1000
    assert "python bench/run.py --quick" in text
    for variant in (
        "raw held connection",
        "connect per request",
        "DBUtils PersistentDB",
        "DBUtils PooledDB",
        "SQLAlchemy QueuePool",
        "tether Pool",
        "tether ThreadLocalPool",
    ):
        rows = [line for line in text.splitlines() if line.startswith(f"| {variant} |")]
        assert rows, f"no row for {variant}"
        # queries/s of the throughput rows are positive numbers
        qps = [
            float(m.group(1).replace(",", ""))
            for line in rows
            if (m := re.match(r"\| [^|]+ \| ([\d,]+) \| [\d.]+ \|", line))
        ]
        assert qps and all(q > 0 for q in qps), rows
    assert "## Targets" in text and "Check out + give back alone" in text
    assert not (ROOT / "bench" / "ratios-quick.png").exists() or tmp_path == ROOT / "bench"
