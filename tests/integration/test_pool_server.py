"""The pool behaviour suite, run against a private MariaDB for both pool flavours and both
drivers: health without round trips, lifetimes from the server, session hygiene, bounds,
fork safety."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import tether
from tether.testing import MariaDBServer


@pytest.fixture
def make_pool(db: MariaDBServer, pools: Any) -> Any:
    """``pools`` with the private server's DSN unless a ``dsn=`` is given."""

    def make(**kwargs: Any) -> tether.Pool:
        return pools(kwargs.pop("dsn", None) or db.dsn(), **kwargs)

    return make


def one(conn: Any, sql: str, args: Any = None) -> Any:
    cur = conn.cursor()
    cur.execute(sql, args)
    row = cur.fetchone()
    cur.close()
    return row[0] if row else None


def test_query_through_the_pool(make_pool: Any) -> None:
    pool = make_pool()
    with pool.connection() as conn:
        assert one(conn, "SELECT 1 + 1") == 2
        assert one(conn, "SELECT @@autocommit") == 1  # autocommit on by default
    stats = pool.stats()
    assert stats["opened"] == 1 and stats.in_use == 0
    assert stats.server["wait_timeout"] > 0


def test_idle_past_wait_timeout_is_never_handed_out(make_pool: Any, db: MariaDBServer) -> None:
    db.set_global("wait_timeout", 2)
    pool = make_pool(keepalive=None)  # no keepalive: the server will drop idle sessions
    with pool.connection() as conn:
        first = one(conn, "SELECT CONNECTION_ID()")
    assert pool.lifetimes.max_lifetime is not None and pool.lifetimes.max_lifetime < 2
    time.sleep(3)
    with pool.connection() as conn:  # no error reaches the caller
        assert one(conn, "SELECT CONNECTION_ID()") != first
    stats = pool.stats()
    # Retired by maintenance, or found expired at checkout: either way before the server's cut.
    assert stats["closed"] >= 1
    assert stats.closed_by_reason.keys() <= {"max lifetime reached", "idle timeout"}


def test_session_killed_by_the_server_is_replaced_silently(
    make_pool: Any, db: MariaDBServer
) -> None:
    pool = make_pool(ping_after=60)  # no ping: the poll() check alone must catch it
    with pool.connection() as conn:
        first = one(conn, "SELECT CONNECTION_ID()")
    assert db.kill_sessions(user=db.user) >= 1
    time.sleep(0.2)  # the KILL takes effect on the server
    with pool.connection() as conn:
        assert one(conn, "SELECT CONNECTION_ID()") != first
    stats = pool.stats()
    assert stats["replaced"] == 1 and stats["pings"] == 0


