"""SQLAlchemy's asyncio engine on :class:`tether.AsyncPool` (asyncmy or aiomysql).

SQLAlchemy runs its engine code in a greenlet and reaches the asyncio driver through an
adapter whose methods look synchronous and await inside (``await_``). Here the adapter is
:class:`AsyncSessionConnection`: it awaits tether's :class:`tether.AsyncConnection` instead
of the driver's, with the same transaction rules as the threaded one
(:mod:`tether.contrib.sqlalchemy.dbapi`): ``BEGIN`` only before a statement that needs a
transaction, ``commit()`` / ``rollback()`` a round trip only when one was opened. Results are
read whole at ``execute()``, as SQLAlchemy's own adapters do (``stream_results`` too).
"""

from __future__ import annotations

import collections
from typing import Any

import sqlalchemy
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.ext.asyncio import create_async_engine as sa_create_async_engine
from sqlalchemy.util import await_

from ...aio import AsyncConnection, AsyncPool
from .dbapi import _ENDS, _NEVER, _OPENS, _SET_NAMES, _WRITE, given_back, statement_kind
from .pool import TetherPool

__all__ = ["AsyncSessionConnection", "AsyncTetherPool", "create_async_engine"]


class AsyncSessionConnection:
    """The connection SQLAlchemy's asyncio engine holds: a tether check-out, awaited."""

    __slots__ = ("_autocommit", "_began", "_conn", "_lazy", "_pool")

    def __init__(self, pool: AsyncPool, *, lazy_begin: bool = True) -> None:
        if not pool.config.autocommit:
            raise sqlalchemy.exc.ArgumentError(
                "an async engine on tether needs a pool in autocommit (the default)"
            )
        self._pool = pool
        self._conn: AsyncConnection | None = None
        self._began = False
        self._autocommit = False
        self._lazy = lazy_begin

    def check_out(self) -> None:
        if self._conn is None:
            self._conn = await_(self._pool.connection())

    def give_back(self) -> None:
        conn, self._conn = self._conn, None
        self._began = False
        if conn is not None and not conn.closed:
            await_(conn.close())

    def _live(self) -> AsyncConnection:
        conn = self._conn
        if conn is None:
            raise given_back(self._pool.driver)
        return conn

    @property
    def _connection(self) -> AsyncConnection:
        # What SQLAlchemy's asyncio dialects call the driver connection.
        return self._live()

    @property
    def driver_connection(self) -> AsyncConnection:
        return self._live()

    def cursor(self, *args: Any, **kwargs: Any) -> AsyncSessionCursor:
        return AsyncSessionCursor(self)

    async def before(self, conn: AsyncConnection, query: str) -> bool:
        kind = statement_kind(query)
        if kind == _OPENS:
            self._began = True
        elif kind == _ENDS:
            self._began = False
        elif kind == _NEVER:
            match = _SET_NAMES.match(query)
            charset = getattr(conn, "charset", None)
            if match is not None and match.group(1).lower() == str(charset).lower():
                return False  # the charset the connection has (see dbapi.py)
        elif not self._began and not self._autocommit and (kind == _WRITE or not self._lazy):
            await conn.begin()
            self._began = True
        return True

    def commit(self) -> None:
        if self._began:
            self._began = False
            await_(self._live().commit())

    def rollback(self) -> None:
        if self._began:
            self._began = False
            await_(self._live().rollback())

    def autocommit(self, on: bool) -> None:
        if on and self._began:
            self.commit()
        self._autocommit = bool(on)

    def get_autocommit(self) -> bool:
        return self._autocommit

    def character_set_name(self) -> str | None:
        charset = getattr(self._live(), "charset", None)
        return str(charset) if charset is not None else None

    def ping(self, reconnect: bool = False) -> None:
        await_(self._live().ping())

    def close(self) -> None:
        self.give_back()

    def terminate(self) -> None:
        self.give_back()

    @property
    def in_transaction(self) -> bool:
        return self._began

    def __repr__(self) -> str:
        state = repr(self._conn) if self._conn is not None else "given back"
        return f"<tether SQLAlchemy async connection of {self._pool.name!r}: {state}>"


class AsyncSessionCursor:
    """A buffered cursor: ``execute()`` runs the statement and reads its rows."""

    __slots__ = ("_session", "arraysize", "description", "lastrowid", "rowcount", "rows")

    server_side = False

    def __init__(self, session: AsyncSessionConnection) -> None:
        self._session = session
        self.description: Any = None
        self.rowcount = -1
        self.lastrowid: Any = None
        self.arraysize = 1
        self.rows: collections.deque[Any] = collections.deque()

    async def _execute(self, query: str, args: Any, many: bool) -> Any:
        session = self._session
        conn = session._live()
        if not await session.before(conn, query):
            return 0
        async with conn.cursor() as cur:
            if many:
                result = await cur.executemany(query, args)
            else:
                result = await cur.execute(query, args)
            self.description = cur.description
            self.rowcount = cur.rowcount
            self.lastrowid = cur.lastrowid
            self.rows = collections.deque(await cur.fetchall() if cur.description else ())
        return result

    def execute(self, query: str, args: Any = None) -> Any:
        return await_(self._execute(query, args, False))

    def executemany(self, query: str, args: Any) -> Any:
        return await_(self._execute(query, args, True))

    def fetchone(self) -> Any:
        return self.rows.popleft() if self.rows else None

    def fetchmany(self, size: int | None = None) -> list[Any]:
        n = self.arraysize if size is None else size
        return [self.rows.popleft() for _ in range(min(n, len(self.rows)))]

    def fetchall(self) -> list[Any]:
        rows = list(self.rows)
        self.rows.clear()
        return rows

    def __iter__(self) -> Any:
        while self.rows:
            yield self.rows.popleft()

    def nextset(self) -> None:
        return None

    def setinputsizes(self, *sizes: Any) -> None:
        return None

    def close(self) -> None:
        self.rows.clear()

    async def _async_soft_close(self) -> None:
        return None


class AsyncTetherPool(TetherPool):
    """:class:`TetherPool` for SQLAlchemy's asyncio engine, on a :class:`tether.AsyncPool`."""

    _is_asyncio = True

    def _new_session(self) -> Any:
        pool: Any = self._tether
        session = AsyncSessionConnection(pool, lazy_begin=self._lazy_begin)
        session.check_out()
        return session

    def dispose(self) -> None:
        self._disposed = True
        self._records.clear()
        made: Any = self._made
        if self._factory is not None and made is not None:
            await_(made.close())
        self.logger.info("Pool disposed. %s", self.status())


def create_async_engine(
    url: str | sqlalchemy.URL,
    *,
    pool_options: dict[str, Any] | None = None,
    lazy_begin: bool = True,
    **engine_kwargs: Any,
) -> AsyncEngine:
    """A SQLAlchemy :class:`~sqlalchemy.ext.asyncio.AsyncEngine` whose connections come from a
    :class:`tether.AsyncPool` made from ``url`` (``mysql+asyncmy://`` or ``mysql+aiomysql://``)
    and ``pool_options``; ``await engine.dispose()`` closes it."""
    plugins_given = list(engine_kwargs.pop("plugins", ()))
    return sa_create_async_engine(
        url,
        plugins=[*plugins_given, "tether"],
        tether_options=dict(pool_options or {}),
        tether_lazy_begin=lazy_begin,
        **engine_kwargs,
    )
