"""AsyncPool against a private MariaDB, both asyncio drivers: the behaviour suite under faults
(idle past ``wait_timeout``, KILL, restart, kill -9, a cap below the task count, blackhole,
kill inside a transaction, a lost COMMIT reply) and cancellation (while waiting, querying,
fetching; ``asyncio.timeout()`` around a long query) with the server's process list checked:
no session left behind."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import pytest

import tether
from tether.testing import FaultProxy, MariaDBServer

pytestmark = pytest.mark.faults

T = TypeVar("T")
ASYNC_DRIVERS = ("asyncmy", "aiomysql")


@pytest.fixture(params=ASYNC_DRIVERS)
def adriver(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    pytest.importorskip(name)
    return name


def run(coro: Coroutine[Any, Any, T], *, uvloop: bool = False) -> T:
    """Run a test's coroutine on a fresh loop (uvloop's where asked)."""
    if uvloop:
        mod = pytest.importorskip("uvloop")
        with asyncio.Runner(loop_factory=mod.new_event_loop) as runner:
            return runner.run(coro)
    return asyncio.run(coro)


async def one(conn: Any, sql: str, args: Any = None) -> Any:
    cur = conn.cursor()
    await cur.execute(sql, args)
    row = await cur.fetchone()
    await cur.close()
    return row[0] if row else None


def ledger(server: MariaDBServer) -> None:
    server.execute_admin(
        f"CREATE TABLE {server.database}.ledger (id INT PRIMARY KEY, note VARCHAR(32))"
    )


def rows(server: MariaDBServer, where: str = "1") -> int:
    return int(
        server.execute_admin(f"SELECT COUNT(*) FROM {server.database}.ledger WHERE {where}")[0][0]
    )


def sessions(server: MariaDBServer) -> list[dict[str, Any]]:
    """The application user's sessions still on the server (not the ones on their way out)."""
    return [r for r in server.processlist(server.user) if r["COMMAND"] not in ("Killed",)]


