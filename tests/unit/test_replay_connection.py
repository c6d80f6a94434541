"""The connection a replay runs on, in both pool flavours (fake drivers): whatever lost the
first one (a KILL of every session, one after another; a restart; every connection cut) may
be taking the idle ones too, and their sockets may not say so yet. The one replay a read gets
runs on a connection opened after the loss where the bound allows, else on an idle one that
has just answered a ping."""

from __future__ import annotations

import asyncio

import tether

from .asyncfake import FakeAsyncDriver
from .fakedriver import FakeDriver, FakeOperationalError

DSN = "mysql://app:pw@127.0.0.1:3306/app"


def test_a_replay_runs_on_a_new_connection_not_on_an_idle_one() -> None:
    fake = FakeDriver()
    pool = tether.Pool(DSN, driver=fake, watchdog=None, keepalive=None)
    first, second = pool.connection(), pool.connection()
    first.close()
    second.close()
    fake.lose_at.append("SELECT 7")
    with pool.connection() as conn:
        cur = conn.cursor()
        cur.execute("SELECT 7")
        assert cur.fetchone() == (1,)
    assert pool.stats().counters.replays == 1
    third = fake.connections[2]
    assert third.statements[-1] == "SELECT 7"  # replayed on a connection opened after the loss
    idle = [c for c in fake.connections[:2] if c.server_end.fileno() != -1]
    assert len(idle) == 1 and idle[0].pings == 0  # the idle one was left alone
    pool.close()


def test_an_async_replay_runs_on_a_new_connection_not_on_an_idle_one() -> None:
    async def main() -> None:
        fake = FakeAsyncDriver()
        pool = tether.AsyncPool(DSN, driver=fake, watchdog=None)
        first, second = await pool.connection(), await pool.connection()
        await first.close()
        await second.close()
        fake.lose_at.append("SELECT 7")
        async with pool.connection() as conn:
            cur = conn.cursor()
            await cur.execute("SELECT 7")
            assert await cur.fetchone() == (1,)
        counters = pool.stats().counters
        assert counters.replays == 1 and counters.opened == 3
        assert fake.connections[2].statements[-1] == "SELECT 7"
        idle = [c for c in fake.connections[:2] if c.server_end.fileno() != -1]
        assert len(idle) == 1 and idle[0].pings == 0  # the idle one was left alone
        await pool.close()

    asyncio.run(main())


def test_an_async_replay_pings_an_idle_connection_when_it_cannot_open_one() -> None:
    """Growth blocked (the new connection's connect failed: an outage, a cap): an idle one
    is taken, but pinged first even though it was given back a moment ago, so the replay is
    not spent on a dead session; then the pool waits for the backoff and opens one."""

    async def main() -> None:
        fake = FakeAsyncDriver()
        pool = tether.AsyncPool(DSN, driver=fake, watchdog=None, ping_after=30)
        first, second = await pool.connection(), await pool.connection()
        await first.close()
        await second.close()
        await asyncio.sleep(0.01)  # idle past the trusted moment, well under ping_after
        for raw in fake.connections:
            raw.drop()
        fake.failures.append(FakeOperationalError(2003, "Can't connect to server"))
        async with pool.connection() as conn:
            cur = conn.cursor()
            await cur.execute("SELECT 7")
            assert await cur.fetchone() == (1,)
        counters = pool.stats().counters
        assert counters.replays == 1 and counters.connect_errors == 1
        assert counters.ping_failures == 1  # the idle one, found dead by its ping
        assert sorted(raw.pings for raw in fake.connections[:2]) == [0, 1]
        await pool.close()

    asyncio.run(main())