def test_64_threads_on_16_connections(make_pool: Any, db: MariaDBServer) -> None:
    pool = make_pool(max_size=16, timeout=30)
    errors: list[BaseException] = []
    peak = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, db.connections_of(db.user))
            time.sleep(0.01)

    def work() -> None:
        try:
            for i in range(25):
                with pool.connection() as conn:
                    assert one(conn, "SELECT %s", (i,)) == i
        except BaseException as exc:
            errors.append(exc)

    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = [threading.Thread(target=work) for _ in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    stop.set()
    watcher.join()
    assert not errors
    assert peak <= 16
    stats = pool.stats()
    assert stats.size <= 16 and stats.in_use == 0 and stats.waiting == 0
    assert stats["checkouts"] == 64 * 25


def test_open_transaction_is_rolled_back_on_return(make_pool: Any, db: MariaDBServer) -> None:
    db.execute_admin(f"CREATE TABLE {db.database}.t (id INT PRIMARY KEY)")
    pool = make_pool()
    with pool.connection() as conn:
        conn.begin()
        conn.cursor().execute("INSERT INTO t VALUES (1)")
    with pool.connection() as conn:
        assert one(conn, "SELECT COUNT(*) FROM t") == 0
        assert one(conn, "SELECT @@in_transaction") == 0
    assert pool.stats()["rollbacks"] == 1


def test_a_streamed_read_with_autocommit_off_is_rolled_back_on_return(
    make_pool: Any, db: MariaDBServer
) -> None:
    # A streamed result's status bits arrive with its last packet, after execute() returned:
    # the return must still see the transaction the read opened, or the next borrower would
    # read from its stale snapshot.
    db.execute_admin(f"CREATE TABLE {db.database}.t (id INT PRIMARY KEY)")
    pool = make_pool(max_size=1, autocommit=False)
    with pool.connection() as conn:
        assert list(conn.stream("SELECT id FROM t", net_write_timeout=None)) == []
    db.execute_admin(f"INSERT INTO {db.database}.t VALUES (1)")
    with pool.connection() as conn:
        assert one(conn, "SELECT COUNT(*) FROM t") == 1
        conn.rollback()
    assert pool.stats()["rollbacks"] >= 1


def test_status_after_nextset_and_multi_statement_results(make_pool: Any, driver: str) -> None:
    # More result sets read by nextset() (or drained by close()) carry newer status bits:
    # a transaction opened by the last statement is seen and rolled back on return.
    if driver == "pymysql":
        from pymysql.constants import CLIENT
    else:
        from MySQLdb.constants import CLIENT
    pool = make_pool(max_size=1, connect_args={"client_flag": CLIENT.MULTI_STATEMENTS})
    for drain in ("nextset", "close"):
        with pool.connection() as conn:
            cur = conn.cursor()
            cur.execute("SELECT 1; BEGIN; SELECT 2")
            if drain == "nextset":
                while cur.nextset():
                    pass
            cur.close()
        with pool.connection() as conn:
            assert one(conn, "SELECT @@in_transaction") == 0
    assert pool.stats()["rollbacks"] == 2


def test_a_block_that_raises_still_returns_the_connection(make_pool: Any) -> None:
    pool = make_pool(max_size=1)
    for _ in range(3):
        with pytest.raises(ZeroDivisionError), pool.connection() as conn:
            conn.cursor().execute("SELECT 1")
            1 / 0  # noqa: B018
    assert pool.stats().in_use == 0


STATE_CHANGES = [
    ("SET @secret = 42", "SELECT @secret", None),
    ("SET SESSION sql_mode = 'ANSI_QUOTES'", "SELECT @@SESSION.sql_mode = @@GLOBAL.sql_mode", 1),
    (
        "SET SESSION TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "SELECT @@SESSION.tx_isolation = @@GLOBAL.tx_isolation",
        1,
    ),
    ("SET autocommit = 0", "SELECT @@autocommit", 1),
    ("SET NAMES latin1", "SELECT @@character_set_client", "utf8mb4"),
    ("USE information_schema", "SELECT DATABASE()", "app"),
    # A temporary table that survived would make this SELECT work; clean, it is error 1146.
    ("CREATE TEMPORARY TABLE tmp_x (a INT)", "SELECT COUNT(*) FROM tmp_x", 1146),
]


@pytest.mark.parametrize(("change", "probe", "clean"), STATE_CHANGES)
def test_session_state_does_not_leak_between_borrowers(
    make_pool: Any, flavour: type[tether.Pool], change: str, probe: str, clean: Any
) -> None:
    pool = make_pool(max_size=1, timeout=10)
    with pool.connection() as conn:
        conn.cursor().execute(change)

    seen: list[Any] = []

    def other_thread() -> None:
        with pool.connection() as conn:
            try:
                seen.append(one(conn, probe))
            except Exception as exc:
                seen.append(exc.args[0])

    if flavour is tether.ThreadLocalPool:
        # A thread keeps its own session between uses ...
        with pool.connection() as conn:
            assert one(conn, probe) != clean
    # ... but another thread never sees it.
    t = threading.Thread(target=other_thread)
    t.start()
    t.join(10)
    assert seen == [clean]


def test_clean_checkouts_cost_no_round_trip(make_pool: Any) -> None:
    pool = make_pool()
    probe = (
        "SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS"
        " WHERE VARIABLE_NAME = 'QUESTIONS'"
    )
    with pool.connection() as conn:
        before = int(one(conn, probe))
    for _ in range(50):
        with pool.connection() as conn:
            conn.cursor().execute("SELECT 1")
    with pool.connection() as conn:
        after = int(one(conn, probe))
    # The session saw our 50 statements and the probe, nothing else: no ping, no rollback.
    assert after - before == 51
    stats = pool.stats()
    assert stats["pings"] == 0 and stats["rollbacks"] == 0 and stats["resets"] == 0


def test_unread_streaming_results_close_the_connection(make_pool: Any, driver: str) -> None:
    pool = make_pool()
    if driver == "pymysql":
        import pymysql.cursors

        streaming: Any = pymysql.cursors.SSCursor
    else:
        import MySQLdb.cursors

        streaming = MySQLdb.cursors.SSCursor
    with pool.connection() as conn:
        cur = conn.cursor(streaming)
        cur.execute("SELECT seq FROM seq_1_to_1000")
        cur.fetchone()
    assert pool.stats().closed_by_reason.get("unread results") == 1
    with pool.connection() as conn:
        assert one(conn, "SELECT 7") == 7


def test_wrong_password_fails_fast_with_the_servers_error(
    make_pool: Any, db: MariaDBServer
) -> None:
    dsn = db.dsn(password="wrong-password")
    pool = make_pool(dsn=dsn, timeout=20)
    start = time.monotonic()
    with pytest.raises(Exception) as info:
        pool.connection()
    assert time.monotonic() - start < 3
    assert info.value.args[0] == 1045
    assert "wrong-password" not in str(info.value) and "wrong-password" not in repr(pool)


def test_close_leaves_no_server_connections(make_pool: Any, db: MariaDBServer) -> None:
    pool = make_pool(max_size=4, min_size=2)
    conns = [pool.connection() for _ in range(4)]
    for c in conns:
        c.close()
    assert db.connections_of(db.user) == 4
    pool.close()
    deadline = time.monotonic() + 5
    while db.connections_of(db.user) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert db.connections_of(db.user) == 0


def session_in_child(pool: tether.Pool, fork: Callable[[], int]) -> int:
    """Fork with ``fork``; the child checks out, reports its session id through a pipe and
    closes the pool. Returns that id (0 if the child failed); waits for the child 30 s."""
    read_end, write_end = os.pipe()
    pid = fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        code = 1
        try:
            with pool.connection(timeout=10) as conn:
                child_session = one(conn, "SELECT CONNECTION_ID()")
            os.write(write_end, str(child_session).encode())
            pool.close()
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    deadline = time.monotonic() + 30
    done, status = 0, 0
    while not done and time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        time.sleep(0.01)
    if not done:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the child did not finish within 30 s")
    session = int(os.read(read_end, 64) or b"0")
    os.close(read_end)
    assert os.WEXITSTATUS(status) == 0
    return session


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("how", ["os.fork", "fork() from C"])
def test_forked_child_never_uses_the_parents_connection(make_pool: Any, how: str) -> None:
    """Also where the fork is made from C (uWSGI's workers), where Python's at-fork hooks do
    not run: the child's first check-out must still see its thread's last connection is the
    parent's."""
    import ctypes

    # PyDLL keeps the GIL held across the call, as a C server's fork does.
    fork = os.fork if how == "os.fork" else ctypes.PyDLL(None).fork
    pool = make_pool()
    with pool.connection() as conn:
        parent_session = one(conn, "SELECT CONNECTION_ID()")
    child_session = session_in_child(pool, fork)
    assert child_session not in (0, parent_session)
    # The parent's session survived the child (no QUIT was sent on the shared socket).
    with pool.connection() as conn:
        assert one(conn, "SELECT CONNECTION_ID()") == parent_session
    assert pool.stats()["replaced"] == 0


def test_pymysql_connects_reuse_one_tls_context(db: MariaDBServer) -> None:
    pytest.importorskip("pymysql")
    with tether.Pool(db.dsn(), driver="pymysql", max_size=2) as pool:
        a, b = pool.connection(), pool.connection()
        assert a.raw.ctx is b.raw.ctx
        a.close()
        b.close()


def test_query_timeout_is_enforced_by_the_server(make_pool: Any) -> None:
    pool = make_pool(query_timeout=0.5)
    with pool.connection() as conn:
        start = time.monotonic()
        with pytest.raises(Exception) as info:
            one(conn, "SELECT SLEEP(3) FROM seq_1_to_2")
        assert time.monotonic() - start < 2.5
        assert info.value.args[0] == 1969  # max_statement_time exceeded
        assert one(conn, "SELECT 5") == 5  # the connection is still good
    assert pool.stats().closed_by_reason == {}


def test_per_call_timeout(make_pool: Any) -> None:
    pool = make_pool()
    with pool.connection() as conn:
        cur = conn.cursor()
        with pytest.raises(Exception) as info:
            cur.execute("SELECT SLEEP(3) FROM seq_1_to_2", timeout=0.3)
        assert info.value.args[0] == 1969
        cur.execute("SELECT %s", (9,), timeout=5)
        assert cur.fetchone()[0] == 9
        with pytest.raises(ValueError, match="timeout"):
            cur.execute("SELECT 1", timeout=0)


def test_forgotten_connection_is_reclaimed_and_closed_on_the_server(
    make_pool: Any, db: MariaDBServer, caplog: pytest.LogCaptureFixture
) -> None:
    import gc

    pool = make_pool(max_size=1, timeout=5)

    def forgetful() -> int:
        conn = pool.connection()
        session: int = one(conn, "SELECT CONNECTION_ID()")
        return session

    lost = forgetful()
    gc.collect()
    with pool.connection() as conn:
        assert one(conn, "SELECT CONNECTION_ID()") != lost
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(row["ID"] == lost for row in db.processlist(db.user)):
        time.sleep(0.05)
    assert all(row["ID"] != lost for row in db.processlist(db.user))
    assert "acquired at" in caplog.text and "in forgetful" in caplog.text


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_connection_held_across_fork_is_refused_in_the_child(make_pool: Any) -> None:
    pool = make_pool()
    conn = pool.connection()
    session = one(conn, "SELECT CONNECTION_ID()")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit code
        code = 3
        try:
            one(conn, "SELECT 1")
        except tether.ConnectionReleased:
            code = 0
        except BaseException:
            code = 4
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert one(conn, "SELECT CONNECTION_ID()") == session  # the parent's is untouched
    conn.close()


def test_stream_reads_a_large_result_without_buffering_it(
    make_pool: Any, flavour: type[tether.Pool]
) -> None:
    pool = make_pool()
    with pool.connection() as conn:
        total = sum(row[0] for row in conn.stream("SELECT seq FROM seq_1_to_200000", batch=5000))
        assert total == 200000 * 200001 // 2
        # Stopping early drains the rest; the connection stays usable.
        for i, _row in enumerate(conn.stream("SELECT seq FROM seq_1_to_100000")):
            if i == 10:
                break
        assert one(conn, "SELECT 11") == 11
    if flavour is tether.Pool:  # restored on return (a thread-mapped session keeps it)
        with pool.connection() as conn:
            probe = "SELECT @@SESSION.net_write_timeout = @@GLOBAL.net_write_timeout"
            assert one(conn, probe) == 1


def test_read_only_can_evict_the_whole_pool(make_pool: Any, db: MariaDBServer) -> None:
    db.execute_admin(f"CREATE TABLE {db.database}.t (id INT PRIMARY KEY)")
    pool = make_pool(evict_on_read_only="pool", max_size=4)
    conns = [pool.connection() for _ in range(3)]
    for c in conns:
        c.close()
    db.set_global("read_only", 1)
    with pool.connection() as conn:
        with pytest.raises(Exception) as info:
            conn.cursor().execute("INSERT INTO t VALUES (1)")
        assert info.value.args[0] == 1290
    assert pool.stats().idle == 0


def test_connects_with_and_without_a_database_share_one_driver(db: MariaDBServer) -> None:
    # The PyMySQL adapter reuses one TLS context across connects: only TLS state may carry
    # over, not flags that depend on each connection's own arguments.
    with tether.Pool(db.dsn(), driver="pymysql") as with_db:
        with with_db.connection() as conn:
            assert one(conn, "SELECT DATABASE()") == "app"
    no_db = f"mysql://{db.user}:{db.password}@{db.host}:{db.port}/"
    with tether.Pool(no_db, driver="pymysql") as without_db:
        with without_db.connection() as conn:
            assert one(conn, "SELECT DATABASE()") is None


def cursor_classes(driver: str) -> tuple[Any, Any, str]:
    """The driver's default and dict cursor classes, and the keyword its cursor() takes."""
    if driver == "pymysql":
        import pymysql.cursors

        return pymysql.cursors.Cursor, pymysql.cursors.DictCursor, "cursor"
    import MySQLdb.cursors

    return MySQLdb.cursors.Cursor, MySQLdb.cursors.DictCursor, "cursorclass"


def test_cursors_are_the_drivers_own_classes(make_pool: Any, driver: str) -> None:
    default, dict_cursor, keyword = cursor_classes(driver)
    pool = make_pool()
    with pool.connection() as conn:
        cur = conn.cursor()
        assert isinstance(cur, default) and isinstance(cur, tether.Cursor)
        cur.execute("SELECT 1 AS a")
        assert cur.fetchone() == (1,) and cur.rowcount == 1
        cur.close()
        for made in (conn.cursor(dict_cursor), conn.cursor(**{keyword: dict_cursor})):
            assert isinstance(made, dict_cursor) and isinstance(made, tether.Cursor)
            made.execute("SELECT 1 AS a")
            assert made.fetchone() == {"a": 1}
            made.close()
        with pytest.raises(TypeError, match="cursor class"):
            conn.cursor(dict_cursor, 1)
        kept = conn.cursor()
    with pytest.raises(tether.ConnectionReleased):
        kept.execute("SELECT 1")


def test_executemany_and_callproc_go_through_the_pool(make_pool: Any, db: MariaDBServer) -> None:
    db.execute_admin(f"CREATE TABLE {db.database}.many (id INT PRIMARY KEY)")
    db.execute_admin(f"CREATE PROCEDURE {db.database}.twice(IN x INT) BEGIN SELECT x * 2; END")
    pool = make_pool()
    with pool.connection() as conn:
        cur = conn.cursor()
        # Both the driver's multi-row INSERT and its row-by-row path.
        assert cur.executemany("INSERT INTO many VALUES (%s)", [(1,), (2,), (3,)]) == 3
        cur.executemany("UPDATE many SET id = id + 10 WHERE id = %s", [(1,), (2,)])
        assert one(conn, "SELECT SUM(id) FROM many") == 11 + 12 + 3
        cur.callproc("twice", (21,))
        assert cur.fetchone()[0] == 42
        cur.close()
    with pool.connection() as conn:
        assert one(conn, "SELECT 5") == 5
    stats = pool.stats()
    assert stats.in_use == 0 and stats.closed_by_reason == {}


def test_a_transaction_opened_through_the_drivers_connection_is_rolled_back(
    make_pool: Any, db: MariaDBServer
) -> None:
    # cursor.connection is the driver's own connection: whatever is done through it, the
    # return reads the server's status bits afresh and sees the open transaction.
    db.execute_admin(f"CREATE TABLE {db.database}.bypass (id INT PRIMARY KEY)")
    pool = make_pool(max_size=1)
    with pool.connection() as conn:
        cur = conn.cursor()
        cur.execute("SELECT 1")
        cur.connection.begin()
        cur.connection.cursor().execute("INSERT INTO bypass VALUES (1)")
    with pool.connection() as conn:
        assert one(conn, "SELECT @@in_transaction") == 0
        assert one(conn, "SELECT COUNT(*) FROM bypass") == 0
    assert pool.stats()["rollbacks"] == 1


def test_timeout_names_the_line_that_acquired(make_pool: Any) -> None:
    pool = make_pool(max_size=1, timeout=0.3)
    held = pool.connection()
    with pytest.raises(tether.PoolTimeout) as info:
        pool.connection()
    held.close()
    here = test_timeout_names_the_line_that_acquired.__code__
    assert f"{here.co_filename}:{here.co_firstlineno + 2} in {here.co_name}" in str(info.value)