async def no_sessions_soon(server: MariaDBServer, seconds: float = 3.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + seconds
    left = sessions(server)
    while left and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        left = sessions(server)
    return left


async def hammer(
    pool: tether.AsyncPool, tasks: int, seconds: float, body: Callable[[Any, int], Awaitable[None]]
) -> list[BaseException]:
    """Run ``body`` from several tasks for a bounded time; return the errors they saw."""
    errors: list[BaseException] = []
    stop = time.monotonic() + seconds

    async def loop(n: int) -> None:
        for i in range(100_000):
            if time.monotonic() >= stop:
                break
            try:
                async with pool.connection() as conn:
                    await body(conn, n * 1_000_000 + i)
            except Exception as exc:
                errors.append(exc)
            await asyncio.sleep(0.005)

    await asyncio.wait_for(asyncio.gather(*(loop(n) for n in range(tasks))), seconds + 60)
    return errors


# ----------------------------------------------------------------------------- behaviour


def test_queries_transactions_and_stats(db: MariaDBServer, adriver: str) -> None:
    ledger(db)

    async def main() -> None:
        async with tether.AsyncPool(db.dsn(), driver=adriver, max_size=4) as pool:
            async with pool.connection() as conn:
                assert await one(conn, "SELECT 1 + %s", (1,)) == 2
                assert await one(conn, "SELECT @@autocommit") == 1
            async with pool.transaction() as conn:
                await conn.cursor().execute("INSERT INTO ledger VALUES (1, 'a')")
            with pytest.raises(RuntimeError):
                async with pool.transaction() as conn:
                    await conn.cursor().execute("INSERT INTO ledger VALUES (2, 'b')")
                    raise RuntimeError("changed my mind")

            async def fn(conn: Any) -> str:
                await conn.cursor().execute("INSERT INTO ledger VALUES (3, 'c')")
                return "done"

            assert await pool.run_transaction(fn) == "done"
            async with pool.connection() as conn:
                await conn.cursor().execute("SET @secret = 42")
            async with pool.connection() as conn:  # the session was reset on return
                assert await one(conn, "SELECT @secret") is None
            stats = pool.stats()
            assert stats.server["wait_timeout"] > 0 and stats.in_use == 0
            assert stats["resets"] == 1 and stats["pings"] == 0
            assert "app-secret" not in repr(pool)
        assert await no_sessions_soon(db) == []

    run(main())
    assert rows(db) == 2 and rows(db, "id = 2") == 0


def test_uvloop(db: MariaDBServer, adriver: str) -> None:
    async def main() -> None:
        async with tether.AsyncPool(db.dsn(), driver=adriver) as pool:
            results = await asyncio.gather(*(query(pool, i) for i in range(20)))
            assert results == list(range(20))

    async def query(pool: tether.AsyncPool, i: int) -> Any:
        async with pool.connection() as conn:
            return await one(conn, "SELECT %s", (i,))

    run(main(), uvloop=True)


def test_a_transport_closed_under_its_holder_on_uvloop_is_a_lost_connection(
    db: MariaDBServer, adriver: str
) -> None:
    """Under uvloop a write on a closed transport raises ``RuntimeError`` (aiomysql passes it
    on). A connection whose transport the peer closed while it was held (a reset between two
    statements) is a lost one: the next read is replayed on a fresh connection, not failed
    with the loop's error."""

    async def main() -> None:
        async with tether.AsyncPool(db.dsn(), driver=adriver, watchdog=None) as pool:
            async with pool.connection() as conn:
                assert await one(conn, "SELECT 1") == 1
                lease = conn._lease
                assert lease is not None and lease.entry is not None
                pool.driver.transport(lease.entry.raw).abort()  # as a peer's reset does
                await asyncio.sleep(0.01)
                assert await one(conn, "SELECT 2") == 2
            assert pool.stats().counters.replays == 1

    run(main(), uvloop=True)


def test_idle_past_wait_timeout_and_kill_are_never_seen(db: MariaDBServer, adriver: str) -> None:
    db.set_global("wait_timeout", 2)

    async def main() -> None:
        async with tether.AsyncPool(db.dsn(), driver=adriver, keepalive=None) as pool:
            async with pool.connection() as conn:
                first = await one(conn, "SELECT CONNECTION_ID()")
            assert pool.lifetimes.max_lifetime is not None and pool.lifetimes.max_lifetime < 2
            await asyncio.sleep(3)
            async with pool.connection() as conn:  # no error reaches the caller
                second = await one(conn, "SELECT CONNECTION_ID()")
            assert second != first
            db.kill_sessions(ids=[second])
            await asyncio.sleep(0.1)
            async with pool.connection() as conn:  # killed while idle: replaced silently
                assert await one(conn, "SELECT CONNECTION_ID()") not in (first, second)
                third = await one(conn, "SELECT CONNECTION_ID()")
                db.kill_sessions(ids=[third])
                await asyncio.sleep(0.1)
                assert await one(conn, "SELECT 7") == 7  # killed mid-check-out: replayed
            assert pool.stats()["replays"] == 1

    run(main())


def test_writes_and_transactions_after_a_kill(db: MariaDBServer, adriver: str) -> None:
    ledger(db)

    async def main() -> None:
        async with tether.AsyncPool(db.dsn(), driver=adriver) as pool:
            async with pool.connection() as conn:
                db.kill_sessions(ids=[await one(conn, "SELECT CONNECTION_ID()")])
                await asyncio.sleep(0.1)
                # asyncmy sees the closed transport and refuses to send: provably never sent,
                # so replayed; aiomysql sends into the dead socket: outcome unknown.
                try:
                    await conn.cursor().execute("INSERT INTO ledger VALUES (1, 'a')")
                    assert pool.stats()["replays"] == 1
                except tether.OutcomeUnknown as exc:
                    assert isinstance(exc, pool.driver.OperationalError)
                await conn.cursor().execute("INSERT INTO ledger VALUES (2, 'b')")  # fresh one
            async with pool.connection() as conn:
                await conn.begin()
                await conn.cursor().execute("INSERT INTO ledger VALUES (3, 'c')")
                db.kill_sessions(ids=[await one(conn, "SELECT CONNECTION_ID()")])
                await asyncio.sleep(0.1)
                with pytest.raises(tether.TransactionLost) as lost:
                    await conn.cursor().execute("INSERT INTO ledger VALUES (4, 'd')")
                assert isinstance(lost.value, pool.driver.OperationalError)
                await conn.rollback()
            assert pool.stats()["transactions_lost"] == 1

    run(main())
    assert rows(db, "id = 1") <= 1 and rows(db, "id = 2") == 1 and rows(db, "id >= 3") == 0


def test_a_lost_commit_reply_is_outcome_unknown(
    db: MariaDBServer, adriver: str, fault_proxy: Callable[[MariaDBServer], FaultProxy]
) -> None:
    ledger(db)
    proxy = fault_proxy(db)

    async def main() -> None:
        dsn = db.dsn(host=proxy.host, port=proxy.port)
        async with tether.AsyncPool(dsn, driver=adriver, watchdog=None) as pool:
            calls = []

            async def fn(conn: Any) -> None:
                calls.append(1)
                await conn.cursor().execute("INSERT INTO ledger VALUES (1, 'a')")
                proxy.lose_next_reply(b"COMMIT")

            with pytest.raises(tether.OutcomeUnknown) as info:
                await pool.run_transaction(fn, attempts=3)
            assert "COMMIT" in str(info.value) and len(calls) == 1

    run(main())
    assert rows(db) == 1  # it did commit: the caller was told it might have


@pytest.mark.slow
@pytest.mark.parametrize("how", ["restart", "kill9"])
def test_reads_across_a_server_restart_see_no_error(
    mariadb_factory: Callable[..., MariaDBServer], adriver: str, how: str
) -> None:
    server = mariadb_factory()

    async def fault() -> None:
        await asyncio.sleep(1.0)
        if how == "restart":
            await asyncio.to_thread(server.restart, 2.0)
        else:
            server.kill9()
            await asyncio.sleep(2.0)
            await asyncio.to_thread(server.start)

    async def main() -> None:
        async with tether.AsyncPool(server.dsn(), driver=adriver, max_size=8, timeout=20) as pool:
            injector = asyncio.ensure_future(fault())
            errors = await hammer(pool, 8, 6.0, lambda c, i: one(c, "SELECT %s", (i,)))
            await injector
            assert errors == []
            start = time.monotonic()
            async with pool.connection() as conn:
                await one(conn, "SELECT 1")
            assert time.monotonic() - start < 1.0
            assert pool.stats()["connect_errors"] >= 1

    run(main())


@pytest.mark.slow
def test_a_cap_below_the_task_count_is_backpressure(db: MariaDBServer, adriver: str) -> None:
    db.create_user("capped", "capped-pw", max_user_connections=4)
    peak: list[int] = [0]

    async def watch(stop: asyncio.Event) -> None:
        while not stop.is_set():
            found = await asyncio.to_thread(db.processlist, "capped")
            live = [r for r in found if r["COMMAND"] not in ("Connect", "Quit", "Killed")]
            peak[0] = max(peak[0], len(live))
            await asyncio.sleep(0.02)

    async def main() -> None:
        dsn = db.dsn(user="capped", password="capped-pw")
        async with tether.AsyncPool(dsn, driver=adriver, max_size=8, timeout=20) as pool:
            stop = asyncio.Event()
            watcher = asyncio.ensure_future(watch(stop))
            errors = await hammer(
                pool, 16, 3.0, lambda c, i: one(c, "SELECT SLEEP(0.02), %s", (i,))
            )
            stop.set()
            await watcher
            assert errors == []
            assert pool.stats()["capacity_errors"] >= 1

    run(main())
    assert peak[0] <= 4


@pytest.mark.slow
def test_blackhole_is_broken_by_the_watchdog_and_the_pool_recovers(
    db: MariaDBServer, adriver: str, fault_proxy: Callable[[MariaDBServer], FaultProxy]
) -> None:
    proxy = fault_proxy(db)

    async def main() -> None:
        dsn = db.dsn(host=proxy.host, port=proxy.port)
        options: dict[str, Any] = {
            "watchdog": 2.0,
            "maintenance_interval": 0.5,
            "timeout": 5,
            "connect_timeout": 2,
        }
        async with tether.AsyncPool(dsn, driver=adriver, **options) as pool:
            async with pool.connection() as conn:
                await one(conn, "SELECT 1")
            proxy.blackhole()
            start = time.monotonic()
            with pytest.raises(pool.driver.OperationalError) as info:
                async with pool.connection() as conn:
                    await one(conn, "SELECT 2")
            assert time.monotonic() - start <= 8
            assert "watchdog" in str(info.value)
            proxy.pass_through()
            start = time.monotonic()
            async with pool.connection() as conn:
                assert await one(conn, "SELECT 3") == 3
            assert time.monotonic() - start < 1.0
            assert pool.stats()["watchdog_breaks"] >= 1

    run(main())


# ----------------------------------------------------------------------------- cancellation


def test_cancelled_queries_and_fetches_leave_no_session(db: MariaDBServer, adriver: str) -> None:
    ledger(db)
    db.execute_admin(f"CREATE TABLE {db.database}.big (id INT PRIMARY KEY)")
    values = ", ".join(f"({i})" for i in range(500))
    db.execute_admin(f"INSERT INTO {db.database}.big VALUES {values}")

    async def main() -> None:
        async with tether.AsyncPool(db.dsn(), driver=adriver, max_size=2) as pool:
            # asyncio.timeout() around a long query: the session is killed, not left running.
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.3), pool.connection() as conn:
                    await one(conn, "SELECT SLEEP(30)")
            assert await no_sessions_soon(db) == []
            # A task cancelled while it streams a result.
            started = asyncio.Event()

            async def stream() -> None:
                async with pool.connection() as conn:
                    cur = conn.cursor(pool.driver.module.cursors.SSCursor)
                    await cur.execute("SELECT id, REPEAT('x', 40000), SLEEP(0.005) FROM big")
                    await cur.fetchone()
                    started.set()
                    while await cur.fetchone() is not None:
                        pass

            task = asyncio.ensure_future(stream())
            await asyncio.wait_for(started.wait(), 10)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await no_sessions_soon(db) == []
            # A write cancelled after it was sent: outcome unknown, counted.
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.3), pool.connection() as conn:
                    await conn.cursor().execute("INSERT INTO ledger SELECT 1, SLEEP(1) FROM DUAL")
            assert pool.stats()["outcomes_unknown"] == 1
            # The pool serves at once, all slots back.
            async with pool.connection() as a, pool.connection() as b:
                assert await one(a, "SELECT 1") == await one(b, "SELECT 1") == 1
            assert pool.stats().size <= 2

    run(main())


