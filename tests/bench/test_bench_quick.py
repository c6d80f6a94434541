"""The benchmark harness keeps working: a quick run completes and reports numbers for every
variant. No timing is asserted here; speed is measured and reported by bench/run.py."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = (
    "raw held connection",
    "connect per request",
    "connect per request, TLS off",
    "DBUtils PersistentDB",
    "DBUtils PooledDB",
    "SQLAlchemy QueuePool",
    "SQLAlchemy QueuePool pre_ping",
    "tether Pool",
    "tether ThreadLocalPool",
)
PURE = ("tether Pool, pure Python", "tether ThreadLocalPool, pure Python")
POOLS = (
    "tether Pool",
    "tether ThreadLocalPool",
    *PURE,
    "DBUtils PersistentDB",
    "DBUtils PooledDB",
    "SQLAlchemy QueuePool",
    "SQLAlchemy QueuePool pre_ping",
)


def section(text: str, heading: str) -> list[list[str]]:
    """The table rows (cells stripped) of the ``## heading`` section."""
    body = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in body.splitlines()
        if line.startswith("| ") and not line.startswith("|---")
    ]


def tables(text: str, heading: str) -> list[list[list[str]]]:
    """Each table of the ``## heading`` section: its rows, the header first."""
    out: list[list[list[str]]] = []
    previous = ""
    for line in text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0].splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            if not previous.startswith("|"):
                out.append([])
            out[-1].append([cell.strip() for cell in line.strip().strip("|").split("|")])
        previous = line
    return out


def number(cell: str) -> float:
    return float(cell.replace(",", "").split()[0])


def digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


@pytest.mark.slow
def test_quick_benchmark_runs_and_reports_every_variant(tmp_path: Path) -> None:
    committed = ROOT / "bench" / "RESULTS.md"
    before = digest(committed)
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--output", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert digest(committed) == before, "a quick run must not replace bench/RESULTS.md"

    text = (tmp_path / "RESULTS.md").read_text()
    assert "bench/run.py --quick" in text
    for chart in ("ratios.png", "costs.png"):
        assert (tmp_path / chart).stat().st_size > 1000

    # A row per variant and driver at each thread count, with positive queries/s.
    throughput = section(text, "Throughput")
    for variant in VARIANTS:
        rows = [row for row in throughput if row[0] == variant]
        assert len(rows) == 4, f"{variant}: {rows}"  # 2 drivers x 2 thread counts
        assert all(number(row[1]) > 0 and number(row[2]) >= 0 for row in rows), rows

    acquire = {row[0]: row[1:] for row in section(text, "Check-out + give-back alone")}
    for pool in POOLS:
        assert pool in acquire and all(number(x) > 0 for x in acquire[pool]), acquire
    connect = section(text, "Connect cost")
    assert len(connect) >= 4 and all(number(x) > 0 for row in connect[1:] for x in row[1:])

    # The interleaved A/B: raw twice, the plain-Python control and both tether flavours on
    # both fast paths, per driver and thread count, each with queries/s measured, under one
    # pinned CPU layout.
    ab = section(text, "Interleaved A/B")[1:]
    assert len(ab) == 7 * 2 * 2, ab
    assert len({row[0] for row in ab}) == 1 and ab[0][0] in {"separate cores", "shared core"}
    expected = {"raw held connection", "raw held connection, again", "tether Pool", *PURE}
    assert {row[3] for row in ab} >= expected
    assert all(number(row[4]) > 0 for row in ab), ab

    # The throughput targets judged on that A/B, the check-out + give-back ones as before
    # (for the pure-Python paths too); then the same A/B comparisons on the pure-Python paths.
    targets, pure = tables(text, "Targets")
    assert {row[-1] for row in targets[1:]} <= {"met", "**MISSED**"}
    assert {row[3] for row in targets[1:]} == {f"A/B, {ab[0][0]}", "alone, one thread"}
    assert len(targets) - 1 == 2 * (2 * 2 + 4), targets  # drivers x (threads x tether + pairs)
    assert {row[0] for row in pure[1:]} == set(PURE), pure
    assert len(pure) - 1 == 2 * 2 * 2 and {row[-1] for row in pure[1:]} <= {"met", "missed"}
    assert "## Where the time goes" in text
    assert "## Web" in text
