"""``tether demo --quick`` runs end to end against its own private server: every variant
through every fault, the table, the chart, the JSON. The peers' numbers are whatever they are;
only tether's own guarantees about writes are asserted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tether.cli import main
from tether.demo import QUICK_KEYS, VARIANTS
from tether.testing import MariaDBServer

COUNTS = (
    "requests",
    "errors",
    "outcome_unknown",
    "hung_at_end",
    "writes_committed",
    "writes_lost_silently",
    "writes_duplicated",
    "half_committed",
    "failed_but_written",
    "connections_left_open",
)
PHASES = ["cap", "warm-up", "idle", "restart", "kill-trx", "kill", "blackhole"]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_quick_demo_runs_every_variant_through_every_fault(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["demo", "--quick", "--json", "--output", str(out)], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    assert "Same workload, same faults" in result.output
    for key in QUICK_KEYS:
        assert VARIANTS[key].title in result.output
    chart = out / "timeline.png"
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(chart.resolve()) in result.output

    data = json.loads((out / "results.json").read_text())
    assert data["quick"] is True and data["threads"] == 8
    assert [p["key"] for p in data["schedule"] if p["skipped"] is None] == PHASES
    rows = data["variants"]
    assert [r["variant"] for r in rows] == list(QUICK_KEYS)
    for row in rows:
        assert row["failure"] is None, row
        for key in COUNTS:
            assert isinstance(row[key], int) and row[key] >= 0, (row["variant"], key)
        assert row["requests"] > 0
        assert [p["phase"] for p in row["phases"]] == PHASES
        assert sum(row["errors_by_kind"].values()) == row["errors"]

    # What tether promises whatever the faults, used directly or under SQLAlchemy's ORM: no
    # write it reported committed is missing, none is applied twice or by halves, and none it
    # reported failed (other than "outcome unknown") happened.
    for key in ("tether", "sqlalchemy-tether"):
        tether_row = next(r for r in rows if r["variant"] == key)
        assert tether_row["writes_lost_silently"] == 0, key
        assert tether_row["writes_duplicated"] == 0, key
        assert tether_row["half_committed"] == 0, key
        assert tether_row["failed_but_written"] == 0, key
        assert tether_row["writes_committed"] > 0, key


def test_unknown_variant_is_refused() -> None:
    result = CliRunner().invoke(main, ["demo", "--variants", "tether,nope"])
    assert result.exit_code != 0
    assert "nope" in result.output and "known:" in result.output


def test_admin_dsn_needs_dsn() -> None:
    result = CliRunner().invoke(main, ["demo", "--admin-dsn", "mysql://root@127.0.0.1:1/x"])
    assert result.exit_code != 0
    assert "--dsn" in result.output


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_demo_against_a_given_server_skips_what_needs_control_of_it(
    db: MariaDBServer, tmp_path: Path
) -> None:
    db.create_user("demo_admin", "demo-admin-pw", grants="")
    db.execute_admin("GRANT ALL PRIVILEGES ON *.* TO 'demo_admin'@'%' WITH GRANT OPTION")
    admin = db.dsn(user="demo_admin", password="demo-admin-pw")
    result = CliRunner().invoke(
        main,
        [
            "demo",
            "--quick",
            "--variants",
            "tether",
            "--dsn",
            db.dsn(),
            "--admin-dsn",
            admin,
            "--output",
            str(tmp_path),
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert db.password not in result.output and "demo-admin-pw" not in result.output
    data = json.loads((tmp_path / "results.json").read_text())
    skipped = {p["key"]: p["skipped"] for p in data["schedule"]}
    assert skipped["restart"] is not None  # needs control of the server
    assert skipped["idle"] is not None  # the server's wait_timeout is the default 8 hours
    assert skipped["cap"] is None  # a capped user was made with the admin account...
    assert skipped["kill-trx"] is None and skipped["kill"] is None  # ...which may KILL
    (row,) = data["variants"]
    assert [p["phase"] for p in row["phases"]] == [
        "cap",
        "warm-up",
        "kill-trx",
        "kill",
        "blackhole",
    ]
    assert row["writes_lost_silently"] == 0 and row["writes_duplicated"] == 0
    # The demo's tables and its capped user are gone afterwards.
    assert db.execute_admin(
        "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_NAME LIKE 'tether_demo%%'"
    ) == [(0,)]
    assert db.execute_admin(
        "SELECT COUNT(*) FROM mysql.user WHERE User = 'tether_demo_capped'"
    ) == [(0,)]
