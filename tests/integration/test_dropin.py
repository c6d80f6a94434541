"""tether as a drop-in for a DB-API connection: every error it raises about a connection is
also the driver's matching DB-API class (with the errno code reads from ``args[0]``), so
``except pymysql.OperationalError:`` / ``except MySQLdb.InterfaceError:`` written before
tether keep working; ``ping(reconnect=True)`` and ``open`` behave as code written for the
drivers expects; and type checkers see useful types (tests/typing, checked with mypy)."""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import tether
from tether.testing import DISCONNECT_CODES, MariaDBServer, connect_raw

TYPING = Path(__file__).resolve().parents[1] / "typing" / "check_types.py"


def one(conn: Any, sql: str, args: Any = None) -> Any:
    cur = conn.cursor()
    cur.execute(sql, args)
    row = cur.fetchone()
    cur.close()
    return row[0] if row else None


def module(pool: tether.Pool) -> Any:
    """The driver's DB-API module (``pymysql`` or ``MySQLdb``)."""
    return pool.driver.module


def refused_port() -> int:
    """A port on 127.0.0.1 nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ----------------------------------------------------------------------------- use after close


def test_use_after_close_is_the_drivers_interface_error(
    db: MariaDBServer, pools: Callable[..., tether.Pool]
) -> None:
    pool = pools(db.dsn())
    dbapi = module(pool)
    conn = pool.connection()
    assert conn.open is True and conn.closed is False
    cur = conn.cursor()
    cur.execute("SELECT 1")
    conn.close()
    assert conn.open is False and conn.closed is True
    uses: list[Callable[[], Any]] = [
        conn.cursor,
        lambda: cur.execute("SELECT 1"),
        conn.commit,
        conn.rollback,
        conn.begin,
        conn.ping,
        lambda: conn.ping(reconnect=True),
        lambda: conn.select_db(db.database),
        lambda: conn.autocommit(False),
        lambda: conn.thread_id(),  # noqa: PLW0108 (the attribute itself is refused)
        conn.close,
    ]
    for use in uses:
        with pytest.raises(dbapi.InterfaceError) as info:
            use()
        assert isinstance(info.value, tether.ConnectionReleased)
        assert isinstance(info.value, dbapi.Error)
        assert info.value.args[0] == 0
    with contextlib.suppress(dbapi.InterfaceError):  # as code written for the driver has it
        conn.cursor()
    assert pool.stats().in_use == 0


def test_a_connection_taken_away_by_the_pool_is_closed_too(
    db: MariaDBServer, pools: Callable[..., tether.Pool]
) -> None:
    pool = pools(db.dsn())
    conn = pool.connection()
    pool.close()
    assert conn.open is True  # checked-out connections close when they come back
    conn.close()
    assert conn.open is False
    with pytest.raises(module(pool).InterfaceError):
        conn.cursor()


# ----------------------------------------------------------------------------- pool errors


def refused_errno(driver: str, port: int) -> int:
    """The errno the driver itself gives for a refused connect (PyMySQL 2003, libmariadb
    2002)."""
    try:
        connect_raw(driver, ("127.0.0.1", port), "app", "top-secret", connect_timeout=1)
    except Exception as exc:
        assert isinstance(exc.args[0], int)
        return exc.args[0]
    pytest.fail("something listens on the refused port")


def test_pool_timeout_on_a_refused_connect_is_the_drivers_operational_error(
    pools: Callable[..., tether.Pool], driver: str
) -> None:
    """'Server down': what code catching the driver's OperationalError around a connect
    expects, with the connect error's errno in args[0]."""
    port = refused_port()
    pool = pools(f"mysql://app:top-secret@127.0.0.1:{port}/app", connect_timeout=1)
    dbapi = module(pool)
    errno = refused_errno(driver, port)
    assert errno in (2002, 2003)
    started = time.monotonic()
    try:
        pool.connection(timeout=1.0)
        pytest.fail("a refused connect gave a connection")
    except dbapi.OperationalError as exc:
        assert isinstance(exc, tether.PoolTimeout)
        assert isinstance(exc, dbapi.DatabaseError) and isinstance(exc, dbapi.Error)
        assert exc.args[0] == errno and exc.errno == errno
        assert str(errno) in str(exc) and "top-secret" not in str(exc)
    assert time.monotonic() - started < 5


def test_pool_timeout_message_tells_the_whole_wait(pools: Callable[..., tether.Pool]) -> None:
    pool = pools(f"mysql://app:pw@127.0.0.1:{refused_port()}/app", connect_timeout=1)
    with pytest.raises(tether.PoolTimeout) as info:
        pool.connection(timeout=1.0)
    found = re.search(r"no connection within ([0-9.]+)s", str(info.value))
    assert found is not None, str(info.value)
    assert float(found.group(1)) >= 0.95, str(info.value)


