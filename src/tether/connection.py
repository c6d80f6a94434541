"""What ``pool.connection()`` hands out: a DB-API connection proxy and its cursors.

The proxy is thin on purpose (a pooled query must cost what a raw one costs); it adds three
things. It watches the status bits of each reply so the pool knows, at return, whether the
session is dirty. It refuses use after the connection went back. And when the connection turns
out to be broken, it decides whether the statement can be replayed on a fresh connection
(nothing could be lost or repeated) or the caller must hear about it (DESIGN section 3):

* inside a transaction: :class:`tether.TransactionLost`, never a silent replay;
* autocommit, request never sent, or a read-only / idempotent statement: replayed once;
* autocommit, a write that may have run: :class:`tether.OutcomeUnknown`.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from . import drivers as _drivers
from .classify import ErrorKind, classify
from .errors import ConnectionReleased, OutcomeUnknown, TransactionLost, driver_error

if TYPE_CHECKING:
    from .pool import Pool, _Entry

__all__ = ["Cursor", "PooledConnection", "is_read_only"]

_monotonic = time.monotonic
_IN_TRANS = _drivers.STATUS_IN_TRANS
_AUTOCOMMIT = _drivers.STATUS_AUTOCOMMIT
_STATE_CHANGED = _drivers.STATUS_SESSION_STATE_CHANGED
_MORE_RESULTS = _drivers.STATUS_MORE_RESULTS

# Errors that prove the request never reached the server: the driver failed writing it
# (2006 from PyMySQL's and libmariadb's write paths), or the server had already dropped the
# session and said so (4031) before reading it.
_NOT_SENT = {2006, 4031}

_LEADING = re.compile(r"(?:\s+|/\*.*?\*/|(?:--\s|#)[^\n]*(?:\n|$)|\()*", re.S)
_READ_ONLY_WORDS = {"SELECT", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "HELP", "VALUES", "TABLE"}
_DML_WORDS = {"INSERT", "UPDATE", "DELETE", "REPLACE"}
_WRITE_INSIDE = re.compile(r"\b(INSERT|UPDATE|DELETE|REPLACE|INTO\s+(OUTFILE|DUMPFILE))\b", re.I)


def first_word(query: str | bytes) -> str:
    if isinstance(query, bytes):
        query = query.decode("utf-8", "replace")
    start = _LEADING.match(query)
    rest = query[start.end() if start else 0 :]
    end = 0
    while end < len(rest) and (rest[end].isalpha() or rest[end] == "_"):
        end += 1
    return rest[:end].upper()


def is_read_only(query: str | bytes) -> bool:
    """Whether replaying ``query`` on a fresh session can change nothing on the server.

    ``SELECT``/``SHOW``/``EXPLAIN``-like statements, and ``WITH`` queries with no write in
    them. A ``SELECT`` calling a function with side effects is the caller's business:
    ``Pool(replay_reads=False)`` turns read replays off.
    """
    word = first_word(query)
    if word in _READ_ONLY_WORDS:
        text = query.decode("utf-8", "replace") if isinstance(query, bytes) else query
        return not (word == "SELECT" and re.search(r"\bINTO\s+(OUTFILE|DUMPFILE)\b", text, re.I))
    if word == "WITH":
        text = query.decode("utf-8", "replace") if isinstance(query, bytes) else query
        return _WRITE_INSIDE.search(text) is None
    return False


# Attributes of the raw connection that cannot change session state; anything else reached
# through the proxy's __getattr__ marks the session as unknown (reset or closed on return).
_SAFE_ATTRS = frozenset(
    {
        "open",
        "escape",
        "escape_string",
        "literal",
        "string_literal",
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
        "encoders",
        "decoders",
        "converter",
        "get_autocommit",
        "warning_count",
        "info",
        "host",
        "port",
        "user",
        "db",
        "server_status",
        "server_capabilities",
        "errno",
        "error",
        "sqlstate",
        "show_warnings",
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
        "messages",
        "cursorclass",
    }
)


class PooledConnection:
    """A checked-out connection. Use as a context manager, or call :meth:`close` to give it
    back. Everything the driver's connection offers is reachable through it."""

    __slots__ = ("__weakref__", "_entry", "_gen", "_pool", "_raw")

    def __init__(self, pool: Pool, entry: _Entry) -> None:
        self._pool = pool
        self._entry: _Entry | None = entry
        self._raw = entry.raw
        self._gen = entry.gen

    # -- lifecycle

    def __enter__(self) -> PooledConnection:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        entry = self._entry
        if entry is not None:
            self._entry = None
            self._pool._release(self, entry)

    def close(self) -> None:
        """Give the connection back to the pool (it is not closed)."""
        entry = self._entry
        if entry is None:
            raise ConnectionReleased("this connection was already returned to the pool")
        self._entry = None
        self._pool._release(self, entry)

    @property
    def closed(self) -> bool:
        return self._entry is None

    def __del__(self) -> None:
        entry = self._entry
        if entry is not None:
            # At interpreter shutdown the pool may be half torn down: nothing left to do.
            with contextlib.suppress(Exception):
                self._pool._on_proxy_collected(entry)

    def _use(self) -> _Entry:
        """The entry, renewed if its connection was replaced, or an error if returned."""
        entry = self._entry
        if entry is None:
            raise ConnectionReleased(
                "this connection was returned to the pool; check out another one"
            )
        if entry.raw is None:
            raise ConnectionReleased(
                "this connection is no longer usable (pool closed or process forked)"
            )
        if entry.broken:
            # The previous statement lost the connection; nothing is in flight now, so a
            # fresh one can take its place before anything is sent.
            self._pool._replace_raw(entry, _monotonic() + self._pool.timeout)
            entry.broken = False
        if self._gen != entry.gen:
            self._raw = entry.raw
            self._gen = entry.gen
        return entry

    # -- DB-API

    def cursor(self, *args: Any, **kwargs: Any) -> Cursor:
        entry = self._use()
        raw_cursor = self._raw.cursor(*args, **kwargs)
        # The connection's default cursor class was looked at when it was opened.
        unbuffered = (
            self._pool._driver.is_unbuffered(raw_cursor)
            if args or kwargs
            else entry.default_unbuffered
        )
        if unbuffered:
            entry.unbuffered += 1
        return Cursor(self, raw_cursor, args, kwargs, unbuffered)

    def begin(self) -> None:
        """Start a transaction (``BEGIN``)."""
        entry = self._use()
        self._run(entry, lambda raw: raw.begin(), "BEGIN", statement=None)

    def commit(self) -> None:
        entry = self._use()
        self._run(entry, lambda raw: raw.commit(), "COMMIT", statement=None)

    def rollback(self) -> None:
        entry = self._entry
        if entry is not None and entry.broken:
            return  # the server already rolled back when the connection died
        entry = self._use()
        self._run(entry, lambda raw: raw.rollback(), "ROLLBACK", statement=None)

    def autocommit(self, on: bool) -> None:
        """Switch autocommit for this checkout; restored when the connection goes back."""
        entry = self._use()
        self._run(entry, lambda raw: raw.autocommit(on), "SET autocommit", statement=None)

    def select_db(self, database: str) -> None:
        entry = self._use()
        self._run(entry, lambda raw: raw.select_db(database), "USE", statement=None)
        entry.session_dirty = True

    def stream(
        self,
        query: str | bytes,
        args: Any = None,
        *,
        batch: int = 1000,
        net_write_timeout: int | None = 600,
    ) -> Iterator[Any]:
        """Rows of a large result one at a time, never all in memory (a streaming cursor).

        The server gives up on a client that reads slower than ``net_write_timeout`` allows
        (error 2013 in the middle of the result); this raises it for the session while the
        stream is read (restored when the connection goes back). Stopping early is fine: the
        rest of the result is drained when the generator is closed.
        """
        if net_write_timeout is not None:
            self.cursor().execute("SET SESSION net_write_timeout = %s", (int(net_write_timeout),))
        cur = self.cursor(self._pool._driver.streaming_cursor())
        try:
            cur.execute(query, args)
            while True:
                rows = cur.fetchmany(batch)
                if not rows:
                    break
                yield from rows
        finally:
            cur.close()

    def ping(self) -> None:
        entry = self._use()
        self._pool._driver.ping(self._raw, self._pool.ping_timeout)
        entry.last_active = _monotonic()

    @property
    def raw(self) -> Any:
        """The driver's own connection. Using it directly bypasses tether's bookkeeping, so
        the connection is reset (or closed) when it goes back."""
        entry = self._use()
        entry.tainted = True
        return self._raw

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in self.__slots__:
            raise AttributeError(name)
        entry = self._use()
        if name not in _SAFE_ATTRS:
            entry.tainted = True
        return getattr(self._raw, name)

    def __repr__(self) -> str:
        entry = self._entry
        if entry is None:
            return f"<tether.PooledConnection returned to {self._pool.name!r}>"
        return f"<tether.PooledConnection session {entry.session_id} from {self._pool.name!r}>"

    # -- statement execution with failure semantics

    def _run(
        self,
        entry: _Entry,
        call: Any,
        what: str,
        *,
        statement: str | bytes | None,
        replayable: bool | None = None,
    ) -> Any:
        """Run ``call(raw)`` and turn a lost connection into the right outcome."""
        before = entry.last_status
        entry.busy_since = _monotonic()
        try:
            result = call(self._raw)
        except Exception as exc:
            entry.busy_since = 0.0
            return self._failed(entry, exc, before, call, what, statement, replayable)
        entry.busy_since = 0.0
        self._read_status(entry)
        return result

    def _read_status(self, entry: _Entry) -> None:
        """Keep the server's status bits of its last reply: the return path decides on them
        alone whether the session needs cleaning."""
        status = entry.status
        if status is not None:
            bits = status()
            entry.last_status = bits
            if bits & _STATE_CHANGED:
                entry.session_dirty = True
                self._pool._driver.clear_state_flag(self._raw)

    def _failed(
        self,
        entry: _Entry,
        exc: Exception,
        before: int,
        call: Any,
        what: str,
        statement: str | bytes | None,
        replayable: bool | None,
    ) -> Any:
        pool = self._pool
        driver = pool._driver
        kind = classify(exc, driver, pool.error_kinds)
        if kind is ErrorKind.READ_ONLY:
            # A demoted primary: this connection will keep failing writes; drop it on return
            # (and, with evict_on_read_only="pool", every other one too).
            entry.tainted = True
            entry.broken = True
            if pool.evict_on_read_only == "pool":
                pool._evict_all("server is read-only")
            raise exc
        if kind is not ErrorKind.DISCONNECT:
            raise exc
        entry.broken = True
        code = driver.error_code(exc) or 2013
        # PyMySQL's InterfaceError(0) means the socket was already gone: nothing was sent.
        not_sent = code in _NOT_SENT or isinstance(exc, driver.InterfaceError)
        in_transaction = bool(before & _IN_TRANS) or what == "COMMIT"
        autocommit = bool(before & _AUTOCOMMIT) if entry.status is not None else pool.autocommit
        if what == "COMMIT":
            if not_sent:
                pool._count("transactions_lost")
                raise _lost(driver, code, "COMMIT could not be sent", exc) from exc
            pool._count("outcomes_unknown")
            raise driver_error(
                OutcomeUnknown,
                driver.OperationalError,
                code,
                f"connection lost while COMMIT was in flight: the transaction may or may not"
                f" have been committed ({exc})",
            ) from exc
        if in_transaction:
            pool._count("transactions_lost")
            raise _lost(driver, code, f"during {what}", exc) from exc
        if what == "ROLLBACK":
            return None  # nothing to roll back any more
        if entry.watchdog_fired:
            # The server stopped answering (or lost the reply): replaying would only hang
            # again. Reads fail plainly; writes are in doubt.
            entry.watchdog_fired = False
            # BEGIN, ROLLBACK, SET autocommit and USE (statement None here) write nothing.
            wrote = statement is not None and not is_read_only(statement)
            kind_cls = OutcomeUnknown if wrote else None
            message = (
                f"no answer from the server within {pool.watchdog:g}s: the watchdog broke"
                f" the connection during {what}"
            )
            if kind_cls is None:
                raise driver.OperationalError(2013, message) from exc
            pool._count("outcomes_unknown")
            raise driver_error(
                kind_cls, driver.OperationalError, code, message + "; the write may have run"
            ) from exc
        if statement is None:
            safe = what in ("BEGIN", "SET autocommit", "USE") or not_sent
        elif replayable is not None:
            safe = replayable or not_sent
        elif not autocommit:
            # No transaction was open: whatever the statement did was rolled back with the
            # session, so running it again on a fresh connection changes nothing twice.
            safe = not_sent or is_read_only(statement) or first_word(statement) in _DML_WORDS
        else:
            safe = not_sent or (pool.replay_reads and is_read_only(statement))
        if not safe:
            pool._count("outcomes_unknown")
            raise driver_error(
                OutcomeUnknown,
                driver.OperationalError,
                code,
                f"connection lost during {what}; the statement may or may not have run ({exc})",
            ) from exc
        # Replay once on a fresh connection in the same slot.
        pool._count("replays")
        pool._replace_raw(entry, _monotonic() + pool.timeout)
        entry.broken = False
        self._raw = entry.raw
        self._gen = entry.gen
        entry.busy_since = _monotonic()
        try:
            result = call(self._raw)
        finally:
            entry.busy_since = 0.0
        self._read_status(entry)
        return result


