"""An exception delivered by a signal handler, wherever it lands (DESIGN section 7), against a
real server, both drivers, both pool flavours: while a check-out waits, pings or connects,
while a query runs, between sending a query and reading its result, while a streaming
cursor fetches. Afterwards every slot is accounted for (size = idle + in use + opening, and
as many sessions on the server), later check-outs succeed, and the next borrower never gets
a connection out of step with its server ("Commands out of sync", 2014) nor a result meant
for someone else: the interrupted connection is closed, not reused."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import tether
from tether.testing import FaultProxy, MariaDBServer

pytestmark = [
    pytest.mark.faults,
    pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs setitimer"),
]

INTERRUPTED = "a call was interrupted: the protocol state is unknown"


class AlarmError(Exception):
    """What a signal handler raises: an ordinary exception, not the driver's."""


@contextlib.contextmanager
def interrupt(after: float, exc: type[BaseException], how: str = "alarm") -> Iterator[None]:
    """Raise ``exc`` in this (the main) thread about ``after`` seconds from now, from a signal
    handler: SIGALRM through setitimer, or SIGINT sent by a timer thread with ``os.kill``.
    A signal that has not been handled when the block ends is swallowed, never let loose on
    the rest of the suite; an interval timer already running (pytest-timeout's) is re-armed
    with what was left of it."""
    signum = signal.SIGALRM if how == "alarm" else signal.SIGINT

    def handler(number: int, _frame: Any) -> None:
        raise exc(f"interrupted by signal {number}")

    started = time.monotonic()
    previous = signal.signal(signum, handler)
    timer: threading.Timer | None = None
    outer = 0.0
    if how == "alarm":
        outer = signal.setitimer(signal.ITIMER_REAL, after)[0]
    else:
        timer = threading.Timer(after, os.kill, (os.getpid(), signal.SIGINT))
        timer.daemon = True
        timer.start()
    try:
        yield
    finally:
        signal.signal(signum, lambda *_: None)
        if timer is not None:
            timer.cancel()
            timer.join(5)
        else:
            signal.setitimer(signal.ITIMER_REAL, 0)
        for _ in range(3):
            time.sleep(0.001)  # a signal already on its way lands here, harmlessly
        signal.signal(signum, previous)
        if outer:
            signal.setitimer(signal.ITIMER_REAL, max(0.5, outer - (time.monotonic() - started)))


EXCEPTIONS = [
    pytest.param(AlarmError, "alarm", id="alarm-error"),
    pytest.param(KeyboardInterrupt, "alarm", id="alarm-ctrl-c"),
    pytest.param(KeyboardInterrupt, "sigint", id="sigint"),
]


def one(conn: Any, sql: str, args: Any = None) -> Any:
    # Closed only after success: closing the cursor of an interrupted call is tested apart.
    cur = conn.cursor()
    cur.execute(sql, args)
    row = cur.fetchone()
    cur.close()
    return row[0] if row else None


def accounted(pool: tether.Pool, server: MariaDBServer, user: str | None = None) -> None:
    """Every slot accounted for, nobody queued, and no server session the pool does not know
    (sessions closed a moment ago may take a moment to leave the process list)."""
    stats = pool.stats()
    assert stats.size == stats.idle + stats.in_use + stats.opening, stats
    assert stats.waiting == 0 and stats.opening == 0, stats
    assert stats.size <= stats.max_size
    deadline = time.monotonic() + 10
    while True:
        sessions = [
            row
            for row in server.processlist(user or server.user)
            if row["COMMAND"] not in ("Quit", "Killed")
        ]
        if len(sessions) == pool.stats().size or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(sessions) == pool.stats().size, sessions


def serves(pool: tether.Pool, threads: int = 2) -> None:
    """The pool serves again, from this thread and from others, each its own result."""
    with pool.connection(timeout=5) as conn:
        assert one(conn, "SELECT 41 + 1") == 42
    errors: list[BaseException] = []

    def borrow(n: int) -> None:
        try:
            for i in range(5):
                with pool.connection(timeout=10) as conn:
                    assert one(conn, "SELECT %s", (n * 100 + i,)) == n * 100 + i
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=borrow, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
    assert not errors, errors


