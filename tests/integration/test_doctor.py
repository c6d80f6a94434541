"""`tether doctor` against private servers with known settings, and its advice arithmetic."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest
from click.testing import CliRunner, Result

from tether.advice import Limits, advise, lifetimes, reserve_for
from tether.cli import main
from tether.inspect import read_report
from tether.testing import FaultProxy, MariaDBServer

TETHER = Path(sys.executable).with_name("tether")
SECRET = "app-secret"  # the application user's password on the private servers


def doctor(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, ["doctor", *args], env=env)


def doctor_json(*args: str) -> dict[str, Any]:
    result = doctor(*args, "--json")
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # nothing listens there once the socket is closed


@pytest.fixture(scope="module")
def server() -> Iterator[MariaDBServer]:
    with MariaDBServer(
        options={"wait_timeout": 300, "max_connections": 40},
        max_user_connections=12,
        name="tether-doctor",
    ) as srv:
        yield srv


@pytest.fixture
def sessions(server: MariaDBServer) -> Iterator[Any]:
    """``open(user, password, n)``: n idle sessions, closed after the test."""
    opened: list[Any] = []

    def open_(user: str, password: str, n: int) -> None:
        for _ in range(n):
            opened.append(
                pymysql.connect(host=server.host, port=server.port, user=user, password=password)
            )

    yield open_
    for conn in opened:
        conn.close()
    server.reset()  # and drop the users a test created


def test_values_are_read_back(server: MariaDBServer, sessions: Any, driver: str) -> None:
    sessions("app", SECRET, 3)
    time.sleep(1.1)  # so the sleeping sessions have slept at least a second
    data = doctor_json(server.dsn(), "--driver", driver)
    assert data["driver"] == driver
    assert data["server"] == f"mysql://app:***@127.0.0.1:{server.port}/app"
    assert data["version"].startswith("10.") or "MariaDB" in data["version"]
    assert data["current_user"] == "app@%"
    assert data["timeouts"]["wait_timeout"] == {"session": 300, "global": 300}
    assert set(data["timeouts"]) == {
        "wait_timeout",
        "interactive_timeout",
        "net_read_timeout",
        "net_write_timeout",
    }
    assert data["limits"] == {
        "max_connections": 40,
        "max_user_connections": 0,
        "account_max_user_connections": 12,
        "account_limit_source": "SHOW CREATE USER CURRENT_USER",
    }
    status = data["status"]
    assert status["Threads_connected"] >= 4  # the three above and the doctor
    assert status["Max_used_connections"] >= status["Threads_connected"]
    assert isinstance(status["Aborted_clients"], int)
    assert isinstance(status["Aborted_connects"], int)
    # The app account has no PROCESS privilege: it sees its own sessions only, and says so.
    assert data["sessions"]["all_visible"] is False
    [app] = data["sessions"]["by_user"]
    assert (app["name"], app["sessions"], app["sleeping"]) == ("app", 3, 3)
    assert app["longest_sleep"] >= 1
    assert data["sessions"]["by_host"][0]["name"] == "127.0.0.1"
    assert data["sessions"]["own"] == 3
    assert "PROCESS" in data["not_visible"]["other accounts' sessions"]


def test_session_value_differing_from_global_is_shown(server: MariaDBServer) -> None:
    dsn = server.dsn() + "?init_command=SET+SESSION+wait_timeout%3D120"
    data = doctor_json(dsn)
    assert data["timeouts"]["wait_timeout"] == {"session": 120, "global": 300}
    assert data["advice"]["max_lifetime"] < 120
    human = doctor(dsn)
    row = next(line for line in human.stdout.splitlines() if "wait_timeout" in line)
    assert "120" in row and "300" in row


def test_fleet_over_the_user_cap(server: MariaDBServer) -> None:
    advice = doctor_json(server.dsn(), "--processes", "4", "--threads", "16")["advice"]
    assert advice["cap"] == 12
    assert advice["cap_source"] == "MAX_USER_CONNECTIONS of app@%"
    assert advice["pool_size"] <= 3
    assert advice["pool_size"] == 2  # 12 - 2 reserved = 10, // 4
    assert advice["fleet_size"] <= 12 - advice["reserve"]
    assert advice["fits"] is True and advice["threads_wait"] is True
    assert any("wait for a connection" in w for w in advice["warnings"])
    assert 0 < advice["max_lifetime"] < 300 and 0 < advice["idle_timeout"] < 300
    assert advice["keepalive"] <= advice["idle_timeout"] / 2
    assert advice["pool"] == (
        'tether.Pool(dsn, driver="pymysql", max_size=2, timeout=10,'
        " max_lifetime=270, idle_timeout=270, keepalive=60)"
    )


def test_two_processes_under_max_connections(server: MariaDBServer, sessions: Any) -> None:
    # An account with no cap of its own: max_connections (40) binds, less what others hold.
    server.create_user("free", "free-pw")
    server.create_user("other", "other-pw")
    sessions("other", "other-pw", 3)
    data = doctor_json(f"mysql://free:free-pw@127.0.0.1:{server.port}/app", "--processes", "2")
    advice = data["advice"]
    assert data["limits"]["account_max_user_connections"] == 0
    assert advice["cap"] == 40 and advice["cap_source"] == "max_connections"
    assert advice["reserve"] == 4
    assert advice["others"] == data["status"]["Threads_connected"] - 1
    assert advice["others"] >= 3
    expected = min(16, (40 - 4 - advice["others"]) // 2)
    assert advice["pool_size"] == expected
    assert advice["fleet_size"] + advice["others"] + advice["reserve"] <= 40
    if expected == 16:
        assert advice["warnings"] == []
    assert "free-pw" not in json.dumps(data)


def test_fleet_that_cannot_fit_is_a_warning(server: MariaDBServer) -> None:
    result = doctor(server.dsn(), "--processes", "16", "--threads", "4")
    assert result.exit_code == 0, result.output
    assert "WARNING" in result.stdout
    assert "cannot fit" in result.stdout
    assert "max_size=1" in result.stdout
    advice = doctor_json(server.dsn(), "--processes", "16", "--threads", "4")["advice"]
    assert advice["fits"] is False and advice["pool_size"] == 1


def test_human_output_has_the_sections(server: MariaDBServer) -> None:
    result = doctor(server.dsn(), "--processes", "4", "--threads", "16")
    assert result.exit_code == 0, result.output
    out = result.stdout
    for text in (
        "10.11",
        "wait_timeout",
        "net_write_timeout",
        "max_connections",
        "MAX_USER_CONNECTIONS of app@%",
        "Threads_connected",
        "Max_used_connections",
        "Aborted_clients",
        "Aborted_connects",
        "Sessions now",
        "by client host",
        "not visible (needs PROCESS privilege",
        "Advice for 4 process(es) x 16 thread(s)",
        "WARNING",
    ):
        assert text in out, text
    # The Pool line is never wrapped, so it can be copied.
    assert (
        'tether.Pool(dsn, driver="pymysql", max_size=2, timeout=10, max_lifetime=270,'
        " idle_timeout=270, keepalive=60)"
    ) in out
    assert SECRET not in result.output


def test_least_privilege_user_gets_notes_not_failure(server: MariaDBServer, sessions: Any) -> None:
    server.create_user("weak", "weak-pw", grants="")  # USAGE only
    dsn = f"mysql://weak:weak-pw@127.0.0.1:{server.port}/"
    result = doctor(dsn)
    assert result.exit_code == 0, result.output
    assert "not visible (needs PROCESS privilege" in result.stdout
    assert "weak-pw" not in result.output
    data = doctor_json(dsn)
    assert data["sessions"]["all_visible"] is False
    assert "PROCESS" in data["not_visible"]["other accounts' sessions"]
    assert data["limits"]["max_connections"] == 40  # what needs no privilege is read
    assert data["limits"]["account_max_user_connections"] == 0
    assert data["advice"]["cap_source"] == "max_connections"


def test_select_only_user_with_a_database(server: MariaDBServer, sessions: Any) -> None:
    server.create_user("reader", "reader-pw", grants="SELECT ON app.*")
    result = doctor(f"mysql://reader:reader-pw@127.0.0.1:{server.port}/app")
    assert result.exit_code == 0, result.output
    assert "not visible" in result.stdout
    assert "reader-pw" not in result.output


def test_process_privilege_sees_every_account(server: MariaDBServer, sessions: Any) -> None:
    server.create_user("ops", "ops-pw", grants="PROCESS ON *.*")
    sessions("app", SECRET, 2)
    data = doctor_json(f"mysql://ops:ops-pw@127.0.0.1:{server.port}/")
    assert data["sessions"]["all_visible"] is True
    assert "other accounts' sessions" not in data["not_visible"]
    by_user = {u["name"]: u for u in data["sessions"]["by_user"]}
    assert by_user["app"]["sessions"] == 2
    assert "ops" not in by_user  # the doctor's own session is not counted
    # The app's two sessions hold connections under max_connections for the ops account.
    assert data["advice"]["others"] >= 2


def test_account_at_its_cap_is_explained(server: MariaDBServer, sessions: Any) -> None:
    server.create_user("tiny", "tiny-pw", max_user_connections=1)
    sessions("tiny", "tiny-pw", 1)
    result = doctor(f"mysql://tiny:tiny-pw@127.0.0.1:{server.port}/app")
    assert result.exit_code == 2
    assert "1226" in result.stderr and "MAX_USER_CONNECTIONS" in result.stderr
    assert "tiny-pw" not in result.output


def test_wrong_password_is_a_clear_error(server: MariaDBServer) -> None:
    result = doctor(server.dsn(password="not-the-password"))
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert "Access denied" in result.stderr and "error 1045" in result.stderr
    assert "not-the-password" not in result.output
    assert "Traceback" not in result.output


def test_unreachable_server_is_a_clear_error(driver: str) -> None:
    port = closed_port()
    # The real command; subprocess's timeout only guards the suite against a hang.
    proc = subprocess.run(
        [str(TETHER), "doctor", f"mysql://u:secret-pw@127.0.0.1:{port}/d", "--driver", driver],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.startswith(
        f"tether doctor: error: cannot inspect mysql://u:***@127.0.0.1:{port}/d"
    )
    assert proc.stderr.count("\n") == 1
    assert "secret-pw" not in proc.stderr
    assert "Traceback" not in proc.stderr


def test_silent_server_ends_at_the_connect_timeout(server: MariaDBServer, driver: str) -> None:
    proxy = FaultProxy(server.host, server.port).start()
    try:
        proxy.blackhole(True)  # accepts, then never answers: only the timeout ends the wait
        args = [server.dsn(port=proxy.port), "--connect-timeout", "1", "--driver", driver]
        proc = subprocess.run(
            [str(TETHER), "doctor", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        proxy.close()
    assert proc.returncode == 2
    assert "cannot inspect" in proc.stderr and "error 2013" in proc.stderr
    assert SECRET not in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("dsn", "message"),
    [
        ("postgres://u:pw-secret@h/d", "scheme"),
        ("mysql://u:pw-secret@h:99999/d", "port"),
        ("mysql://u:pw-secret@h/d?bogus=1", "not known"),
        ("not a url pw-secret", "must be a URL"),
    ],
)
def test_bad_dsn_is_a_clear_error(dsn: str, message: str) -> None:
    result = doctor(dsn)
    assert result.exit_code == 2
    assert message in result.stderr
    assert "pw-secret" not in result.output
    assert "Traceback" not in result.output


def test_dsn_from_the_environment(server: MariaDBServer) -> None:
    result = doctor("--json", env={"DATABASE_URL": server.dsn()})
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["limits"]["max_connections"] == 40
    missing = doctor(env={"DATABASE_URL": ""})
    assert missing.exit_code == 2
    assert "DATABASE_URL is not set" in missing.stderr


# --------------------------------------------------------------------------- arithmetic


def test_advice_under_max_connections() -> None:
    # 151 allowed, 10 others (11 connected = the doctor + 10), 16 reserved: 125 left.
    limits = Limits(max_connections=151, max_user_connections=0, threads_connected=11)
    advice = advise(limits, 4, 16)
    assert (advice.cap, advice.reserve, advice.others) == (151, 16, 10)
    assert (advice.budget, advice.pool_size, advice.fleet_size) == (125, 16, 64)
    assert advice.fits and not advice.threads_wait and advice.warnings == []
    # The app's own sessions are not "others": its pools replace them.
    advice = advise(Limits(max_connections=40, threads_connected=11, own_sessions=10), 2, 16)
    assert advice.others == 0 and advice.pool_size == 16


def test_per_user_cap_binds_before_max_connections() -> None:
    limits = Limits(max_connections=151, account_max_user_connections=12, account="app@%")
    advice = advise(limits, 4, 16)
    assert advice.cap_source == "MAX_USER_CONNECTIONS of app@%"
    assert (advice.cap, advice.reserve, advice.budget, advice.pool_size) == (12, 2, 10, 2)
    assert advice.threads_wait and len(advice.warnings) == 1
    assert "14 threads per process wait" in advice.warnings[0]
    # Global max_user_connections when the account has none of its own.
    advice = advise(Limits(max_connections=151, max_user_connections=30), 2, 16)
    assert advice.cap_source == "max_user_connections (global)"
    assert advice.pool_size == (30 - 3) // 2
    # The account's own limit wins over the global one, even when higher.
    limits = Limits(max_connections=500, max_user_connections=30, account_max_user_connections=100)
    assert advise(limits, 1, 200).cap == 100


def test_max_connections_binds_when_lower_than_the_user_cap() -> None:
    limits = Limits(max_connections=20, account_max_user_connections=50, threads_connected=6)
    advice = advise(limits, 2, 16)
    assert advice.cap_source == "max_connections"
    assert (advice.others, advice.reserve, advice.budget, advice.pool_size) == (5, 2, 13, 6)


def test_plan_that_cannot_fit() -> None:
    advice = advise(Limits(account_max_user_connections=3), 8, 4)
    assert not advice.fits and advice.pool_size == 1 and advice.budget == 1
    assert "cannot fit" in advice.warnings[0]
    assert "8 processes need at least 8 connections" in advice.warnings[0]
    # Exactly one connection per process still fits.
    advice = advise(Limits(account_max_user_connections=10), 8, 4)
    assert advice.fits and advice.pool_size == 1


def test_signs_of_a_cap_already_hit() -> None:
    busy = Limits(
        max_connections=100,
        max_used_connections=95,
        account_max_user_connections=12,
        own_sessions=11,
        account="app@%",
    )
    warnings = advise(busy, 2, 4).warnings
    assert any("Max_used_connections is 95 of max_connections 100" in w for w in warnings)
    assert any("app@% holds 12 of its 12 connections" in w for w in warnings)
    calm = Limits(max_connections=100, max_used_connections=20, account_max_user_connections=12)
    assert advise(calm, 2, 4).warnings == []


def test_threads_cap_the_pool() -> None:
    advice = advise(Limits(max_connections=1000), 2, 8)
    assert advice.pool_size == 8 and not advice.warnings
    assert any("capped at 8 threads" in reason for reason in advice.reasons)


def test_no_visible_cap() -> None:
    advice = advise(Limits(), 3, 5)
    assert advice.cap is None and advice.pool_size == 5
    assert advice.max_lifetime is None and "max_lifetime" not in advice.pool_line()
    assert "no connection cap is visible" in advice.warnings[0]


def test_lifetimes_sit_under_wait_timeout() -> None:
    assert lifetimes(28800) == (1800.0, 600.0, 60.0)  # the pool's defaults already fit
    assert lifetimes(300) == (270.0, 270.0, 60.0)
    assert lifetimes(60) == (54.0, 54.0, 27.0)
    max_lifetime, idle_timeout, keepalive = lifetimes(2)
    assert max_lifetime == idle_timeout == 1.0 and keepalive == 0.5
    assert lifetimes(None) == (None, None, None)
    for wait in (1, 2, 5, 10, 31, 100, 600, 3600, 28800):
        max_lifetime, idle_timeout, keepalive = lifetimes(wait)
        assert max_lifetime is not None and idle_timeout is not None and keepalive is not None
        assert max_lifetime < wait and idle_timeout < wait and keepalive < idle_timeout
    short = advise(Limits(max_connections=100, wait_timeout=20))
    assert any("wait_timeout is only 20s" in w for w in short.warnings)


def test_reserve_and_timeout() -> None:
    assert [reserve_for(c) for c in (1, 12, 20, 21, 151)] == [2, 2, 2, 3, 16]
    assert advise(Limits()).timeout == 10
    assert advise(Limits(), request_timeout=120).timeout == 30
    assert advise(Limits(), request_timeout=1).timeout == 1
    with pytest.raises(ValueError):
        advise(Limits(), 0, 16)
    with pytest.raises(ValueError):
        advise(Limits(), 1, 0)


# --------------------------------------------------------------------------- reading


def denied(code: int, message: str) -> pymysql.err.OperationalError:
    return pymysql.err.OperationalError(code, message)


def scripted(answers: dict[str, Any]) -> Any:
    """A query function answering by statement prefix; an exception value is raised."""

    def query(sql: str) -> list[tuple[Any, ...]]:
        matches = [prefix for prefix in answers if sql.startswith(prefix)]
        assert matches, f"unexpected statement: {sql}"
        answer = answers[max(matches, key=len)]  # the most specific prefix
        if isinstance(answer, BaseException):
            raise answer
        rows: list[tuple[Any, ...]] = answer
        return rows

    return query


BASICS = {
    "SELECT VERSION()": [("8.0.36", "app@%", 7)],
    "SELECT @@SESSION.wait_timeout": [(600, 28800)],
    "SELECT @@SESSION.": [(30, 30)],
    "SELECT @@GLOBAL.max_connections": [(151,)],
    "SELECT @@GLOBAL.max_user_connections": [(0,)],
}


def test_everything_denied_is_noted_not_fatal() -> None:
    process = denied(1227, "Access denied; you need (at least one of) the PROCESS privilege(s)")
    answers = {
        **BASICS,
        "SHOW CREATE USER": denied(
            1227,
            "Access denied; you need (at least one of) the"
            " CREATE USER privilege(s) for this operation",
        ),
        # MySQL's SHOW GRANTS leaves resource limits out: no clause proves nothing there.
        "SHOW GRANTS": [("GRANT USAGE ON *.* TO `app`@`%`",)],
        "SELECT max_user_connections FROM mysql.user": denied(
            1142, "SELECT command denied to user 'app'@'10.0.0.5' for table 'user'"
        ),
        "SELECT @@SESSION.max_user_connections": [(0,)],
        "SHOW GLOBAL STATUS": process,
        "SELECT ID, USER": process,
        "SELECT PRIVILEGE_TYPE": denied(1142, "SELECT command denied for table 'USER_PRIVILEGES'"),
    }
    report = read_report(scripted(answers), server="mysql://app:***@h/app", driver="pymysql")
    assert report.timeout("wait_timeout") is not None
    assert report.limits().wait_timeout == 600
    assert report.max_connections == 151
    assert report.account_max_user_connections is None
    assert report.not_visible["account_max_user_connections"] == ("needs SELECT privilege on user")
    assert report.status == dict.fromkeys(report.status)
    assert report.not_visible["Threads_connected"] == "needs PROCESS privilege"
    assert report.not_visible["sessions"] == "needs PROCESS privilege"
    assert report.by_user == [] and not report.sees_all_sessions
    data = report.as_dict()
    assert data["status"]["Aborted_clients"] is None
    assert data["limits"]["account_max_user_connections"] is None
    # Advice still comes out, from what was visible.
    advice = advise(report.limits(), 2, 16)
    assert advice.cap == 151 and advice.pool_size == 16
    assert any("Threads_connected is not visible" in r for r in advice.reasons)


def test_account_limit_from_the_session_value() -> None:
    answers = {
        **BASICS,
        "SHOW CREATE USER": denied(1064, "You have an error in your SQL syntax"),
        "SHOW GRANTS": [("GRANT USAGE ON *.* TO `app`@`%`",)],
        "SELECT max_user_connections FROM mysql.user": denied(1142, "denied"),
        "SELECT @@SESSION.max_user_connections": [(25,)],
        "SHOW GLOBAL STATUS": [("Threads_connected", "9")],
        "SELECT ID, USER": [
            (7, "app", "h:1", "Query", 0),
            (8, "app", "10.0.0.5:4000", "Sleep", 42),
        ],
        "SELECT PRIVILEGE_TYPE": [("USAGE",)],
    }
    report = read_report(scripted(answers), server="s", driver="pymysql")
    assert report.account_max_user_connections == 25
    assert report.account_limit_source == "@@SESSION.max_user_connections"
    assert "account_max_user_connections" not in report.not_visible
    assert report.status["Threads_connected"] == 9 and report.status["Aborted_clients"] is None
    assert report.own_sessions == 1  # the doctor's own (id 7) is not counted
    assert [(u.name, u.sessions, u.sleeping, u.longest_sleep) for u in report.by_host] == [
        ("10.0.0.5", 1, 1, 42)
    ]


def test_a_lost_connection_is_not_a_privilege_problem() -> None:
    answers = {**BASICS, "SHOW CREATE USER": denied(2013, "Lost connection to server")}
    with pytest.raises(pymysql.err.OperationalError):
        read_report(scripted(answers), server="s", driver="pymysql")
