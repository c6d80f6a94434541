"""A read replayed after a lost connection runs on a fresh session: sound only if the lost
session held nothing the read could depend on (DESIGN section 3). Against a real server, both
drivers, both pool flavours: after user variables, a time zone, a temporary table, an
advisory lock, a USE, a changed sql_mode, character set or autocommit, the caller gets the
driver's own error, as the raw driver would give it; on a clean session the read is
replayed and the caller sees nothing."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

import tether
from tether.testing import DISCONNECT_CODES, FaultProxy, MariaDBServer

pytestmark = pytest.mark.faults


def run(conn: Any, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
    cur = conn.cursor()
    cur.execute(sql, args)
    rows = list(cur.fetchall())
    cur.close()
    return rows


def session_of(conn: Any) -> int:
    return int(run(conn, "SELECT CONNECTION_ID()")[0][0])


def kill(db: MariaDBServer, session: int) -> None:
    """The server ends this session (as an idle timeout, KILL or a restart does)."""
    db.kill_sessions(ids=[session])
    time.sleep(0.1)  # the KILL takes effect


def raw_set(conn: Any, sql: str) -> None:
    """Run ``sql`` through the driver's own connection (``cursor.connection``), as code
    handed a cursor may do."""
    cur = conn.cursor()
    raw = cur.connection.cursor()
    raw.execute(sql)
    raw.fetchall()
    raw.close()
    cur.close()


TEMPORARY = "CREATE TEMPORARY TABLE"  # (the table rows fit a line)

# (case, what sets the state: SQL or a callable, the read that depends on it)
STATEFUL: list[tuple[str, Any, str]] = [
    ("SET @x", "SET @x = 42", "SELECT @x"),
    ("SELECT @x :=", "SELECT @x := 42", "SELECT @x"),
    ("SELECT INTO @x", "SELECT 42 INTO @x", "SELECT @x"),
    ("time_zone", "SET time_zone = '+05:00'", "SELECT @@time_zone"),
    ("sql_mode", "SET SESSION sql_mode = 'ANSI_QUOTES'", "SELECT @@sql_mode"),
    ("SET NAMES", "SET NAMES latin1", "SELECT @@character_set_client"),
    ("temporary table", "CREATE TEMPORARY TABLE tmp_t (a INT)", "SELECT COUNT(*) FROM tmp_t"),
    ("temporary table AS SELECT", f"{TEMPORARY} tmp_t AS SELECT 1 a", "SELECT COUNT(*) FROM tmp_t"),
    # A temporary table hiding a real one: on a fresh session the read silently reads the other.
    ("temporary table shadowing", f"{TEMPORARY} shadowed AS SELECT 1 a", "SELECT COUNT(*) FROM shadowed"),  # noqa: E501
    ("GET_LOCK", "SELECT GET_LOCK('job-7', 0)", "SELECT IS_USED_LOCK('job-7') = CONNECTION_ID()"),
    ("USE (SQL)", "USE information_schema", "SELECT DATABASE()"),
    ("USE (select_db)", lambda conn: conn.select_db("information_schema"), "SELECT DATABASE()"),
    ("autocommit (SQL)", "SET autocommit = 0", "SELECT @@autocommit"),
    ("autocommit()", lambda conn: conn.autocommit(False), "SELECT @@autocommit"),
    ("isolation", "SET SESSION TRANSACTION ISOLATION LEVEL SERIALIZABLE", "SELECT @@tx_isolation"),
    ("PREPARE", "PREPARE ps FROM 'SELECT 1'", "SELECT COUNT(*) FROM information_schema.TABLES"),
    ("via cursor.connection", lambda conn: raw_set(conn, "SET @x = 42"), "SELECT @x"),
]  # fmt: skip


def cases(with_callables: bool = True) -> list[Any]:
    return [
        pytest.param(
            how,
            read,
            id=name,
        )
        for name, how, read in STATEFUL
        if with_callables or not callable(how)
    ]


def set_up(conn: Any, how: Any) -> None:
    if callable(how):
        how(conn)
    else:
        run(conn, how)


def expect_the_drivers_error(pool: tether.Pool, conn: Any, read: str) -> None:
    with pytest.raises(pool.driver.Error) as info:
        rows = run(conn, read)
        pytest.fail(f"replayed on a fresh session, which answered {rows!r}")
    assert not isinstance(info.value, tether.Error), repr(info.value)
    assert isinstance(info.value, pool.driver.OperationalError), repr(info.value)
    assert info.value.args[0] in {*DISCONNECT_CODES, 1927}, repr(info.value)
    assert pool.stats()["replays"] == 0


@pytest.mark.parametrize(("how", "read"), cases())
def test_a_read_on_a_session_holding_state_is_not_replayed(
    db: MariaDBServer, pools: Callable[..., tether.Pool], how: Any, read: str
) -> None:
    db.execute_admin(f"CREATE TABLE {db.database}.shadowed (a INT)")
    db.execute_admin(f"INSERT INTO {db.database}.shadowed VALUES (1), (2), (3)")
    pool = pools(db.dsn())
    with pool.connection() as conn:
        session = session_of(conn)
        set_up(conn, how)  # the last thing the session did
        kill(db, session)
        expect_the_drivers_error(pool, conn, read)
        # The connection is replaced before the next statement: the caller, told, goes on.
        assert run(conn, "SELECT 1") == [(1,)]
    with pool.connection() as conn:
        assert run(conn, "SELECT 2") == [(2,)]


@pytest.mark.parametrize(("how", "read"), cases(with_callables=False))
def test_a_thread_mapped_session_keeps_its_state_and_its_caution_across_checkouts(
    db: MariaDBServer, driver: str, how: str, read: str
) -> None:
    """ThreadLocalPool keeps a thread's session between check-outs: the state set in one
    check-out still rules out a replay in the next."""
    db.execute_admin(f"CREATE TABLE {db.database}.shadowed (a INT)")
    pool = tether.ThreadLocalPool(db.dsn(), driver=driver)
    try:
        with pool.connection() as conn:
            session = session_of(conn)
            set_up(conn, how)
        with pool.connection() as conn:
            kill(db, session)
            expect_the_drivers_error(pool, conn, read)
    finally:
        pool.close()


def test_a_pool_session_reset_on_return_is_clean_again(db: MariaDBServer, driver: str) -> None:
    """tether.Pool resets a changed session when it comes back: in the next check-out the
    session holds nothing, and a lost read is replayed."""
    pool = tether.Pool(db.dsn(), driver=driver, max_size=1)
    try:
        with pool.connection() as conn:
            run(conn, "SET @x = 42")
        with pool.connection() as conn:
            assert run(conn, "SELECT @x") == [(None,)]
            kill(db, session_of(conn))
            assert run(conn, "SELECT @x") == [(None,)]
        assert pool.stats()["replays"] == 1 and pool.stats()["resets"] == 1
    finally:
        pool.close()


@pytest.mark.parametrize(
    "read", ["SELECT 1", "SELECT @@time_zone", "SHOW SESSION VARIABLES LIKE 'sql_mode'"]
)
def test_a_read_on_a_clean_session_is_replayed(
    db: MariaDBServer, pools: Callable[..., tether.Pool], read: str
) -> None:
    pool = pools(db.dsn())
    with pool.connection() as conn:
        first = session_of(conn)
        before = run(conn, read)
        kill(db, first)
        assert run(conn, read) == before  # no error: the same answer from a fresh session
        assert session_of(conn) != first
    assert pool.stats()["replays"] == 1


def test_reads_of_session_variables_alone_leave_the_session_clean(
    db: MariaDBServer, pools: Callable[..., tether.Pool]
) -> None:
    """Reading @@variables or an unset @x changes nothing: still replayed."""
    pool = pools(db.dsn())
    with pool.connection() as conn:
        session = session_of(conn)
        run(conn, "SELECT @@sql_mode, @@time_zone, @nothing")
        kill(db, session)
        assert run(conn, "SELECT 5") == [(5,)]
    assert pool.stats()["replays"] == 1


def test_no_replay_when_replay_reads_is_off(
    db: MariaDBServer, pools: Callable[..., tether.Pool]
) -> None:
    pool = pools(db.dsn(), replay_reads=False)
    with pool.connection() as conn:
        kill(db, session_of(conn))
        expect_the_drivers_error(pool, conn, "SELECT 1")


def test_a_dirty_session_is_not_reconnected_by_ping(
    db: MariaDBServer, pools: Callable[..., tether.Pool]
) -> None:
    """``ping(reconnect=True)`` reconnects only where nothing is lost: not a session that
    held state."""
    pool = pools(db.dsn())
    with pool.connection() as conn:
        session = session_of(conn)
        run(conn, "SET @x = 42")
        kill(db, session)
        with pytest.raises(pool.driver.OperationalError) as info:
            conn.ping(reconnect=True)
        assert not isinstance(info.value, tether.Error)


def test_a_multi_statement_with_a_write_is_never_replayed(
    db: MariaDBServer,
    pools: Callable[..., tether.Pool],
    driver: str,
    fault_proxy: Callable[[MariaDBServer], FaultProxy],
) -> None:
    if driver == "pymysql":
        from pymysql.constants import CLIENT
    else:
        from MySQLdb.constants import CLIENT
    db.execute_admin(
        f"CREATE TABLE {db.database}.ledger (id INT AUTO_INCREMENT PRIMARY KEY, note TEXT)"
    )
    proxy = fault_proxy(db)
    pool = pools(
        proxy.dsn_for(), watchdog=None, connect_args={"client_flag": CLIENT.MULTI_STATEMENTS}
    )
    with pool.connection() as conn:
        run(conn, "SELECT 1")
        proxy.lose_next_reply(b"INSERT INTO ledger")
        with pytest.raises(tether.OutcomeUnknown):
            cur = conn.cursor()
            cur.execute("SELECT 1; INSERT INTO ledger (note) VALUES ('once')")
            while cur.nextset():
                pass
            cur.close()
    written = db.execute_admin(f"SELECT COUNT(*) FROM {db.database}.ledger")[0][0]
    assert written == 1  # the server ran it once; nobody ran it again
