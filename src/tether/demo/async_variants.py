"""The asyncio ways of getting a connection that the demo compares, each written the way its
users write it: asyncmy's and aiomysql's own pools, SQLAlchemy's async engine with
``pool_pre_ping``, and ``tether.AsyncPool``.

The workload's threads stay as they are: each async variant runs its own event loop on a thread
of its own, and every request is a task on it (what an asyncio web server does with its
requests). The transaction's "application work" (which the demo may hold while it kills the
session) runs in a thread, awaited by the task.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import tether

from .variants import Endpoint, Tables, Variant, Work

__all__ = ["AiomysqlPool", "AsyncVariant", "AsyncmyPool", "SQLAlchemyAsync", "TetherAsync"]

T = TypeVar("T")


class AsyncVariant(Variant):
    """A variant whose requests are tasks on its own event loop."""

    def __init__(self, endpoint: Endpoint, tables: Tables, *, driver: str) -> None:
        super().__init__(endpoint, tables, driver=driver)
        self._loop = asyncio.new_event_loop()
        self._work = concurrent.futures.ThreadPoolExecutor(64, thread_name_prefix="demo-work")
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"tether-demo-{self.key}-loop", daemon=True
        )
        self._thread.start()
        self._call(self._open())

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def _in_thread(self, work: Work) -> None:
        await self._loop.run_in_executor(self._work, work)

    def read(self, key: int) -> None:
        self._call(self._read(key))

    def write(self, request_id: int, slot: int, work: Work) -> None:
        self._call(self._write(request_id, slot, work))

    def close(self) -> None:
        try:
            self._call(self._close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._work.shutdown(wait=False)

    async def _open(self) -> None:
        raise NotImplementedError

    async def _read(self, key: int) -> None:
        raise NotImplementedError

    async def _write(self, request_id: int, slot: int, work: Work) -> None:
        raise NotImplementedError

    async def _close(self) -> None:
        raise NotImplementedError


class AsyncmyPool(AsyncVariant):
    key = "asyncmy-pool"
    title = "asyncmy pool"
    description = (
        "asyncmy.create_pool(..., autocommit=True): its defaults otherwise (no ping on"
        " acquire); begin()/commit() around writes"
    )

    def _kwargs(self) -> dict[str, Any]:
        ep = self.endpoint
        return {
            "host": ep.host,
            "port": ep.port,
            "user": ep.user,
            "password": ep.password,
            "db": ep.database,
            "autocommit": True,
        }

    async def _open(self) -> None:
        import asyncmy

        self.pool = await asyncmy.create_pool(**self._kwargs())

    async def _read(self, key: int) -> None:
        async with self.pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute(self.tables.select, (key,))
            await cur.fetchall()

    async def _write(self, request_id: int, slot: int, work: Work) -> None:
        async with self.pool.acquire() as conn:
            await conn.begin()
            try:
                async with conn.cursor() as cur:
                    await cur.execute(self.tables.insert, (request_id, slot))
                    await self._in_thread(work)
                    await cur.execute(self.tables.update, (slot,))
                await conn.commit()
            except Exception:
                with contextlib.suppress(Exception):
                    await conn.rollback()
                raise

    async def _close(self) -> None:
        self.pool.close()
        await self.pool.wait_closed()


class AiomysqlPool(AsyncmyPool):
    key = "aiomysql-pool"
    title = "aiomysql pool"
    description = (
        "aiomysql.create_pool(..., autocommit=True): its defaults otherwise (a free"
        " connection checked for EOF on acquire); begin()/commit() around writes"
    )

    async def _open(self) -> None:
        import aiomysql

        self.pool = await aiomysql.create_pool(**self._kwargs())


class SQLAlchemyAsync(AsyncVariant):
    key = "sqlalchemy-async"
    title = "SQLAlchemy async pre_ping"
    description = (
        "create_async_engine('mysql+asyncmy://...', pool_pre_ping=True): defaults otherwise;"
        " engine.connect() for reads, engine.begin() for writes"
    )

    async def _open(self) -> None:
        from sqlalchemy.ext.asyncio import create_async_engine

        tables = self.tables
        self.engine = create_async_engine(self.endpoint.url("mysql+asyncmy"), pool_pre_ping=True)
        self._select, self._insert, self._update = tables.sqlalchemy_statements()

    async def _read(self, key: int) -> None:
        async with self.engine.connect() as conn:
            (await conn.execute(self._select, {"key": key})).fetchall()

    async def _write(self, request_id: int, slot: int, work: Work) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(self._insert, {"request_id": request_id, "slot": slot})
            await self._in_thread(work)
            await conn.execute(self._update, {"slot": slot})

    async def _close(self) -> None:
        await self.engine.dispose()


class TetherAsync(AsyncVariant):
    key = "tether-async"
    title = "tether AsyncPool"
    description = (
        "tether.AsyncPool(dsn, driver='asyncmy', timeout=10), defaults otherwise;"
        " pool.transaction() for writes"
    )

    async def _open(self) -> None:
        self.pool = tether.AsyncPool(
            self.endpoint.url(), driver="asyncmy", timeout=10.0, name=f"demo-{self.key}"
        )

    async def _read(self, key: int) -> None:
        async with self.pool.connection() as conn, conn.cursor() as cur:
            await cur.execute(self.tables.select, (key,))
            await cur.fetchall()

    async def _write(self, request_id: int, slot: int, work: Work) -> None:
        async with self.pool.transaction() as conn:
            cur = conn.cursor()
            await cur.execute(self.tables.insert, (request_id, slot))
            await self._in_thread(work)
            await cur.execute(self.tables.update, (slot,))

    async def _close(self) -> None:
        await self.pool.close()