def test_cancelled_while_waiting_loses_no_slot(db: MariaDBServer, adriver: str) -> None:
    async def main() -> None:
        async with tether.AsyncPool(db.dsn(), driver=adriver, max_size=1) as pool:
            held = await pool.connection()
            waiters = [asyncio.ensure_future(pool.connection()) for _ in range(5)]
            await asyncio.sleep(0.05)
            assert pool.stats().waiting == 5
            for w in waiters[:4]:
                w.cancel()
            await held.close()
            conn = await asyncio.wait_for(waiters[4], 5)
            assert await one(conn, "SELECT 1") == 1
            await conn.close()
            stats = pool.stats()
            assert stats.waiting == 0 and stats.in_use == 0 and stats.size == 1
            for w in waiters[:4]:
                assert w.cancelled()
        assert await no_sessions_soon(db) == []

    run(main())


def test_cancelled_give_back_and_close_leave_no_session(db: MariaDBServer, adriver: str) -> None:
    async def main() -> None:
        pool = tether.AsyncPool(db.dsn(), driver=adriver, max_size=2)
        conn = await pool.connection()
        await conn.begin()
        await conn.cursor().execute("SELECT 1")
        give_back = asyncio.ensure_future(conn.close())  # needs a ROLLBACK round trip
        await asyncio.sleep(0)
        give_back.cancel()
        with pytest.raises(asyncio.CancelledError):
            await give_back
        assert pool.stats().size == 0  # closed, not handed out again
        async with pool.connection() as again:
            await one(again, "SELECT 1")
        closing = asyncio.ensure_future(pool.close())
        await asyncio.sleep(0)
        closing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await closing
        assert await no_sessions_soon(db) == []

    run(main())


def test_bad_credentials_and_an_unreachable_server_fail_fast(
    db: MariaDBServer, adriver: str
) -> None:
    async def main() -> None:
        bad = db.dsn(user=db.user, password="wrong-pw")
        async with tether.AsyncPool(bad, driver=adriver, timeout=20) as pool:
            start = time.monotonic()
            with pytest.raises(pool.driver.OperationalError) as info:
                await pool.connection()
            assert info.value.args[0] == 1045 and time.monotonic() - start < 5
            assert "wrong-pw" not in str(info.value) + repr(pool)
        nowhere = "mysql://app:pw@127.0.0.1:1/app"  # nothing listens on port 1
        async with tether.AsyncPool(nowhere, driver=adriver, timeout=1.0) as pool:
            start = time.monotonic()
            with pytest.raises(tether.PoolTimeout) as timeout:
                await pool.connection()
            assert time.monotonic() - start < 5
            assert "last connect error" in str(timeout.value)

    run(main())
