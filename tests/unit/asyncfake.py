"""A scripted fake asyncio driver for AsyncPool logic tests: no server, real sockets, and a
protocol that can be left out of step, as :mod:`tests.unit.fakedriver` is for the threaded pool.

Every round trip is a request (``send``), an await (the point where a cancellation can land,
as it lands in a real driver waiting for the reply), then the reply (``receive``). A call
cancelled between the two leaves ``busy`` set: every later call fails with "Commands out of
sync" (2014), which tether must never let a borrower see. Unlike the real drivers, a fake
connection does nothing about its own cancellation: whatever is safe is tether's doing.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import types
from collections import deque
from collections.abc import Mapping
from typing import Any

from tether.aio.drivers import AsyncDriver
from tether.drivers import STATUS_AUTOCOMMIT, STATUS_IN_TRANS, STATUS_SESSION_STATE_CHANGED
from tether.dsn import DSN

from .fakedriver import FakeError, FakeInterfaceError, FakeOperationalError, FakeProgrammingError


async def point() -> None:
    """Awaits where a real driver waits on the network: for the reply's first packet, then
    for the rest of it."""
    await asyncio.sleep(0)
    await asyncio.sleep(0)


class FakeAsyncCursor:
    def __init__(self, conn: FakeAsyncConnection) -> None:
        self.connection = conn
        self.rows: list[tuple[Any, ...]] = []
        self.rowcount = -1
        self.description = None
        self.lastrowid = None

    async def execute(self, query: str, args: Any = None) -> int:
        conn = self.connection
        conn.send(query)
        await point()
        q = query.strip().upper()
        if q.startswith(("BEGIN", "START TRANSACTION")):
            conn.server_status |= STATUS_IN_TRANS
        elif q.startswith(("COMMIT", "ROLLBACK")):
            conn.server_status &= ~STATUS_IN_TRANS
        elif q.startswith(("SET @", "SET NAMES")):
            conn.server_status |= STATUS_SESSION_STATE_CHANGED
        rows: list[tuple[Any, ...]] = [(1,)]
        if "VERSION()" in q:
            rows = [("10.11-fake-MariaDB", conn.driver.wait_timeout, 151, 0, 30, 60)]
        conn.receive()
        self.rows = rows
        self.rowcount = len(rows)
        return 1

    async def executemany(self, query: str, args: Any) -> int:
        total = 0
        for one in args:
            total += await self.execute(query, one)
        return total

    async def fetchall(self) -> list[tuple[Any, ...]]:
        rows, self.rows = self.rows, []
        return rows

    async def fetchone(self) -> tuple[Any, ...] | None:
        return self.rows.pop(0) if self.rows else None

    async def fetchmany(self, size: int = 1) -> list[tuple[Any, ...]]:
        rows, self.rows = self.rows[:size], self.rows[size:]
        return rows

    async def nextset(self) -> None:
        return None

    async def close(self) -> None:
        pass


class FakeSSCursor(FakeAsyncCursor):
    """A streaming cursor: fetching reads from the server (and fails once it is gone)."""

    async def execute(self, query: str, args: Any = None) -> int:
        conn = self.connection
        conn.send(query)
        await point()
        self.rows = [(1,), (2,)]
        return 1  # the reply is still coming: busy until fetched to the end

    async def _read(self) -> None:
        await point()
        conn = self.connection
        if conn.dropped or conn.server_end.fileno() == -1:
            raise FakeOperationalError(2013, "Lost connection to server during query")

    async def fetchone(self) -> tuple[Any, ...] | None:
        await self._read()
        if not self.rows:
            self.connection.receive()
            return None
        return self.rows.pop(0)

    async def fetchall(self) -> list[tuple[Any, ...]]:
        await self._read()
        rows, self.rows = self.rows, []
        self.connection.receive()
        return rows

    async def fetchmany(self, size: int = 1) -> list[tuple[Any, ...]]:
        await self._read()
        rows, self.rows = self.rows[:size], self.rows[size:]
        if not rows:
            self.connection.receive()
        return rows

    async def close(self) -> None:
        if self.connection.busy:  # drains the rest of the result
            self.connection.drains += 1
            await self._read()
            self.rows = []
            self.connection.receive()


class FakeAsyncConnection:
    _ids = itertools.count(1)

    def __init__(self, driver: FakeAsyncDriver, autocommit: bool) -> None:
        self.driver = driver
        self.sock, self.server_end = socket.socketpair()
        self.id = next(self._ids)
        self.server_status = STATUS_AUTOCOMMIT if autocommit else 0
        self.closed = False
        self.busy = False
        self.dropped = False
        self.drains = 0
        self.statements: list[str] = []
        self.pings = 0

    def send(self, what: str) -> None:
        if self.closed:
            raise FakeInterfaceError(0, "")
        if self.busy:
            raise FakeProgrammingError(2014, "Commands out of sync; you can't run this command now")
        if self.server_end.fileno() == -1 or self.dropped:
            raise FakeOperationalError(2013, "Lost connection to server during query")
        if what in self.driver.lose_at:  # scripted: the connection dies on this request
            self.driver.lose_at.remove(what)
            self.server_end.close()
            raise FakeOperationalError(2013, "Lost connection to server during query")
        self.busy = True
        self.statements.append(what)

    def receive(self) -> None:
        self.busy = False

    def cursor(self, cursorclass: Any = None) -> FakeAsyncCursor:
        return (cursorclass or FakeAsyncCursor)(self)

    async def _simple(self, sql: str) -> None:
        await FakeAsyncCursor(self).execute(sql)

    async def begin(self) -> None:
        await self._simple("BEGIN")

    async def commit(self) -> None:
        await self._simple("COMMIT")

    async def rollback(self) -> None:
        await self._simple("ROLLBACK")

    async def autocommit(self, on: bool) -> None:
        await self._simple(f"SET AUTOCOMMIT = {1 if on else 0}")
        if on:
            self.server_status |= STATUS_AUTOCOMMIT
        else:
            self.server_status &= ~STATUS_AUTOCOMMIT

    async def select_db(self, database: str) -> None:
        await self._simple(f"USE {database}")
        self.server_status |= STATUS_SESSION_STATE_CHANGED

    def thread_id(self) -> int:
        return self.id

    def get_server_info(self) -> str:
        return "10.11-fake-MariaDB"

    def kill(self) -> None:
        """The server side goes away: the pool's look at the socket sees it readable."""
        self.server_end.close()

    def drop(self) -> None:
        """The session is gone without a word on the socket yet (a server restart whose resets
        a proxy or the network has not passed on): only a round trip finds out."""
        self.dropped = True

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.sock.close()
        if self.server_end.fileno() != -1:
            self.server_end.close()
        self.driver.open_now -= 1


