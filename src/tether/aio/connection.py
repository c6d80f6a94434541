"""What ``AsyncPool.connection()`` hands out: an async connection proxy and its cursors.

The same rules as :class:`tether.PooledConnection`, with ``await``: each call that talks to the
server is marked in flight, the status bits of its reply are noted, and a lost connection is
judged by :func:`tether.outcomes.failure_outcome` (the one function both flavours decide
through): replayed on a fresh connection where nothing can be lost or repeated, else
:class:`tether.TransactionLost` / :class:`tether.OutcomeUnknown` / the driver's error.

A call cancelled while it talks to the server (``task.cancel()``, ``asyncio.timeout()``)
leaves ``in_flight`` set: the connection's protocol state is unknown, so it is closed when it
goes back, never handed out again; the caller sees its ``CancelledError``; a write cancelled
after it was sent is counted as outcome unknown.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from ..classify import ErrorKind, classify
from ..entry import Entry, Lease
from ..errors import ConnectionReleased, driver_error
from ..outcomes import failure_outcome, interrupted, lost_error, note_reply
from ..policy import Outcome
from ..statements import is_read_only

if TYPE_CHECKING:
    from .pool import AsyncPool

__all__ = ["AsyncConnection", "AsyncCursor"]

# Attributes of the driver's connection that cannot change session state (the threaded
# proxy's list, and the async drivers' own names).
_SAFE_ATTRS = frozenset(
    {
        "escape",
        "escape_string",
        "literal",
        "insert_id",
        "affected_rows",
        "thread_id",
        "get_server_info",
        "get_host_info",
        "get_proto_info",
        "server_version",
        "host_info",
        "character_set_name",
        "charset",
        "encoding",
        "get_autocommit",
        "get_transaction_status",
        "host",
        "port",
        "user",
        "db",
        "server_status",
        "server_capabilities",
        "Error",
        "Warning",
        "InterfaceError",
        "DatabaseError",
        "DataError",
        "OperationalError",
        "IntegrityError",
        "InternalError",
        "ProgrammingError",
        "NotSupportedError",
    }
)


class AsyncConnection:
    """A checked-out connection: ``async with pool.connection() as conn``. Give it back with
    ``await conn.close()`` when it was taken without ``async with``."""

    __slots__ = ("__weakref__", "_lease", "_pool")

    def __init__(self, pool: AsyncPool, lease: Lease) -> None:
        self._pool = pool
        self._lease: Lease | None = lease

    async def close(self) -> None:
        """Give the connection back to the pool (the server connection stays open)."""
        lease = self._lease
        if lease is None:
            raise self._released("this connection was already returned to the pool")
        self._lease = None
        await self._pool.give_back(lease)

    async def __aenter__(self) -> AsyncConnection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._lease is not None:
            await self.close()

    @property
    def closed(self) -> bool:
        """Whether this connection was given back (or taken away by the pool)."""
        lease = self._lease
        return lease is None or lease.entry is None or lease.entry.holder is not lease

    def _released(self, message: str) -> BaseException:
        return driver_error(ConnectionReleased, self._pool.driver.InterfaceError, 0, message)

    def _entry(self) -> Entry:
        """The entry, or an error if it went back (a lost one is renewed by the caller)."""
        lease = self._lease
        if lease is None:
            raise self._released("this connection was returned to the pool; check out another")
        entry = lease.entry
        if entry is None or entry.holder is not lease:
            raise self._released(
                "this connection is no longer usable (the pool closed it, or the process forked)"
            )
        return entry

    async def _live(self) -> Entry:
        """The entry, renewed before anything is sent if its connection was lost, unless the
        caller has not yet heard what the loss cost (see :class:`tether.PooledConnection`)."""
        entry = self._entry()
        if not (entry.broken or entry.raw is None):
            return entry
        lost, entry.unreported = entry.unreported, None
        driver = self._pool.driver
        if lost == "transaction":
            self._pool.count("transactions_lost")
            raise lost_error(driver, 2013, "earlier (a call was interrupted)")
        if lost == "session":
            raise driver.OperationalError(
                2013,
                "Lost connection to server earlier (a call was interrupted): the session and"
                " what it held are gone; the next statement runs on a fresh session",
            )
        assert self._lease is not None
        return await self._pool.renew(self._lease)

    # ------------------------------------------------------------------ DB-API, async

    def cursor(self, cursor_class: type[Any] | None = None) -> AsyncCursor:
        """A cursor (the driver's default class, or ``cursor_class``, e.g. its
        ``DictCursor`` or ``SSCursor``); ``async with conn.cursor() as cur:`` closes it."""
        entry = self._entry()
        driver = self._pool.driver
        if cursor_class is not None and not isinstance(cursor_class, type):
            raise TypeError(f"cursor() takes the driver's cursor class, not {cursor_class!r}")
        cur = AsyncCursor(self, entry, cursor_class)
        if cursor_class is not None and driver.is_unbuffered(cursor_class):
            cur._streaming = True
            entry.unbuffered += 1
        return cur

    async def begin(self) -> None:
        """Start a transaction (``BEGIN``)."""
        await self._run(None, "begin", (), "BEGIN", None)

    async def commit(self) -> None:
        await self._run(None, "commit", (), "COMMIT", None)

    async def rollback(self) -> None:
        lease = self._lease
        entry = lease.entry if lease is not None else None
        if entry is not None and entry.holder is lease and entry.broken:
            entry.unreported = None  # the server rolled back when the connection died
            return
        await self._run(None, "rollback", (), "ROLLBACK", None)

    async def autocommit(self, on: bool) -> None:
        """Switch autocommit for this check-out; restored when the connection goes back."""
        await self._run(None, "autocommit", (on,), "SET autocommit", None)

    async def select_db(self, database: str) -> None:
        await self._run(None, "select_db", (database,), "USE", None)
        self._entry().dirty = True

    async def ping(self, reconnect: bool = False) -> None:
        """A round trip bounded by ``ping_timeout``; with ``reconnect=True`` a dead
        connection is replaced where that is safe (see :meth:`tether.PooledConnection.ping`)."""
        await self._run(None, "ping", (), "PING" if reconnect else "PING, no reconnect", None)

    async def stream(
        self, query: str, args: Any = None, *, batch: int = 1000
    ) -> AsyncIterator[Any]:
        """Rows of a large result one at a time, never all in memory (a streaming cursor);
        stopping early drains the rest when the generator is closed."""
        cur = self.cursor(self._pool.driver.module.cursors.SSCursor)
        try:
            await cur.execute(query, args)
            while True:
                rows = await cur.fetchmany(batch)
                if not rows:
                    break
                for row in rows:
                    yield row
        finally:
            await cur.close()

    @property
    def raw(self) -> Any:
        """The driver's own connection. Using it directly bypasses tether's bookkeeping, so
        the session is reset when the connection goes back."""
        entry = self._entry()
        entry.dirty = True
        return entry.raw

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_lease", "_pool"):
            raise AttributeError(name)
        entry = self._entry()
        if name not in _SAFE_ATTRS:
            entry.dirty = True
        return getattr(entry.raw, name)

    def __repr__(self) -> str:
        lease = self._lease
        entry = lease.entry if lease is not None else None
        if entry is None or lease is None or entry.holder is not lease:
            return f"<tether.AsyncConnection returned to {self._pool.name!r}>"
        return f"<tether.AsyncConnection session {entry.session_id} from {self._pool.name!r}>"

    # ------------------------------------------------------------------ calls

    async def _call(
        self, entry: Entry, cursor: AsyncCursor | None, method: str, args: tuple[Any, ...]
    ) -> Any:
        try:
            if cursor is None:
                if method == "ping":
                    await self._pool.driver.ping(entry.raw, self._pool.config.ping_timeout)
                    return None
                return await getattr(entry.raw, method)(*args)
            if cursor._entry is not entry:
                cursor._rebind(entry)
            return await getattr(cursor._cur, method)(*args)
        except RuntimeError as exc:
            # uvloop refusing a write on a transport the peer closed (a reset while the
            # connection was held or given back a moment ago): a lost connection, judged
            # as one, not an interruption of unknown meaning.
            lost = self._pool.driver.closed_transport(entry.raw, exc)
            if lost is None:
                raise
            raise lost from exc

    async def _run(
        self,
        cursor: AsyncCursor | None,
        method: str,
        args: tuple[Any, ...],
        what: str,
        replayable: bool | None,
    ) -> Any:
        """Run a call that talks to the server, with the failure semantics. ``what`` is the
        statement (for a cursor's call) or the name of the connection-level call."""
        entry = self._entry()
        if entry.broken or entry.raw is None:
            entry = await self._live()
        statement = what if cursor is not None else None
        name = method if cursor is not None else what
        for attempt in (1, 2):
            before = entry.last_status
            entry.in_flight = time.monotonic()
            try:
                result = await self._call(entry, cursor, method, args)
            except BaseException as exc:
                outcome = failure_outcome(
                    self._pool, entry, exc, before, name, statement, replayable, attempt
                )
                if outcome is None:
                    raise
                if outcome is Outcome.IGNORE:
                    return None
                self._pool.count("replays")
                assert self._lease is not None
                entry = await self._pool.renew(self._lease)
                continue
            entry.in_flight = 0.0
            note_reply(self._pool.driver, entry, statement)
            return result
        raise AssertionError("unreachable")

    async def _io(self, cursor: AsyncCursor, method: str, args: tuple[Any, ...]) -> Any:
        """A cursor call that may read from the server but runs no statement (fetching a
        streamed result, moving to the next result set, closing): marked in flight, no
        replay. After the connection went back, the driver's own call."""
        lease = self._lease
        entry = cursor._entry
        if lease is None or entry.holder is not lease or entry.raw is None:
            return await getattr(cursor._cur, method)(*args)
        if entry.broken:
            # Lost, or a call on it was cut short (it is out of step with the server): what
            # is left of the result can't be read, as with the threaded proxy. Closing the
            # cursor reads nothing: the connection is closed when it goes back.
            if method == "close":
                return None
            raise self._pool.driver.OperationalError(
                2013, "Lost connection to server: the result can no longer be read"
            )
        entry.in_flight = time.monotonic()
        try:
            result = await getattr(cursor._cur, method)(*args)
        except BaseException as exc:
            driver = self._pool.driver
            if isinstance(exc, driver.Error):
                entry.in_flight = 0.0
                if classify(exc, driver, self._pool.config.error_kinds) is ErrorKind.DISCONNECT:
                    entry.broken = True
            else:
                interrupted(self._pool, entry, None, method)
            raise
        entry.in_flight = 0.0
        return result


class AsyncCursor:
    """A cursor of a pooled async connection. ``execute``, ``executemany`` and ``callproc``
    add replay-or-raise on a lost connection; fetching a buffered result costs what the
    driver's own fetch costs."""

    __slots__ = ("_class", "_conn", "_cur", "_entry", "_streaming")

    def __init__(self, conn: AsyncConnection, entry: Entry, cursor_class: type[Any] | None) -> None:
        self._conn = conn
        self._entry = entry
        self._class = cursor_class
        self._cur: Any = conn._pool.driver.cursor(entry.raw, cursor_class)
        self._streaming = False

    def _rebind(self, entry: Entry) -> None:
        """The connection was replaced since this cursor was made: a fresh driver cursor."""
        self._cur = self._conn._pool.driver.cursor(entry.raw, self._class)
        self._entry = entry
        if self._streaming:
            entry.unbuffered += 1

    async def execute(
        self,
        query: str,
        args: Any = None,
        *,
        idempotent: bool | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Execute ``query`` (see :meth:`tether.Cursor.execute` for ``idempotent`` and
        ``timeout``)."""
        conn = self._conn
        if timeout is not None:
            query = conn._pool.statement_timeout(query, timeout)  # type: ignore[assignment]
        return await conn._run(self, "execute", (query, args), query, idempotent)

    async def executemany(self, query: str, args: Sequence[Any]) -> Any:
        """Like the driver's; replayed after a lost connection only if it cannot write."""
        return await self._conn._run(self, "executemany", (query, args), query, is_read_only(query))

    async def callproc(self, procname: str, args: Sequence[Any] = ()) -> Any:
        return await self._conn._run(self, "callproc", (procname, args), f"CALL {procname}", False)

    async def fetchone(self) -> Any:
        if self._streaming:
            return await self._conn._io(self, "fetchone", ())
        return await self._cur.fetchone()

    async def fetchmany(self, size: int | None = None) -> Any:
        args = () if size is None else (size,)
        if self._streaming:
            return await self._conn._io(self, "fetchmany", args)
        return await self._cur.fetchmany(*args)

    async def fetchall(self) -> Any:
        if self._streaming:
            return await self._conn._io(self, "fetchall", ())
        return await self._cur.fetchall()

    async def nextset(self) -> Any:
        return await self._conn._io(self, "nextset", ())

    async def close(self) -> None:
        streaming, self._streaming = self._streaming, False
        try:
            await self._conn._io(self, "close", ())
        finally:
            entry = self._entry
            if streaming and entry.unbuffered > 0:
                entry.unbuffered -= 1

    @property
    def description(self) -> Any:
        return self._cur.description

    @property
    def rowcount(self) -> int:
        return int(self._cur.rowcount)

    @property
    def lastrowid(self) -> Any:
        return self._cur.lastrowid

    @property
    def raw(self) -> Any:
        """The driver's own cursor."""
        return self._cur

    async def __aenter__(self) -> AsyncCursor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __aiter__(self) -> AsyncCursor:
        return self

    async def __anext__(self) -> Any:
        row = await self.fetchone()
        if row is None:
            raise StopAsyncIteration
        return row