# ----------------------------------------------------------------------------- check-out


@pytest.mark.parametrize(("exc", "how"), EXCEPTIONS)
def test_interrupted_while_waiting_for_a_connection(
    db: MariaDBServer, pools: Callable[..., tether.Pool], exc: type[BaseException], how: str
) -> None:
    pool = pools(db.dsn(), max_size=1)
    held = pool.connection()
    one(held, "SELECT 1")
    started = time.monotonic()
    with pytest.raises(exc), interrupt(0.3, exc, how):
        pool.connection(timeout=10)
    assert time.monotonic() - started < 5
    stats = pool.stats()
    assert (stats.size, stats.in_use, stats.waiting) == (1, 1, 0)
    held.close()
    accounted(pool, db)
    serves(pool)


def test_interrupted_waiter_does_not_take_the_next_grant(
    db: MariaDBServer, pools: Callable[..., tether.Pool]
) -> None:
    """A connection given back just after a waiter was interrupted goes to the next waiter,
    not to the caller that is gone."""
    pool = pools(db.dsn(), max_size=1)
    held = pool.connection()
    got: list[Any] = []
    ready = threading.Event()

    def other() -> None:
        ready.set()
        try:
            with pool.connection(timeout=10) as conn:
                got.append(one(conn, "SELECT 7"))
        except BaseException as exc:
            got.append(exc)

    with pytest.raises(AlarmError), interrupt(0.5, AlarmError):
        waiter = threading.Thread(target=other)
        waiter.start()
        ready.wait(5)
        pool.connection(timeout=10)  # queued first, then the other thread
    held.close()
    waiter.join(10)
    assert got == [7]
    accounted(pool, db)


@pytest.mark.parametrize(("exc", "how"), EXCEPTIONS[:2])
def test_interrupted_during_the_checkout_ping(
    db: MariaDBServer,
    pools: Callable[..., tether.Pool],
    fault_proxy: Callable[[MariaDBServer], FaultProxy],
    exc: type[BaseException],
    how: str,
) -> None:
    proxy = fault_proxy(db)
    pool = pools(proxy.dsn_for(), max_size=2, ping_after=0.0, ping_timeout=5, watchdog=None)
    with pool.connection() as conn:
        first = one(conn, "SELECT CONNECTION_ID()")
    time.sleep(0.01)  # past the moment a just-returned connection is trusted: pinged
    proxy.delay(0.6)  # the ping's round trip takes over a second
    with pytest.raises(exc), interrupt(0.3, exc, how):
        pool.connection(timeout=10)
    proxy.pass_through()
    stats = pool.stats()
    assert stats.in_use == 0 and stats["pings"] >= 1
    # The connection whose ping was cut short is in an unknown state: closed, not reused.
    assert sum(stats.closed_by_reason.values()) == 1, stats.closed_by_reason
    accounted(pool, db)
    with pool.connection() as conn:
        assert one(conn, "SELECT CONNECTION_ID()") != first
    serves(pool)


@pytest.mark.parametrize(("exc", "how"), EXCEPTIONS[:2])
def test_interrupted_while_connecting(
    db: MariaDBServer,
    pools: Callable[..., tether.Pool],
    fault_proxy: Callable[[MariaDBServer], FaultProxy],
    exc: type[BaseException],
    how: str,
) -> None:
    proxy = fault_proxy(db)
    pool = pools(proxy.dsn_for(), max_size=1, connect_timeout=10, watchdog=None)
    proxy.delay(0.6)  # the handshake takes seconds
    with pytest.raises(exc), interrupt(0.3, exc, how):
        pool.connection(timeout=10)
    proxy.pass_through()
    stats = pool.stats()
    assert (stats.size, stats.opening, stats.in_use) == (0, 0, 0), stats
    accounted(pool, db)  # no half-open session left on the server
    serves(pool)


# ----------------------------------------------------------------------------- statements


