"""tether's Django backend (``ENGINE = "tether.contrib.django"``), both drivers: the ORM in a
process of its own (tests/integration/djangoapps/scenarios.py), ``manage.py migrate`` and
Django's test runner on examples/django_city, against private MariaDB servers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("django")

from tether.testing import MariaDBServer

ROOT = Path(__file__).resolve().parents[2]
MANAGE = ROOT / "examples" / "django_city" / "manage.py"


def scenario(name: str, driver: str, server: MariaDBServer, timeout: float = 120) -> Any:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.integration.djangoapps.scenarios",
            name,
            driver,
            server.dsn(),
            server.socket,
        ],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def manage(server: MariaDBServer, driver: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": server.dsn(), "CITY_DRIVER": driver}
    return subprocess.run(
        [sys.executable, str(MANAGE), *args],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_orm_reads_writes_and_options_through_the_pool(db: MariaDBServer, driver: str) -> None:
    out = scenario("orm", driver, db)
    assert out["london"] == 1
    assert out["drop_in"] is True
    # init_command, sql_mode and isolation_level as Django's own backend applies them.
    assert out["session"] == [123, "STRICT_ALL_TABLES", "REPEATABLE-READ"]
    assert {"city", "city_visit", "django_migrations"} <= set(out["tables"])
    assert out["vendor"] == ["mysql", "MariaDB", True]
    assert out["features"] is True
    assert out["visit"] == 2  # the savepoint's update kept, the failed block rolled back
    assert out["in_use_before_close"] == 1
    assert out["after_close"] == {"in_use": 0, "idle": 1, "size": 1}
    assert out["opened"] == 1  # connection.close() gave it back; the next use took it again
    assert out["resets"] == 0  # transactions alone leave nothing to reset


def test_connection_lost_inside_atomic_is_django_operational_error(
    db: MariaDBServer, driver: str
) -> None:
    out = scenario("atomic_lost", driver, db)
    assert out["raised"] == "django.db.utils.OperationalError"
    assert out["cause_is_transaction_lost"] is True
    assert out["cause_is_driver_error"] is True
    assert out["errno"] in (2006, 2013, 4031)
    assert out["in_atomic_after"] is False
    assert out["committed"] is False  # the server rolled the transaction back
    assert out["read_after_kill"] == 0
    assert out["transactions_lost"] == 1


@pytest.mark.slow
def test_shell_that_sleeps_past_wait_timeout_keeps_working(
    mariadb_factory: Any, driver: str
) -> None:
    server = mariadb_factory(options={"wait_timeout": 2})
    out = scenario("shell_idle", driver, server)
    assert out["read"] == 5
    assert out["write"] == 7
    assert out["after_atomic"] == 9
    assert len(set(out["sessions"])) == 3  # each sleep cost the session; each was replaced
    assert out["closed"] >= 2  # the lost ones, closed by the pool
    assert out["app_sessions"] == 1


def test_threads_never_hold_more_sessions_than_the_bound(db: MariaDBServer, driver: str) -> None:
    out = scenario("threads", driver, db)
    assert out["errors"] == []
    assert out["done"] == 16 * 40
    assert 1 <= out["peak"] <= 4
    assert out["size"] <= 4 and out["in_use"] == 0


def test_a_full_pool_is_djangos_operational_error_after_the_timeout(
    db: MariaDBServer, driver: str
) -> None:
    out = scenario("pool_timeout", driver, db)
    assert out["raised"] == "django.db.utils.OperationalError"
    assert out["cause_is_pool_timeout"] is True
    assert 0.4 <= out["waited"] < 10
    assert out["after"] is True


def test_pool_options_are_checked_with_clear_errors(db: MariaDBServer) -> None:
    out = scenario("bad_options", "pymysql", db)
    assert "max_size" in out["max_size"] and "POOL" in out["max_size"]
    assert "unknown pool option 'max_sise'" in out["unknown"]
    assert "'driver'" in out["driver"] and "MySQLdb" in out["driver"]
    assert "must be a dict" in out["not_a_dict"]
    password = out["password"]
    assert password and not any(password in out[k] for k in out if k != "password")


@pytest.mark.slow
def test_migrate_and_djangos_test_runner_create_and_drop_the_test_database(
    db: MariaDBServer, driver: str
) -> None:
    db.execute_admin(f"GRANT ALL ON `test_{db.database}`.* TO %s@'%%'", (db.user,))
    done = manage(db, driver, "migrate", "--noinput", "-v", "0")
    assert done.returncode == 0, done.stderr[-3000:]
    tables = {row[0] for row in db.execute_admin(f"SHOW TABLES FROM `{db.database}`")}
    assert {"city", "city_visit", "auth_user", "django_session"} <= tables
    run = manage(db, driver, "test", "cities", "--noinput", "-v", "2")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Ran 3 tests" in run.stderr and "OK" in run.stderr
    assert f"Creating test database for alias 'default' ('test_{db.database}')" in run.stderr
    databases = {row[0] for row in db.execute_admin("SHOW DATABASES")}
    assert f"test_{db.database}" not in databases  # dropped at the end