def test_pool_timeout_when_exhausted_is_the_drivers_operational_error(
    db: MariaDBServer, pools: Callable[..., tether.Pool]
) -> None:
    pool = pools(db.dsn(), max_size=1)
    dbapi = module(pool)
    held = pool.connection()
    with pytest.raises(dbapi.OperationalError) as info:
        pool.connection(timeout=0.3)
    assert isinstance(info.value, tether.PoolTimeout)
    assert info.value.args[0] == 0  # no connect failed: nothing to report
    assert info.value.errno == 0
    held.close()


def test_pool_closed_is_the_drivers_interface_error(
    db: MariaDBServer, pools: Callable[..., tether.Pool]
) -> None:
    pool = pools(db.dsn(), max_size=1)
    dbapi = module(pool)
    held = pool.connection()
    woken: list[BaseException] = []

    def wait() -> None:
        try:
            pool.connection(timeout=10)
        except BaseException as exc:
            woken.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    deadline = time.monotonic() + 5
    while pool.stats().waiting < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    pool.close()
    waiter.join(5)
    held.close()
    assert len(woken) == 1 and isinstance(woken[0], dbapi.InterfaceError)
    assert isinstance(woken[0], tether.PoolClosed)
    with pytest.raises(dbapi.InterfaceError) as info:
        pool.connection()
    assert isinstance(info.value, tether.PoolClosed)


# ----------------------------------------------------------------------------- ping


def session_of(conn: Any) -> int:
    return int(one(conn, "SELECT CONNECTION_ID()"))


def killed(db: MariaDBServer, conn: Any) -> int:
    session = session_of(conn)
    db.kill_sessions(ids=[session])
    time.sleep(0.1)
    return session


def test_ping_reconnect_true_is_accepted_and_replaces_a_dead_clean_connection(
    db: MariaDBServer, pools: Callable[..., tether.Pool]
) -> None:
    pool = pools(db.dsn())
    with pool.connection() as conn:
        conn.ping(reconnect=True)  # alive: a round trip
        conn.ping(True)
        first = killed(db, conn)
        conn.ping(reconnect=True)  # dead and clean: replaced, no error
        assert session_of(conn) != first
        assert one(conn, "SELECT 1") == 1


def test_ping_without_reconnect_on_a_dead_connection_is_the_drivers_error(
    db: MariaDBServer, pools: Callable[..., tether.Pool]
) -> None:
    pool = pools(db.dsn())
    dbapi = module(pool)
    with pool.connection() as conn:
        first = killed(db, conn)
        with pytest.raises(dbapi.OperationalError) as info:
            conn.ping()
        assert not isinstance(info.value, tether.Error)
        assert info.value.args[0] in {*DISCONNECT_CODES, 1927}
        # Told, the caller goes on: the next statement runs on a fresh connection.
        assert session_of(conn) != first


def test_ping_reconnect_inside_a_transaction_is_transaction_lost(
    db: MariaDBServer, pools: Callable[..., tether.Pool]
) -> None:
    db.execute_admin(f"CREATE TABLE {db.database}.t (id INT PRIMARY KEY)")
    pool = pools(db.dsn())
    dbapi = module(pool)
    with pool.connection() as conn:
        conn.begin()
        conn.cursor().execute("INSERT INTO t VALUES (1)")
        killed(db, conn)
        with pytest.raises(dbapi.OperationalError) as info:
            conn.ping(reconnect=True)
        assert isinstance(info.value, tether.TransactionLost)
        assert info.value.args[0] in {*DISCONNECT_CODES, 1927}
        assert info.value.errno == info.value.args[0]
    assert db.execute_admin(f"SELECT COUNT(*) FROM {db.database}.t")[0][0] == 0


def test_outcome_unknown_is_the_drivers_operational_error_with_the_errno(
    db: MariaDBServer, pools: Callable[..., tether.Pool]
) -> None:
    db.execute_admin(f"CREATE TABLE {db.database}.t (id INT PRIMARY KEY)")
    pool = pools(db.dsn())
    dbapi = module(pool)
    with pool.connection() as conn:
        killed(db, conn)
        try:
            conn.cursor().execute("INSERT INTO t VALUES (1)")
            pytest.fail("a write on a killed session went through")
        except dbapi.OperationalError as exc:
            assert isinstance(exc, tether.OutcomeUnknown)
            assert exc.args[0] in {*DISCONNECT_CODES, 1927}
            assert str(exc).startswith(f"({exc.args[0]})")


# ----------------------------------------------------------------------------- typing


def test_types_seen_by_mypy(tmp_path: Path) -> None:
    """``conn.cursor()`` is a DB-API cursor with tether's options, the driver's cursor
    classes keep their types, and ``run_transaction(fn)`` returns what ``fn`` returns."""
    pytest.importorskip("mypy")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-error-summary",
            "--cache-dir",
            str(tmp_path / "mypy-cache"),
            str(TYPING),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
