"""A transaction whose BEGIN lost its connection, on the first try and on its one replay (a
fault that takes sessions one after another: a KILL of every session, a restart), never
started: nothing of it ran. ``run_transaction`` reruns it, as it reruns any transaction lost
before COMMIT was sent; ``pool.transaction()`` says :class:`tether.TransactionLost` (still
the driver's ``OperationalError``, with its errno), never a bare error of unknown meaning.
Both pool flavours, with the fake drivers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import tether

from .asyncfake import FakeAsyncDriver
from .fakedriver import FakeDriver, FakeOperationalError

DSN = "mysql://app:pw@127.0.0.1:3306/app"


def threaded_pool(fake: FakeDriver) -> tether.Pool:
    return tether.Pool(DSN, driver=fake, watchdog=None, keepalive=None)


def async_pool(fake: FakeAsyncDriver) -> tether.AsyncPool:
    return tether.AsyncPool(DSN, driver=fake, watchdog=None)


def test_run_transaction_reruns_a_transaction_whose_begin_was_lost_twice() -> None:
    fake = FakeDriver()
    fake.lose_at[:] = ["BEGIN", "BEGIN"]  # the first try and its replay
    pool = threaded_pool(fake)

    def work(conn: Any) -> int:
        conn.cursor().execute("INSERT INTO t VALUES (1)")
        return 7

    assert pool.run_transaction(work) == 7
    counters = pool.stats().counters
    assert counters.replays == 1 and counters.transaction_retries == 1
    inserts = [s for c in fake.connections for s in c.statements if s.startswith("INSERT")]
    assert inserts == ["INSERT INTO t VALUES (1)"]  # once, on the third connection
    pool.close()


def test_a_transaction_whose_begin_was_lost_twice_is_a_lost_transaction() -> None:
    fake = FakeDriver()
    fake.lose_at[:] = ["BEGIN", "BEGIN"]
    pool = threaded_pool(fake)
    with pytest.raises(tether.TransactionLost, match="BEGIN") as info:
        with pool.transaction():
            raise AssertionError("the block must not run")
    assert isinstance(info.value, FakeOperationalError) and info.value.args[0] == 2013
    pool.close()


def test_async_run_transaction_reruns_a_transaction_whose_begin_was_lost_twice() -> None:
    async def main() -> None:
        fake = FakeAsyncDriver()
        fake.lose_at[:] = ["BEGIN", "BEGIN"]
        pool = async_pool(fake)

        async def work(conn: Any) -> int:
            await conn.cursor().execute("INSERT INTO t VALUES (1)")
            return 7

        assert await pool.run_transaction(work) == 7
        counters = pool.stats().counters
        assert counters.replays == 1 and counters.transaction_retries == 1
        inserts = [s for c in fake.connections for s in c.statements if s.startswith("INSERT")]
        assert inserts == ["INSERT INTO t VALUES (1)"]
        fake.lose_at[:] = ["BEGIN", "BEGIN"]
        with pytest.raises(tether.TransactionLost, match="BEGIN"):
            async with pool.transaction():
                raise AssertionError("the block must not run")
        await pool.close()

    asyncio.run(main())
