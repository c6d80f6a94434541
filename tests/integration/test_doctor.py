"""`tether doctor` against private servers with known settings."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import pytest
from click.testing import CliRunner

from tether.cli import main
from tether.inspect import ServerReport, advise
from tether.testing import MariaDBServer


def doctor(*args: str) -> Any:
    return CliRunner().invoke(main, ["doctor", *args], catch_exceptions=False)


@pytest.fixture(scope="module")
def server() -> Any:
    with MariaDBServer(
        options={"wait_timeout": 300, "max_connections": 40},
        max_user_connections=12,
        name="doctor",
    ) as srv:
        yield srv


def test_values_are_read_back(server: MariaDBServer) -> None:
    result = doctor(server.dsn(), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    report = data["server"]
    assert report["timeouts"]["wait_timeout"]["session"] == 300
    assert report["max_connections"] == 40
    assert report["user_limit"] == 12
    assert report["status"]["Threads_connected"] >= 1
    assert report["current_user"].startswith("app@")
    assert "app-secret" not in result.output


def test_advice_for_a_fleet_over_the_user_cap(server: MariaDBServer) -> None:
    result = doctor(server.dsn(), "--json", "--processes", "4", "--threads", "16")
    advice = json.loads(result.output)["advice"]
    assert advice["cap"] == 12 and advice["cap_source"] == "max_user_connections"
    assert advice["pool_size"] * 4 <= 12
    assert advice["warnings"]  # threads will wait
    assert advice["max_lifetime"] < 300 and advice["idle_timeout"] < 300
    assert "max_size=2" in advice["pool"]


def test_human_output_has_the_sections(server: MariaDBServer) -> None:
    result = doctor(server.dsn(), "--processes", "2", "--threads", "8")
    assert result.exit_code == 0, result.output
    for text in ("wait_timeout", "max_connections", "Sessions by user", "Advice", "tether.Pool("):
        assert text in result.output
    assert "app-secret" not in result.output


def test_least_privilege_user_gets_notes_not_failure(server: MariaDBServer) -> None:
    server.create_user("weak", "weak-pw", grants="")
    try:
        result = doctor(f"mysql://weak:weak-pw@127.0.0.1:{server.port}/", "--json")
    finally:
        server.execute_admin("DROP USER IF EXISTS 'weak'@'%'")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)["server"]
    assert report["sees_all_sessions"] is False
    assert any("own sessions" in note for note in report["notes"])
    assert "weak-pw" not in result.output


def test_wrong_password_is_a_clear_error(server: MariaDBServer) -> None:
    result = CliRunner().invoke(main, ["doctor", server.dsn(password="not-the-password")])
    assert result.exit_code == 2
    assert "Access denied" in result.output
    assert "not-the-password" not in result.output


def test_unreachable_server_fails_fast() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    start = time.monotonic()
    result = CliRunner().invoke(main, ["doctor", f"mysql://u:secret-pw@127.0.0.1:{port}/d"])
    assert time.monotonic() - start < 10
    assert result.exit_code == 2
    assert "cannot inspect mysql://u:***@127.0.0.1" in result.output
    assert "secret-pw" not in result.output


def test_bad_dsn_is_a_clear_error() -> None:
    result = CliRunner().invoke(main, ["doctor", "postgres://u:pw@h/d"])
    assert result.exit_code == 2
    assert "scheme" in result.output


def report(**overrides: Any) -> ServerReport:
    base: dict[str, Any] = {
        "server": "mysql://app:***@h:3306/app",
        "version": "10.11",
        "current_user": "app@%",
        "timeouts": {"wait_timeout": {"session": 300, "global": 300}},
        "max_connections": 151,
        "max_user_connections_global": 0,
        "user_limit": 0,
        "status": {"Threads_connected": 11},
        "sees_all_sessions": True,
        "own_sessions": 1,
    }
    base.update(overrides)
    return ServerReport(**base)


def test_advice_arithmetic() -> None:
    # 151 connections, 10 used by others, 15 reserved: 126 left; 4 x 16 threads fit.
    advice = advise(report(), processes=4, threads=16)
    assert (advice.cap, advice.budget, advice.pool_size) == (151, 126, 16)
    assert not advice.warnings
    # Per-user cap binds before max_connections.
    advice = advise(report(user_limit=20), processes=2, threads=16)
    assert advice.cap_source == "max_user_connections" and advice.pool_size == 9
    # A fleet that cannot fit at all is called out.
    advice = advise(report(user_limit=3), processes=8, threads=4)
    assert advice.pool_size == 1 and "cannot" not in advice.warnings[0]
    assert "need at least 8 connections" in advice.warnings[0]
    # Lifetimes sit under wait_timeout.
    advice = advise(report(timeouts={"wait_timeout": {"session": 28800, "global": 28800}}))
    assert advice.max_lifetime is not None and advice.max_lifetime < 28800
    with pytest.raises(ValueError):
        advise(report(), processes=0)