class FakeAsyncDriver(AsyncDriver):
    name = "fake-async"
    Error = FakeError
    OperationalError = FakeOperationalError
    InterfaceError = FakeInterfaceError
    ProgrammingError = FakeProgrammingError

    def __init__(self, *, wait_timeout: int = 28800) -> None:
        self.module = types.SimpleNamespace(
            cursors=types.SimpleNamespace(Cursor=FakeAsyncCursor, SSCursor=FakeSSCursor)
        )
        self.connection_class = FakeAsyncConnection
        self.wait_timeout = wait_timeout
        self.failures: deque[BaseException] = deque()  # raised by the next connects
        self.connections: list[FakeAsyncConnection] = []
        self.open_now = 0
        self.ping_ok = True
        self.killed: list[int] = []
        self.lose_at: list[str] = []  # requests whose next send loses the connection

    def connect_arg_names(self) -> frozenset[str]:
        return frozenset({"charset", "sql_mode", "init_command"})

    async def connect(
        self,
        dsn: DSN,
        *,
        connect_timeout: float,
        autocommit: bool,
        connect_args: Mapping[str, Any],
    ) -> Any:
        await point()  # the TCP connect
        if self.failures:
            raise self.failures.popleft()
        conn = FakeAsyncConnection(self, autocommit)
        self.open_now += 1
        self.connections.append(conn)
        try:
            await point()  # the handshake
        except BaseException:
            conn.close()  # as the adapters do: a connect cut short leaves no socket
            raise
        return conn

    def charset(self, raw: Any) -> str:
        return "utf8mb4"

    def is_mariadb(self, raw: Any) -> bool:
        return True

    def thread_id(self, raw: Any) -> int:
        return int(raw.id)

    def transport(self, raw: Any) -> Any:
        return None if raw.closed else raw

    def fileno(self, raw: Any) -> int:
        return -1 if raw.closed else int(raw.sock.fileno())

    def broken(self, raw: Any) -> bool:
        return bool(raw.closed)

    async def ping(self, raw: Any, timeout: float) -> None:
        raw.pings += 1
        raw.send("<ping>")
        await point()
        if not self.ping_ok:
            raise FakeOperationalError(2013, "no answer")
        raw.receive()

    async def reset(self, raw: Any) -> bool:
        raw.send("<reset>")
        await point()
        raw.server_status = STATUS_AUTOCOMMIT
        raw.receive()
        return True

    async def execute(self, raw: Any, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        if sql.startswith("KILL "):
            self.killed.append(int(sql.split()[1]))
        cur = FakeAsyncCursor(raw)
        await cur.execute(sql)
        return await cur.fetchall()

    def cursor(self, raw: Any, cursor_class: type[Any] | None) -> Any:
        return (cursor_class or FakeAsyncCursor)(raw)

    def default_cursor(self) -> type[Any]:
        return FakeAsyncCursor

    def is_unbuffered(self, cursor_class: type[Any]) -> bool:
        return issubclass(cursor_class, FakeSSCursor)

    def close(self, raw: Any) -> None:
        raw.close()

    def abandon(self, raw: Any) -> None:
        raw.close()

    def _forget(self, raw: Any) -> None:
        raw.close()
