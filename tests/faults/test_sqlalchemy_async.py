"""SQLAlchemy's asyncio engine on tether.AsyncPool, against a private MariaDB with both asyncio
drivers: Core and ``AsyncSession``, what a clean give-back costs, the error mapping, dispose,
and reads under faults (idle past ``wait_timeout``, KILL, restart, cut connections)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.ext.asyncio import create_async_engine as sa_create_async_engine

import tether
from tether.contrib.sqlalchemy import create_async_engine
from tether.contrib.sqlalchemy.aio import AsyncTetherPool
from tether.testing import FaultProxy, MariaDBServer

pytestmark = pytest.mark.faults

ASYNC_DRIVERS = ("asyncmy", "aiomysql")


@pytest.fixture(params=ASYNC_DRIVERS)
def adriver(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    pytest.importorskip(name)
    return name


def url_of(dsn: str, driver: str) -> str:
    return dsn.replace("mysql://", f"mysql+{driver}://", 1)


def status(db: MariaDBServer, *names: str) -> dict[str, int]:
    wanted = ",".join(f"'{n}'" for n in names)
    rows = db.execute_admin(f"SHOW GLOBAL STATUS WHERE Variable_name IN ({wanted})")
    return {name: int(value) for name, value in rows}


def ledger(db: MariaDBServer) -> int:
    return int(db.execute_admin(f"SELECT COUNT(*) FROM {db.database}.ledger")[0][0])


async def sid(conn: Any) -> int:
    return int((await conn.execute(text("SELECT CONNECTION_ID()"))).scalar())


def test_core_orm_and_a_clean_give_back(db: MariaDBServer, adriver: str) -> None:
    db.execute_admin(f"CREATE TABLE {db.database}.ledger (id INT PRIMARY KEY)")

    async def main() -> None:
        engine = create_async_engine(url_of(db.dsn(), adriver), pool_options={"max_size": 3})
        pool = engine.sync_engine.pool
        assert isinstance(pool, AsyncTetherPool)
        assert isinstance(pool.tether_pool, tether.AsyncPool)
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO ledger VALUES (1), (2)"))
        before = status(db, "Com_rollback", "Com_begin")
        for _ in range(10):
            async with engine.connect() as conn:
                assert (await conn.execute(text("SELECT COUNT(*) FROM ledger"))).scalar() == 2
            async with AsyncSession(engine) as session:
                assert (await session.execute(text("SELECT MAX(id) FROM ledger"))).scalar() == 2
        assert status(db, "Com_rollback", "Com_begin") == before  # no BEGIN, no ROLLBACK
        async with AsyncSession(engine) as session, session.begin():
            await session.execute(text("INSERT INTO ledger VALUES (3)"))
        with pytest.raises(RuntimeError):
            async with AsyncSession(engine) as session, session.begin():
                await session.execute(text("INSERT INTO ledger VALUES (4)"))
                raise RuntimeError("abandon")
        assert ledger(db) == 3

        # Many tasks, never more server connections than max_size.
        async def read() -> None:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT SLEEP(0.01)"))

        await asyncio.gather(*(read() for _ in range(30)))
        assert db.connections_of() <= 3
        stats = pool.tether_pool.stats()
        assert stats.in_use == 0 and stats.size <= 3 and stats["checkouts"] >= 53
        async with engine.connect() as conn:  # stream_results: read whole, then streamed
            result = await conn.stream(text("SELECT id FROM ledger ORDER BY id"))
            assert [row[0] async for row in result] == [1, 2, 3]
        tether_pool = pool.tether_pool
        await engine.dispose()
        assert tether_pool.closed
        # A pool the application owns: used, and left open by dispose().
        own = tether.AsyncPool(url_of(db.dsn(), adriver), max_size=2)
        other = sa_create_async_engine(
            url_of(db.dsn(), adriver), plugins=["tether"], tether_pool=own
        )
        async with other.connect() as conn:
            assert (await conn.execute(text("SELECT COUNT(*) FROM ledger"))).scalar() == 3
        await other.dispose()
        assert not own.closed and own.stats()["checkouts"] == 1
        await own.close()

    asyncio.run(main())


def test_errors_reach_sqlalchemy_as_invalidating_operational_errors(
    db: MariaDBServer, adriver: str
) -> None:
    db.execute_admin(f"CREATE TABLE {db.database}.ledger (id INT PRIMARY KEY)")

    async def main() -> None:
        engine = create_async_engine(url_of(db.dsn(), adriver))
        try:
            async with engine.connect() as conn:  # a read on a killed session: replayed
                first = await sid(conn)
                db.kill_sessions(ids=[first])
                await asyncio.sleep(0.1)
                assert await sid(conn) != first
            async with AsyncSession(engine) as session:
                await session.execute(text("INSERT INTO ledger VALUES (1)"))
                db.kill_sessions(ids=[await sid(session)])
                await asyncio.sleep(0.1)
                with pytest.raises(sa_exc.OperationalError) as caught:
                    await session.execute(text("INSERT INTO ledger VALUES (2)"))
                assert isinstance(caught.value.orig, tether.TransactionLost)
                assert caught.value.connection_invalidated
                await session.rollback()
            assert ledger(db) == 0
            async with AsyncSession(engine) as session, session.begin():
                await session.execute(text("INSERT INTO ledger VALUES (3)"))
            assert ledger(db) == 1
        finally:
            await engine.dispose()

    asyncio.run(main())


@pytest.mark.slow
def test_reads_never_fail_under_faults(
    mariadb_factory: Callable[..., MariaDBServer],
    fault_proxy: Callable[..., FaultProxy],
    adriver: str,
) -> None:
    server = mariadb_factory(options={"wait_timeout": 2})
    proxy = fault_proxy(server)

    async def hammer(
        engine: AsyncEngine, seconds: float, failures: list[str], phase: list[str]
    ) -> int:
        done = 0
        deadline = time.monotonic() + seconds

        async def task(n: int) -> None:
            nonlocal done
            while time.monotonic() < deadline:
                try:
                    if n % 2:
                        async with engine.connect() as conn:
                            await conn.execute(text("SELECT 1"))
                    else:
                        async with AsyncSession(engine) as session:
                            await session.execute(sa.select(sa.literal(1)))
                    done += 1
                except Exception as exc:
                    failures.append(f"{phase[0]}: {type(exc).__name__}: {exc}"[:300])
                await asyncio.sleep(0.005)

        await asyncio.gather(*(task(n) for n in range(6)))
        return done

    async def main() -> None:
        engine = create_async_engine(url_of(proxy.dsn_for(), adriver), pool_options={"max_size": 6})
        failures: list[str] = []
        phase = ["warm"]
        try:
            assert await hammer(engine, 0.5, failures, phase) > 0
            await asyncio.sleep(3)  # idle past wait_timeout
            assert await hammer(engine, 0.5, failures, phase) > 0
            # Every session killed, every connection cut, between bursts (KILLs go one at a
            # time and the proxy cuts link by link: under load, one may land on the connection
            # a lost read was just replayed on; a read is replayed once).
            for phase[0], fault in (("kill", server.kill_sessions), ("cut", proxy.cut_all)):
                await asyncio.to_thread(fault)
                assert await hammer(engine, 0.5, failures, phase) > 0
            faults: dict[str, Callable[[], Any]] = {"restart": lambda: server.restart(down=1)}
            for phase[0], fault in faults.items():
                load = asyncio.create_task(hammer(engine, 3.0, failures, phase))
                await asyncio.sleep(0.7)
                await asyncio.to_thread(fault)
                assert await load > 0
            assert failures == [], failures[:5]
            stats = engine.sync_engine.pool.tether_pool.stats()
            assert stats.in_use == 0 and stats["opened"] > 1
        finally:
            await engine.dispose()

    asyncio.run(main())