@pytest.mark.parametrize(("exc", "how"), EXCEPTIONS)
def test_interrupted_query_is_never_handed_to_the_next_borrower(
    db: MariaDBServer, pools: Callable[..., tether.Pool], exc: type[BaseException], how: str
) -> None:
    pool = pools(db.dsn(), max_size=1)
    with pytest.raises(exc), pool.connection() as conn:
        interrupted = one(conn, "SELECT CONNECTION_ID()")
        with interrupt(0.3, exc, how):
            one(conn, "SELECT SLEEP(1.5), 'stale'")
    assert pool.stats().closed_by_reason.get(INTERRUPTED) == 1
    # The next borrower (the same thread, then others: max_size=1 would hand the
    # interrupted connection to them if it had gone back) gets a result of its own.
    with pool.connection() as conn:
        assert one(conn, "SELECT CONNECTION_ID()") != interrupted
        assert one(conn, "SELECT 'mine'") == "mine"
    accounted(pool, db)
    serves(pool)


@pytest.mark.parametrize(("exc", "how"), EXCEPTIONS[:2])
def test_the_interrupted_caller_continues_on_a_fresh_connection(
    db: MariaDBServer, pools: Callable[..., tether.Pool], exc: type[BaseException], how: str
) -> None:
    """A caller that catches the interruption and goes on with the same connection gets its
    own results (a fresh session, the session held nothing), never the interrupted one's."""
    pool = pools(db.dsn(), max_size=1)
    with pool.connection() as conn:
        first = one(conn, "SELECT CONNECTION_ID()")
        with pytest.raises(exc), interrupt(0.3, exc, how):
            one(conn, "SELECT SLEEP(1.5), 'stale'")
        assert one(conn, "SELECT 'mine'") == "mine"
        assert one(conn, "SELECT CONNECTION_ID()") != first
    accounted(pool, db)


def test_an_interrupted_transaction_is_reported_not_replaced(
    db: MariaDBServer, pools: Callable[..., tether.Pool]
) -> None:
    db.execute_admin(f"CREATE TABLE {db.database}.t (id INT PRIMARY KEY)")
    pool = pools(db.dsn(), max_size=1)
    with pool.connection() as conn:
        conn.begin()
        conn.cursor().execute("INSERT INTO t VALUES (1)")
        with pytest.raises(AlarmError), interrupt(0.3, AlarmError):
            one(conn, "SELECT SLEEP(1.5)")
        with pytest.raises(tether.TransactionLost):
            one(conn, "SELECT COUNT(*) FROM t")  # not silently on a fresh session
    assert db.execute_admin(f"SELECT COUNT(*) FROM {db.database}.t")[0][0] == 0
    accounted(pool, db)
    serves(pool)


def streaming_class(driver: str) -> Any:
    if driver == "pymysql":
        import pymysql.cursors

        return pymysql.cursors.SSCursor
    import MySQLdb.cursors

    return MySQLdb.cursors.SSCursor


# Reading all of it takes some 6 s with either driver: an interrupted stream that reads the
# rest before letting the caller's exception through shows.
BIG = "SELECT seq, REPEAT('x', 1000) FROM seq_1_to_1000000"
PROMPT = 3.0


def long_result(driver: str) -> str:
    """A result that takes the driver about a second to read whole."""
    return f"SELECT seq FROM seq_1_to_{300_000 if driver == 'pymysql' else 3_000_000}"


@pytest.mark.parametrize(("exc", "how"), EXCEPTIONS[:2])
def test_interrupted_stream_is_never_handed_on(
    db: MariaDBServer,
    pools: Callable[..., tether.Pool],
    driver: str,
    exc: type[BaseException],
    how: str,
) -> None:
    """The signal lands where it lands: in the driver's read, between rows, in the loop.
    (Which exception the caller then sees is pinned where the landing point is fixed, in
    test_an_exception_inside_a_streaming_fetch_reaches_the_caller_promptly.)"""
    pool = pools(db.dsn(), max_size=1)
    rows = 0
    with pytest.raises(BaseException), pool.connection() as conn:
        with interrupt(0.3, exc, how):
            for _row in conn.stream(long_result(driver), batch=100):
                rows += 1
    assert rows > 0
    # (Landing in the loop rather than in a fetch, it ends the stream as a break does: the
    # rest is read and the connection, in step again, may be reused.)
    with pool.connection() as conn:
        assert one(conn, "SELECT 'mine'") == "mine"
    accounted(pool, db)
    serves(pool)


