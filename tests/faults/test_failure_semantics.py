"""Failure semantics against a real server with injected faults, for both drivers and both pool
flavours: what is replayed, what is surfaced (and as what), and that no write is ever lost,
duplicated or half-committed behind the caller's back."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import tether
from tether.testing import FaultProxy, MariaDBServer

pytestmark = pytest.mark.faults


def ledger(server: MariaDBServer) -> None:
    server.execute_admin(
        f"CREATE TABLE {server.database}.ledger (id INT PRIMARY KEY, note VARCHAR(32))"
    )


def rows(server: MariaDBServer, where: str = "1") -> int:
    return int(
        server.execute_admin(f"SELECT COUNT(*) FROM {server.database}.ledger WHERE {where}")[0][0]
    )


def run(conn: Any, sql: str, args: Any = None) -> Any:
    cur = conn.cursor()
    cur.execute(sql, args)
    result = cur.fetchall()
    cur.close()
    return result


def session_of(conn: Any) -> int:
    return int(run(conn, "SELECT CONNECTION_ID()")[0][0])


# ----------------------------------------------------------------------------- autocommit


def test_read_after_session_killed_mid_checkout_is_replayed(db: MariaDBServer, pools: Any) -> None:
    pool = pools(db.dsn())
    with pool.connection() as conn:
        first = session_of(conn)
        db.kill_sessions(ids=[first])
        time.sleep(0.1)
        assert session_of(conn) != first  # replayed on a fresh connection, no error
    assert pool.stats()["replays"] == 1


def test_write_after_session_killed_mid_checkout_is_outcome_unknown(
    db: MariaDBServer, pools: Any
) -> None:
    ledger(db)
    pool = pools(db.dsn())
    with pool.connection() as conn:
        db.kill_sessions(ids=[session_of(conn)])
        time.sleep(0.1)
        with pytest.raises(tether.OutcomeUnknown) as info:
            run(conn, "INSERT INTO ledger VALUES (1, 'a')")
        assert isinstance(info.value, pool.driver.OperationalError)
        assert info.value.args[0] in (2006, 2013, 1927)
        # The connection is usable again: replaced before the next statement is sent.
        run(conn, "INSERT INTO ledger VALUES (2, 'b')")
    assert rows(db, "id = 1") <= 1 and rows(db, "id = 2") == 1


def test_idempotent_write_may_be_replayed(db: MariaDBServer, pools: Any) -> None:
    ledger(db)
    pool = pools(db.dsn())
    with pool.connection() as conn:
        db.kill_sessions(ids=[session_of(conn)])
        time.sleep(0.1)
        conn.cursor().execute(
            "INSERT INTO ledger VALUES (1, 'a') ON DUPLICATE KEY UPDATE note = 'a'",
            idempotent=True,
        )
    assert rows(db) == 1


# ----------------------------------------------------------------------------- transactions


def test_disconnect_inside_a_transaction_is_transaction_lost(db: MariaDBServer, pools: Any) -> None:
    ledger(db)
    pool = pools(db.dsn())
    with pool.connection() as conn:
        conn.begin()
        run(conn, "INSERT INTO ledger VALUES (1, 'a')")
        db.kill_sessions(ids=[session_of(conn)])
        time.sleep(0.1)
        with pytest.raises(tether.TransactionLost) as info:
            run(conn, "INSERT INTO ledger VALUES (2, 'b')")
        assert isinstance(info.value, pool.driver.OperationalError)
        assert info.value.args[0] in (2006, 2013, 1927)
    assert rows(db) == 0  # nothing half-committed
    assert pool.stats()["transactions_lost"] == 1
    with pool.connection() as conn:  # the pool is healthy afterwards
        assert run(conn, "SELECT 1")[0][0] == 1


def test_executemany_is_replayed_only_when_nothing_can_repeat(
    db: MariaDBServer, pools: Any
) -> None:
    # A batch of writes on a killed session: the caller hears the outcome is unknown (some
    # rows may have been written), never a silent rerun; a batch of reads is replayed.
    ledger(db)
    pool = pools(db.dsn())
    with pool.connection() as conn:
        cur = conn.cursor()
        for statement, batch in (
            ("INSERT INTO ledger VALUES (%s, %s)", [(1, "a"), (2, "b")]),  # one multi-row INSERT
            ("UPDATE ledger SET note = %s WHERE id = %s", [("x", 1), ("y", 2)]),  # row by row
        ):
            db.kill_sessions(ids=[session_of(conn)])
            time.sleep(0.1)
            with pytest.raises(tether.OutcomeUnknown):
                cur.executemany(statement, batch)
        db.kill_sessions(ids=[session_of(conn)])
        time.sleep(0.1)
        cur.executemany("SELECT %s", [(1,), (2,)])  # read-only: replayed, no error
        cur.close()
    assert rows(db) == 0  # the killed sessions ran nothing
    assert pool.stats()["outcomes_unknown"] == 2 and pool.stats()["replays"] == 1


def test_executemany_inside_a_transaction_is_transaction_lost(
    db: MariaDBServer, pools: Any
) -> None:
    ledger(db)
    pool = pools(db.dsn())
    with pool.connection() as conn:
        session = session_of(conn)
        conn.begin()
        cur = conn.cursor()
        cur.executemany("INSERT INTO ledger VALUES (%s, %s)", [(1, "a"), (2, "b")])
        db.kill_sessions(ids=[session])
        time.sleep(0.1)
        with pytest.raises(tether.TransactionLost):
            cur.executemany("UPDATE ledger SET note = %s WHERE id = %s", [("x", 1), ("y", 2)])
    assert rows(db) == 0


def test_sql_begin_counts_as_a_transaction_too(db: MariaDBServer, pools: Any) -> None:
    ledger(db)
    pool = pools(db.dsn())
    with pool.connection() as conn:
        run(conn, "START TRANSACTION")
        run(conn, "INSERT INTO ledger VALUES (1, 'a')")
        db.kill_sessions(ids=[session_of(conn)])
        time.sleep(0.1)
        with pytest.raises(tether.TransactionLost):
            run(conn, "SELECT * FROM ledger")  # even a read: the transaction is gone
    assert rows(db) == 0


def test_autocommit_off_replays_nothing_inside_a_transaction(db: MariaDBServer, pools: Any) -> None:
    ledger(db)
    pool = pools(db.dsn(), autocommit=False)
    with pool.connection() as conn:
        run(conn, "INSERT INTO ledger VALUES (1, 'a')")
        db.kill_sessions(ids=[session_of(conn)])
        time.sleep(0.1)
        with pytest.raises(tether.TransactionLost):
            run(conn, "INSERT INTO ledger VALUES (2, 'b')")
    with pool.connection() as conn:
        run(conn, "INSERT INTO ledger VALUES (3, 'c')")
        conn.commit()
    assert rows(db) == 1 and rows(db, "id = 3") == 1


def test_autocommit_off_replayed_write_is_not_left_open(db: MariaDBServer, pools: Any) -> None:
    # No transaction open: an INSERT that lost its connection is replayed on a fresh one (the
    # first one's work died with its session). The replay opens a transaction there, which the
    # return must roll back like any other, not leave for the next borrower to commit.
    ledger(db)
    pool = pools(db.dsn(), autocommit=False, max_size=1)
    with pool.connection() as conn:
        first = session_of(conn)
        conn.rollback()
        db.kill_sessions(ids=[first])
        time.sleep(0.1)
        conn.cursor().execute("INSERT INTO ledger VALUES (1, 'a')")  # the last statement
    assert pool.stats()["replays"] == 1
    with pool.connection() as conn:
        run(conn, "INSERT INTO ledger VALUES (2, 'b')")
        conn.commit()
    assert rows(db, "id = 1") == 0 and rows(db, "id = 2") == 1


def test_lost_commit_reply_is_outcome_unknown(
    db: MariaDBServer, pools: Any, fault_proxy: Callable[[MariaDBServer], FaultProxy]
) -> None:
    ledger(db)
    proxy = fault_proxy(db)
    pool = pools(db.dsn(host=proxy.host, port=proxy.port), watchdog=None)
    with pool.connection() as conn:
        conn.begin()
        run(conn, "INSERT INTO ledger VALUES (1, 'a')")
        proxy.lose_next_reply(b"COMMIT")
        with pytest.raises(tether.OutcomeUnknown) as info:
            conn.commit()
        assert "COMMIT" in str(info.value)
    assert rows(db) == 1  # it did commit: the caller was told it might have


def test_transaction_context_commits_and_rolls_back(db: MariaDBServer, pools: Any) -> None:
    ledger(db)
    pool = pools(db.dsn())
    with pool.transaction() as conn:
        run(conn, "INSERT INTO ledger VALUES (1, 'a')")
    with pytest.raises(RuntimeError), pool.transaction() as conn:
        run(conn, "INSERT INTO ledger VALUES (2, 'b')")
        raise RuntimeError("changed my mind")
    assert rows(db) == 1


def test_run_transaction_retries_a_disconnect_before_commit(db: MariaDBServer, pools: Any) -> None:
    ledger(db)
    pool = pools(db.dsn())
    attempts = []

    def transfer(conn: Any) -> str:
        attempts.append(1)
        run(conn, "INSERT INTO ledger VALUES (1, 'a')")
        if len(attempts) == 1:
            db.kill_sessions(ids=[session_of(conn)])
            time.sleep(0.1)
        run(conn, "INSERT INTO ledger VALUES (2, 'b')")
        return "done"

    assert pool.run_transaction(transfer) == "done"
    assert len(attempts) == 2
    assert rows(db) == 2  # exactly once each
    assert pool.stats()["transaction_retries"] == 1


def test_run_transaction_retries_deadlocks(db: MariaDBServer, pools: Any) -> None:
    ledger(db)
    db.execute_admin(f"INSERT INTO {db.database}.ledger VALUES (1, 'x'), (2, 'y')")
    pool = pools(db.dsn(), max_size=4)
    barrier = threading.Barrier(2, timeout=10)
    results: list[Any] = []

    def worker(first: int, second: int) -> None:
        calls = []

        def fn(conn: Any) -> None:
            calls.append(1)
            run(conn, "UPDATE ledger SET note = 'w' WHERE id = %s", (first,))
            if len(calls) == 1:
                barrier.wait()
            run(conn, "UPDATE ledger SET note = 'w' WHERE id = %s", (second,))

        try:
            pool.run_transaction(fn, attempts=5)
            results.append(len(calls))
        except BaseException as exc:
            results.append(exc)

    threads = [threading.Thread(target=worker, args=a) for a in ((1, 2), (2, 1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(isinstance(r, int) for r in results), results
    assert sorted(results)[-1] >= 2  # one of them hit the deadlock and ran again
    assert rows(db, "note = 'w'") == 2


def test_run_transaction_never_retries_a_lost_commit(
    db: MariaDBServer, pools: Any, fault_proxy: Callable[[MariaDBServer], FaultProxy]
) -> None:
    ledger(db)
    proxy = fault_proxy(db)
    pool = pools(db.dsn(host=proxy.host, port=proxy.port), watchdog=None)
    calls = []

    def fn(conn: Any) -> None:
        calls.append(1)
        run(conn, "INSERT INTO ledger VALUES (%s, 'a')", (len(calls),))
        proxy.lose_next_reply(b"COMMIT")

    with pytest.raises(tether.OutcomeUnknown):
        pool.run_transaction(fn, attempts=3)
    assert len(calls) == 1
    assert rows(db) == 1


# ----------------------------------------------------------------------------- outages and caps


def hammer(
    pool: tether.Pool, threads: int, seconds: float, body: Callable[[Any, int], None]
) -> list[BaseException]:
    """Run ``body`` from several threads for a bounded time; return the errors they saw."""
    errors: list[BaseException] = []
    stop = time.monotonic() + seconds

    def loop(n: int) -> None:
        i = 0
        while time.monotonic() < stop and i < 100_000:
            i += 1
            try:
                with pool.connection() as conn:
                    body(conn, n * 1_000_000 + i)
            except BaseException as exc:
                errors.append(exc)
            time.sleep(0.005)

    workers = [threading.Thread(target=loop, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(seconds + 60)
    return errors


@pytest.mark.slow
@pytest.mark.parametrize("how", ["restart", "kill9"])
def test_reads_across_a_server_restart_see_no_error(
    mariadb_factory: Callable[..., MariaDBServer], pools: Any, how: str
) -> None:
    server = mariadb_factory()
    pool = pools(server.dsn(), max_size=8, timeout=20)

    def fault() -> None:
        time.sleep(1.0)
        if how == "restart":
            server.restart(down=2.0)
        else:
            server.kill9()
            time.sleep(2.0)
            server.start()

    injector = threading.Thread(target=fault)
    injector.start()
    errors = hammer(pool, 8, 6.0, lambda conn, i: run(conn, "SELECT %s", (i,)))
    injector.join(60)
    assert errors == []
    # Recovered: requests succeed at once once the server is back.
    start = time.monotonic()
    with pool.connection() as conn:
        run(conn, "SELECT 1")
    assert time.monotonic() - start < 1.0
    assert pool.stats()["connect_errors"] >= 1


@pytest.mark.slow
def test_a_connection_cap_below_the_thread_count_is_backpressure(
    db: MariaDBServer, pools: Any
) -> None:
    db.create_user("capped", "capped-pw", max_user_connections=4)
    pool = pools(db.dsn(user="capped", password="capped-pw"), max_size=8, timeout=20)
    peak: list[dict[str, Any]] = []
    stop = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not stop.is_set():
            # Sessions that hold a slot of the cap: not one still logging in (the server
            # lists it under the user before refusing it) nor one on its way out.
            rows = [
                row
                for row in db.processlist("capped")
                if row["COMMAND"] not in ("Connect", "Quit", "Killed")
            ]
            if len(rows) > len(peak):
                peak = rows
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    # Each request holds its connection for 20 ms: 8 threads want more than the 4 the cap
    # allows at any moment, whatever the speed of a check-out.
    errors = hammer(pool, 8, 3.0, lambda conn, i: run(conn, "SELECT SLEEP(0.02), %s", (i,)))
    stop.set()
    watcher.join()
    assert errors == []
    assert len(peak) <= 4, peak
    assert pool.stats()["capacity_errors"] >= 1


def test_timeout_at_a_cap_names_the_cap(db: MariaDBServer, pools: Any) -> None:
    db.create_user("capped", "capped-pw", max_user_connections=1)
    pool = pools(db.dsn(user="capped", password="capped-pw"), max_size=4, timeout=1.0)
    held = pool.connection()
    with pytest.raises(tether.PoolTimeout) as info:
        pool.connection()
    assert "1226" in str(info.value) and "capped-pw" not in str(info.value)
    held.close()


# ----------------------------------------------------------------------------- silent drops


@pytest.mark.slow
def test_blackhole_is_broken_by_the_watchdog_and_the_pool_recovers(
    db: MariaDBServer, pools: Any, fault_proxy: Callable[[MariaDBServer], FaultProxy]
) -> None:
    proxy = fault_proxy(db)
    pool = pools(
        db.dsn(host=proxy.host, port=proxy.port),
        watchdog=3.0,
        maintenance_interval=0.5,
        timeout=5,
        connect_timeout=2,
    )
    with pool.connection() as conn:
        run(conn, "SELECT 1")
    outcome: list[Any] = []

    def stuck_read() -> None:
        start = time.monotonic()
        try:
            with pool.connection() as conn:
                run(conn, "SELECT 2")
            outcome.append(("ok", time.monotonic() - start))
        except Exception as exc:
            outcome.append((exc, time.monotonic() - start))

    proxy.blackhole()
    t = threading.Thread(target=stuck_read)
    t.start()
    t.join(15)
    assert not t.is_alive(), "a read hung through the blackhole"
    exc, stalled = outcome[0]
    assert stalled <= 10
    # Either the stuck read was broken by the watchdog, or (a thread-mapped pool opening a
    # connection of its own) the connect timed out and the checkout deadline passed.
    assert isinstance(exc, Exception)
    assert "watchdog" in str(exc) or isinstance(exc, tether.PoolTimeout)
    proxy.pass_through()
    start = time.monotonic()
    with pool.connection() as conn:
        assert run(conn, "SELECT 3")[0][0] == 3
    assert time.monotonic() - start < 1.0


@pytest.mark.slow
def test_a_long_query_on_a_healthy_server_is_not_interrupted(db: MariaDBServer, pools: Any) -> None:
    pool = pools(db.dsn(), watchdog=1.0, maintenance_interval=0.25)
    with pool.connection() as conn:
        assert run(conn, "SELECT SLEEP(4)")[0][0] == 0
    assert pool.stats()["watchdog_breaks"] == 0


def test_read_only_server_evicts_the_connection(db: MariaDBServer, pools: Any) -> None:
    ledger(db)
    pool = pools(db.dsn())
    with pool.connection() as conn:
        first = session_of(conn)
    db.set_global("read_only", 1)
    with pool.connection() as conn:
        with pytest.raises(pool.driver.Error) as info:
            run(conn, "INSERT INTO ledger VALUES (1, 'a')")
        assert info.value.args[0] == 1290
    db.set_global("read_only", 0)
    with pool.connection() as conn:
        assert session_of(conn) != first  # evicted, not reused
