"""AsyncPool logic with the fake async driver: construction, the loop it belongs to, the hot
path (no round trip), cancellation outcomes, leaks, forks."""

from __future__ import annotations

import asyncio
import gc
import os
from typing import Any

import pytest

import tether
from tether.aio.drivers import resolve_async_driver
from tether.dsn import parse_dsn

from .asyncfake import FakeAsyncDriver

DSN = "mysql://app:s3cret-pw@127.0.0.1:3306/app"


def pool(fake: FakeAsyncDriver | None = None, **options: Any) -> tether.AsyncPool:
    options.setdefault("watchdog", None)
    return tether.AsyncPool(DSN, driver=fake or FakeAsyncDriver(), **options)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_size": 0}, "max_size"),
        ({"timeout": -1}, "timeout"),
        ({"min_size": 3, "max_size": 2}, "min_size"),
        ({"max_sizes": 2}, "unknown pool option"),
        ({"connect_args": {"password": "x"}}, "put it in the DSN"),
        ({"connect_args": {"nonsense": 1}}, "does not take"),
    ],
)
def test_bad_options_are_clear_errors_at_construction(options: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pool(**options)


def test_driver_names_and_schemes() -> None:
    with pytest.raises(ValueError, match="asyncmy"):
        tether.AsyncPool(DSN, driver="pymysql")
    with pytest.raises(ValueError, match="threaded driver"):
        tether.AsyncPool("mysql+pymysql://u:p@h/db")
    with pytest.raises(ValueError, match="AsyncPool"):
        tether.Pool("mysql+asyncmy://u:p@h/db")
    assert resolve_async_driver(None, parse_dsn("mysql+aiomysql://u:p@h/db")).name == "aiomysql"
    assert resolve_async_driver("asyncmy", parse_dsn("mysql://u:p@h/db")).name == "asyncmy"


def test_the_password_is_never_shown() -> None:
    p = pool()
    assert "s3cret-pw" not in repr(p) and "***" in repr(p)
    assert "s3cret-pw" not in str(p.stats())


def test_a_trusted_check_out_and_query_never_round_trip() -> None:
    async def main() -> None:
        fake = FakeAsyncDriver()
        p = pool(fake)
        for _ in range(3):
            async with p.connection() as conn:
                cur = conn.cursor()
                await cur.execute("SELECT 1")
                assert await cur.fetchone() == (1,)
        (raw,) = fake.connections
        # the set-up, the server's limits, then the three SELECTs: no ping, no rollback
        assert raw.pings == 0
        assert [s for s in raw.statements if s == "SELECT 1"] == ["SELECT 1"] * 3
        assert not any(s.startswith(("ROLLBACK", "<")) for s in raw.statements)
        assert p.stats()["checkouts"] == 3
        await p.close()

    asyncio.run(main())


def test_a_pool_belongs_to_one_loop() -> None:
    p = pool()

    async def use() -> None:
        async with p.connection() as conn:
            await (conn.cursor()).execute("SELECT 1")

    asyncio.run(use())
    with pytest.raises(RuntimeError, match="another event loop"):
        asyncio.run(use())


def test_a_write_cancelled_in_flight_is_counted_as_outcome_unknown_and_killed() -> None:
    async def main() -> None:
        fake = FakeAsyncDriver()
        p = pool(fake)
        async with p.connection() as conn:
            await conn.cursor().execute("SELECT 1")
        (raw,) = fake.connections

        async def write() -> None:
            async with p.connection() as conn:
                await conn.cursor().execute("UPDATE t SET n = n + 1")

        task = asyncio.ensure_future(write())
        await asyncio.sleep(0)  # sent, waiting for the reply
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await p._connector.settle(5)
        counters = p.stats().counters
        assert counters.outcomes_unknown == 1 and counters.interrupted == 1
        assert raw.closed and fake.killed == [raw.id]  # its session ended on the server
        assert p.stats().size == 0
        await p.close()

    asyncio.run(main())


def test_a_read_cancelled_by_a_timeout_is_not_an_unknown_outcome() -> None:
    async def main() -> None:
        fake = FakeAsyncDriver()
        p = pool(fake)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0), p.connection() as conn:
                await conn.cursor().execute("SELECT 1")
        assert p.stats().counters.outcomes_unknown == 0
        async with p.connection() as conn:  # the pool serves at once
            await conn.cursor().execute("SELECT 1")
        await p.close()

    asyncio.run(main())