@pytest.mark.parametrize(("exc", "how"), EXCEPTIONS[:2])
def test_interrupted_streaming_cursor_is_never_handed_on(
    db: MariaDBServer,
    pools: Callable[..., tether.Pool],
    driver: str,
    exc: type[BaseException],
    how: str,
) -> None:
    pool = pools(db.dsn(), max_size=1)
    with pytest.raises(BaseException), pool.connection() as conn:
        cur = conn.cursor(streaming_class(driver))
        cur.execute(long_result(driver))
        with interrupt(0.3, exc, how):
            while cur.fetchone() is not None:
                pass
    with pool.connection() as conn:
        assert one(conn, "SELECT 'mine'") == "mine"
        assert one(conn, "SELECT 2 + 2") == 4
    assert pool.stats().closed_by_reason, "the interrupted cursor's connection was reused"
    accounted(pool, db)
    serves(pool)


def armed_fetch_error(driver: str, where: str, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Make the driver raise AlarmError once, inside a streaming fetch, once armed: between
    two rows ("rows"), or half-way through reading a row's packet ("packet", PyMySQL)."""
    armed = [False]
    if where == "packet":
        import pymysql.connections

        real_read = pymysql.connections.Connection._read_bytes
        count = [0]

        def read_bytes(self: Any, num_bytes: int) -> Any:
            if armed[0]:
                count[0] += 1
                if count[0] == 2:  # a packet's header read, its payload not
                    armed[0] = False
                    raise AlarmError("half-way through a packet")
            return real_read(self, num_bytes)

        monkeypatch.setattr(pymysql.connections.Connection, "_read_bytes", read_bytes)
        return armed
    cls = streaming_class(driver)
    real = cls.fetchmany

    def fetchmany(self: Any, size: Any = None) -> Any:
        rows = real(self, size)
        if armed[0]:
            armed[0] = False
            raise AlarmError("between two rows")
        return rows

    monkeypatch.setattr(cls, "fetchmany", fetchmany)
    return armed


@pytest.mark.parametrize(
    "where",
    [pytest.param("rows", id="between-rows"), pytest.param("packet", id="mid-packet")],
)
def test_an_exception_inside_a_streaming_fetch_reaches_the_caller_promptly(
    db: MariaDBServer, driver: str, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Wherever the driver's read is cut short, the caller gets its own exception, without
    waiting for the rest of the result to be read (the connection is closed anyway), and
    the next borrower gets a connection in step with its server."""
    if where == "packet" and driver != "pymysql":
        pytest.skip("mysqlclient reads whole packets in C")
    pool = tether.Pool(db.dsn(), driver=driver, max_size=1)
    armed = armed_fetch_error(driver, where, monkeypatch)
    rows = 0
    started = time.monotonic()
    with pytest.raises(BaseException) as info, pool.connection() as conn:
        for _row in conn.stream(BIG, batch=100):
            rows += 1
            if rows == 1000:
                armed[0] = True
    elapsed = time.monotonic() - started
    assert isinstance(info.value, AlarmError), repr(info.value)
    assert elapsed < PROMPT, f"the caller waited {elapsed:.1f}s for its exception"
    with pool.connection() as conn:
        assert one(conn, "SELECT 'mine'") == "mine"
    assert pool.stats().closed_by_reason.get(INTERRUPTED) == 1
    accounted(pool, db)
    pool.close()


def armed_result_error(driver: str, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Make the driver raise AlarmError once, once armed, after a query was sent and before
    its result was read (mysqlclient), or half-way through reading it (PyMySQL)."""
    armed = [False]
    if driver == "mysqlclient":
        import MySQLdb.cursors

        real_get = MySQLdb.cursors.BaseCursor._do_get_result

        def get_result(self: Any, db: Any) -> None:
            if armed[0]:
                armed[0] = False
                raise AlarmError("between query() and the result")
            real_get(self, db)

        monkeypatch.setattr(MySQLdb.cursors.BaseCursor, "_do_get_result", get_result)
        return armed
    import pymysql.connections

    real_read = pymysql.connections.Connection._read_bytes
    count = [0]

    def read_bytes(self: Any, num_bytes: int) -> Any:
        if armed[0]:
            count[0] += 1
            if count[0] == 4:  # a few packets into the result
                armed[0] = False
                raise AlarmError("half-way through the result")
        return real_read(self, num_bytes)

    monkeypatch.setattr(pymysql.connections.Connection, "_read_bytes", read_bytes)
    return armed


@pytest.mark.parametrize("driver", ["pymysql", "mysqlclient"])
def test_closing_the_cursor_of_an_interrupted_call_keeps_the_callers_exception(
    db: MariaDBServer, driver: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``with conn.cursor() as cur:`` closes the cursor on the way out of an interrupted
    execute(): the caller still gets its own exception, not an error from the close."""
    pytest.importorskip({"pymysql": "pymysql", "mysqlclient": "MySQLdb"}[driver])
    pool = tether.Pool(db.dsn(), driver=driver, max_size=1)
    try:
        armed = armed_result_error(driver, monkeypatch)
        with pytest.raises(BaseException) as info, pool.connection() as conn:
            with conn.cursor() as cur:
                armed[0] = True
                cur.execute("SELECT seq, 'stale' FROM seq_1_to_100")
        assert not armed[0]
        assert isinstance(info.value, AlarmError), repr(info.value)
        with pool.connection() as conn:
            assert one(conn, "SELECT 'mine'") == "mine"
        accounted(pool, db)
    finally:
        pool.close()


# ----------------------------------------------------------------------------- mysqlclient


@pytest.fixture
def mysqlclient_pool(db: MariaDBServer, flavour: type[tether.Pool]) -> Iterator[tether.Pool]:
    pytest.importorskip("MySQLdb")
    pool = flavour(db.dsn(), driver="mysqlclient", max_size=1)
    yield pool
    pool.close()


def test_mysqlclient_interrupted_between_query_and_result(
    db: MariaDBServer, mysqlclient_pool: tether.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mysqlclient's execute() sends the query and reads the reply's header in one C call,
    then reads the result in another: an exception between the two leaves the result unread
    on the connection. Here it lands there every time."""
    import MySQLdb.cursors

    real = MySQLdb.cursors.BaseCursor._do_get_result
    armed = [False]

    def cut_short(self: Any, db: Any) -> None:
        if armed[0]:
            armed[0] = False
            raise AlarmError("between query() and the result")
        real(self, db)

    monkeypatch.setattr(MySQLdb.cursors.BaseCursor, "_do_get_result", cut_short)
    pool = mysqlclient_pool
    with pytest.raises(AlarmError), pool.connection() as conn:
        armed[0] = True
        one(conn, "SELECT 'stale' FROM seq_1_to_3")
    assert not armed[0]
    with pool.connection() as conn:
        assert one(conn, "SELECT 'mine'") == "mine"
    assert pool.stats().closed_by_reason.get(INTERRUPTED) == 1
    accounted(pool, db)
    serves(pool)


@pytest.mark.parametrize("exc", [AlarmError, KeyboardInterrupt])
def test_mysqlclient_signal_during_execute(
    db: MariaDBServer, mysqlclient_pool: tether.Pool, exc: type[BaseException]
) -> None:
    """A signal arriving while mysqlclient waits in C for the reply is handled when the C call
    returns: between reading the reply's header and reading its rows."""
    pool = mysqlclient_pool
    for attempt in range(2):
        with pytest.raises(exc), pool.connection() as conn:
            with interrupt(0.2, exc):
                one(conn, "SELECT SLEEP(0.4), 'stale' FROM seq_1_to_2")
        with pool.connection() as conn:
            assert one(conn, "SELECT 'mine'") == "mine", attempt
            cur = conn.cursor()
            cur.execute("SELECT seq FROM seq_1_to_3")
            assert [r[0] for r in cur.fetchall()] == [1, 2, 3]
            cur.close()
    assert pool.stats().closed_by_reason.get(INTERRUPTED) == 2
    accounted(pool, db)
