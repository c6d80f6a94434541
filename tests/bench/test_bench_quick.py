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
    "tether ThreadLocalPool, defaults",
)
POOLS = (
    "tether Pool",
    "tether ThreadLocalPool",
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


# The targets: (threads column, target column) of every row a driver has.
TARGETS = [
    ("1 thread", ">= 0.90", "tether Pool"),
    ("1 thread", ">= 0.90", "tether ThreadLocalPool"),
    ("16 threads", ">= 0.85", "tether Pool"),
    ("16 threads", ">= 0.85", "tether ThreadLocalPool"),
    ("16 threads", ">= 0.85", "tether ThreadLocalPool, defaults"),
    ("64 threads on 16 connections", ">= 0.90", "tether Pool"),
    ("64 threads on 16 connections", ">= 0.90", "tether ThreadLocalPool"),
    ("check-out + give-back", "<= 4 µs", "tether Pool"),
    ("check-out + give-back", "<= 4 µs", "tether ThreadLocalPool"),
]


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
    for chart in ("ratios.png", "costs.png", "async.png"):
        assert (tmp_path / chart).stat().st_size > 1000
    # The asyncio section: every async variant, both drivers, a verdict per judged count.
    assert "## asyncio" in text and text.count("tether AsyncPool |") == 2
    assert text.count("x raw (target 0.90)") == 4

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

    # The interleaved A/B under one pinned CPU layout, per driver: at 1 and 16 threads both
    # flavours, ThreadLocalPool with its defaults, raw twice and the plain-Python control; at
    # 64 threads the same less the defaults pool; each with queries/s measured.
    ab = section(text, "Interleaved A/B")[1:]
    assert len({row[0] for row in ab}) == 1 and ab[0][0] in {"separate cores", "shared core"}
    controls = {"raw held connection", "raw held connection, again", "raw + 5 µs of plain Python"}
    for driver in ("pymysql", "mysqlclient"):
        for threads, variants in (
            ("1 thread", 6),
            ("16 threads", 6),
            ("64 threads on 16 connections", 5),
        ):
            rows = [row for row in ab if row[1] == driver and row[2] == threads]
            names = {row[3] for row in rows}
            assert len(rows) == variants and names >= controls | {"tether Pool"}, rows
            assert ("tether ThreadLocalPool, defaults" in names) == (variants == 6), rows
            assert all(number(row[4]) > 0 for row in rows), rows

    # Every target row, judged on that A/B (check-out + give-back: alone), and each verdict
    # agrees with its figure and its target.
    (targets,) = tables(text, "Targets")
    rows = targets[1:]
    assert {row[3] for row in rows} == {f"A/B, {ab[0][0]}", "alone, one thread"}
    for driver in ("pymysql", "mysqlclient"):
        got = [(row[2], row[6], row[0]) for row in rows if row[1] == driver]
        assert sorted(got) == sorted(TARGETS), got
    for row in rows:
        limit = number(row[6].split(maxsplit=1)[1])
        met = number(row[4]) <= limit if row[6].startswith("<=") else number(row[4]) >= limit
        assert row[7] == ("met" if met else "**MISSED**"), row
    assert "## Where the time goes" in text
    assert "## Web" in text
    # Flask-SQLAlchemy under gunicorn: tether's engine and both QueuePools, served and loaded.
    orm = section(text, "Flask-SQLAlchemy under gunicorn: tether's engine beside QueuePool")[1:]
    assert {row[0] for row in orm} == {
        "Flask-SQLAlchemy on tether",
        "QueuePool",
        "QueuePool pre_ping",
    }, orm
    assert all(number(row[2]) > 0 and row[4] == "0" for row in orm), orm
    for gone in ("pure Python", "pure-Python", "_speedups", "compiled", "valgrind", "cold-cache"):
        assert gone not in text, gone