def test_a_connection_dropped_without_give_back_is_reported_and_reclaimed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        fake = FakeAsyncDriver()
        p = pool(fake, max_size=1, timeout=1)
        conn = await p.connection()
        await conn.cursor().execute("SELECT 1")
        del conn
        gc.collect()
        async with p.connection() as again:
            await again.cursor().execute("SELECT 1")
        assert p.stats()["reclaimed"] == 1
        await p.close()

    asyncio.run(main())
    assert "garbage-collected without being returned" in caplog.text
    assert "test_async_pool_logic.py" in caplog.text  # where it was acquired


def test_a_timeout_names_who_holds_the_connections() -> None:
    async def main() -> None:
        p = pool(max_size=1)

        async def hold() -> None:
            async with p.connection():
                await asyncio.sleep(0.5)

        holder = asyncio.ensure_future(hold(), loop=None)
        holder.set_name("the-holder")
        await asyncio.sleep(0.01)
        with pytest.raises(tether.PoolTimeout) as info:
            await p.connection(timeout=0.05)
        assert "the-holder" in str(info.value) and "s3cret-pw" not in str(info.value)
        await holder
        await p.close()

    asyncio.run(main())


def test_leaks_are_reported_with_where_they_were_acquired(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        p = pool(leak_timeout=0.05)
        conn = await p.connection()
        await asyncio.sleep(0.1)
        await p._housekeeper.maintain()
        await conn.close()
        assert p.stats()["leaks"] == 1
        await p.close()

    asyncio.run(main())
    assert "possible leak" in caplog.text and "in main" in caplog.text


def test_waiters_are_served_first_come_first_served() -> None:
    async def main() -> None:
        p = pool(max_size=2)
        order: list[int] = []

        async def one(n: int) -> None:
            async with p.connection() as conn:
                await conn.cursor().execute("SELECT 1")
                order.append(n)
                await asyncio.sleep(0.01)

        await asyncio.gather(*(one(n) for n in range(8)))
        assert sorted(order) == list(range(8))
        assert p.stats().size <= 2 and p.stats()["waits"] >= 1
        await p.close()

    asyncio.run(main())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_never_uses_the_parents_connections() -> None:
    async def parent() -> tuple[tether.AsyncPool, FakeAsyncDriver]:
        fake = FakeAsyncDriver()
        p = pool(fake)
        async with p.connection() as conn:
            await conn.cursor().execute("SELECT 1")
        return p, fake

    p, fake = asyncio.run(parent())
    (raw,) = fake.connections
    sent_before = len(raw.statements)
    pid = os.fork()
    if pid == 0:  # the child: a fresh loop, fresh connections
        code = 1
        try:

            async def child() -> None:
                async with p.connection() as conn:
                    await conn.cursor().execute("SELECT 2")

            asyncio.run(child())
            code = 0 if len(fake.connections) == 2 and len(raw.statements) == sent_before else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert not raw.closed  # the parent's connection was left alone


def test_prometheus_exports_an_async_pool() -> None:
    prometheus = pytest.importorskip("prometheus_client")
    from tether.contrib.prometheus import register

    async def main() -> None:
        p = pool(name="exported")
        async with p.connection() as conn:
            await conn.cursor().execute("SELECT 1")
        registry = prometheus.CollectorRegistry()
        register(p, registry)
        value = registry.get_sample_value("tether_pool_checkouts_total", {"pool": "exported"})
        assert value == 1.0
        await p.close()

    asyncio.run(main())


@pytest.mark.parametrize("how", ["lost", "cancelled"])
def test_a_streamed_result_on_a_lost_connection_reads_nothing_more(how: str) -> None:
    """A streaming cursor whose connection was lost (or whose fetch was cut short, leaving it
    out of step with the server) reads nothing more: a fetch says the result is gone, closing
    drains nothing (no read that could hang or mask the first error); the connection is
    closed when it goes back, as with the threaded proxy."""

    async def main() -> None:
        fake = FakeAsyncDriver()
        p = pool(fake)
        sscursor = fake.module.cursors.SSCursor
        async with p.connection() as conn:
            cur = conn.cursor(sscursor)
            await cur.execute("SELECT n FROM big")
            assert await cur.fetchone() == (1,)
            (raw,) = fake.connections
            if how == "lost":
                raw.drop()
                with pytest.raises(fake.OperationalError):
                    await cur.fetchone()
            else:
                task = asyncio.ensure_future(cur.fetchone())
                await asyncio.sleep(0)  # waiting for the rows
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            with pytest.raises(fake.OperationalError, match="can no longer be read"):
                await cur.fetchone()
            await cur.close()  # nothing read, nothing raised
            assert raw.drains == 0
        assert raw.closed and p.stats().size == 0
        await p.close()

    asyncio.run(main())