def _lost(driver: _drivers.Driver, code: int, where: str, exc: Exception) -> BaseException:
    return driver_error(
        TransactionLost,
        driver.OperationalError,
        code,
        f"connection lost {where} inside a transaction: the server rolled the transaction"
        f" back and nothing of it was committed ({exc})",
    )


class Cursor:
    """A cursor of a pooled connection: the driver's cursor, with replay-or-raise on a lost
    connection and session-state tracking."""

    __slots__ = ("__weakref__", "_args", "_conn", "_cur", "_gen", "_kwargs", "_unbuffered")

    def __init__(
        self,
        conn: PooledConnection,
        cur: Any,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        unbuffered: bool,
    ) -> None:
        self._conn = conn
        self._cur = cur
        self._gen = conn._gen
        self._args = args
        self._kwargs = kwargs
        self._unbuffered = unbuffered

    def _fresh(self, raw: Any) -> Any:
        # After a replay the connection is a new one: so is the cursor.
        if self._gen != self._conn._gen:
            self._cur = raw.cursor(*self._args, **self._kwargs)
            self._gen = self._conn._gen
        return self._cur

    def execute(
        self,
        query: str | bytes,
        args: Any = None,
        *,
        idempotent: bool | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Execute ``query``. ``idempotent=True`` allows a replay of a write after a lost
        connection in autocommit mode (it must be safe to run twice). ``timeout`` bounds this
        statement on the server (MariaDB ``max_statement_time``; MySQL: SELECT only); the
        server aborts it with an error and the connection stays usable."""
        conn = self._conn
        if timeout is not None:
            query = conn._pool._with_statement_timeout(query, timeout)
        entry = conn._entry
        if entry is None or entry.broken or conn._gen != entry.gen or self._gen != conn._gen:
            entry = conn._use()
        else:
            # Hot path, inlined: one status read after the statement, nothing before it.
            before = entry.last_status
            entry.busy_since = _monotonic()
            try:
                result = self._cur.execute(query, args)
            except Exception as exc:
                entry.busy_since = 0.0
                return conn._failed(
                    entry,
                    exc,
                    before,
                    lambda raw: self._fresh(raw).execute(query, args),
                    "execute",
                    query,
                    idempotent,
                )
            entry.busy_since = 0.0
            status = entry.status
            if status is not None:  # inlined _read_status: this is the hot path
                bits = status()
                entry.last_status = bits
                if bits & _STATE_CHANGED:
                    entry.session_dirty = True
                    conn._pool._driver.clear_state_flag(conn._raw)
            return result
        return conn._run(
            entry,
            lambda raw: self._fresh(raw).execute(query, args),
            "execute",
            statement=query,
            replayable=idempotent,
        )

    def executemany(self, query: str | bytes, args: Sequence[Any]) -> Any:
        """Like the driver's; never replayed after a lost connection unless read-only (some
        rows may already have been written)."""
        conn = self._conn
        entry = conn._use()
        return conn._run(
            entry,
            lambda raw: self._fresh(raw).executemany(query, args),
            "executemany",
            statement=query,
            replayable=is_read_only(query),
        )

    def callproc(self, procname: str, args: Sequence[Any] = ()) -> Any:
        conn = self._conn
        entry = conn._use()
        return conn._run(
            entry,
            lambda raw: self._fresh(raw).callproc(procname, args),
            "callproc",
            statement=f"CALL {procname}",
            replayable=False,
        )

    def close(self) -> None:
        cur, self._cur = self._cur, None
        if cur is None:
            return
        conn = self._conn
        entry = conn._entry
        if entry is None or not (
            self._unbuffered
            or entry.last_status & _MORE_RESULTS
            or not conn._pool._driver.more_results_in_status
        ):
            cur.close()
            return
        # Closing may read what is left of the result (a streamed one, or more result sets),
        # whose last packet carries fresh status bits.
        try:
            cur.close()
        finally:
            if self._unbuffered:
                self._unbuffered = False
                if entry.unbuffered > 0:
                    entry.unbuffered -= 1
            if entry.raw is not None and not entry.broken:
                conn._read_status(entry)

    def nextset(self) -> Any:
        """Move to the next result set (multi-statement queries and procedures)."""
        conn = self._conn
        entry = conn._entry
        if entry is None or self._cur is None:
            raise ConnectionReleased("this cursor is closed")
        result = self._cur.nextset()
        conn._read_status(entry)
        return result

    def __enter__(self) -> Cursor:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._cur is not None:
            self.close()

    def __iter__(self) -> Iterator[Any]:
        return iter(self._cur)

    def fetchone(self) -> Any:
        return self._cur.fetchone()

    def fetchall(self) -> Any:
        return self._cur.fetchall()

    def fetchmany(self, size: int | None = None) -> Any:
        if size is None:
            return self._cur.fetchmany()
        return self._cur.fetchmany(size)

    @property
    def connection(self) -> PooledConnection:
        return self._conn

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in self.__slots__:
            raise AttributeError(name)
        cur = self._cur
        if cur is None:
            raise ConnectionReleased("this cursor is closed")
        return getattr(cur, name)
