"""What ``pool.connection()`` hands out: a DB-API connection proxy and its cursors.

Both are thin on purpose (a pooled query must cost what a raw one costs). A cursor is the
driver's own cursor class extended by :class:`Cursor`, so fetching and closing run the driver's
code alone. What tether adds: it notes, after each statement, the status bits of the reply (a
session state change is reported by that reply only); it refuses use after the connection went
back; and when the connection turns out to be broken, it decides whether the statement can be
replayed on a fresh connection (nothing could be lost or repeated) or the caller must hear
about it (DESIGN section 3):

* inside a transaction: :class:`tether.TransactionLost`, never a silent replay;
* autocommit, request never sent, or a read-only / idempotent statement: replayed once;
* autocommit, a write that may have run: :class:`tether.OutcomeUnknown`.
"""

from __future__ import annotations

import contextlib
import functools
import re
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from . import drivers as _drivers
from .classify import ErrorKind, classify
from .errors import ConnectionReleased, OutcomeUnknown, TransactionLost, driver_error

if TYPE_CHECKING:
    from .pool import Pool, _Entry

__all__ = ["Cursor", "PooledConnection", "cursor_class", "is_read_only"]

_monotonic = time.monotonic
_IN_TRANS = _drivers.STATUS_IN_TRANS
_AUTOCOMMIT = _drivers.STATUS_AUTOCOMMIT
_STATE_CHANGED = _drivers.STATUS_SESSION_STATE_CHANGED

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

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        """A cursor of the driver's own class (or of the class given, as the driver takes
        it), extended by :class:`tether.Cursor`."""
        entry = self._entry
        if entry is None or entry.broken or entry.raw is None or self._gen != entry.gen:
            entry = self._use()
        raw = self._raw
        base: Any = None
        if args or kwargs:
            # The cursor class, given the way the driver's cursor() takes it (positional;
            # PyMySQL's cursor=, mysqlclient's cursorclass=); None is the default class.
            one = len(args) + len(kwargs) == 1 and kwargs.keys() <= {"cursor", "cursorclass"}
            base = (args or tuple(kwargs.values()))[0] if one else None
            if not one or not (base is None or isinstance(base, type)):
                raise TypeError(
                    "cursor() takes one argument, the driver's cursor class"
                    f" (got {args!r}, {kwargs!r})"
                )
        if base is None:
            cur = entry.cursor_class(raw)
        else:
            cur = cursor_class(base, self._pool._driver.is_unbuffered(base))(raw)
        cur._tether_conn = self
        cur._tether_gen = entry.gen
        if cur._tether_unbuffered:
            cur._tether_open = True
            entry.unbuffered += 1
        return cur

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
            # A proxy kept for reuse by the compiled give-back lets go of its pool (a spare
            # that held it would keep the pool alive in a cycle).
            pool: Pool | None = self._pool
            where = f" to {pool.name!r}" if pool is not None else ""
            return f"<tether.PooledConnection returned{where}>"
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
        """Keep the server's status bits of its last reply (what a lost connection is judged
        on) and note a session state change, which only this reply reports."""
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
        autocommit = pool.autocommit
        if entry.status is not None:
            if entry.raw is not None:
                # What the driver kept of the last reply it read: a nextset(), a close that
                # drained results or the driver's connection used directly may have moved
                # the session on since the last statement. Either source saying "in a
                # transaction" or "autocommit" is believed: both lead to the stricter rule.
                before |= entry.status()
            autocommit = bool(before & _AUTOCOMMIT)
        in_transaction = bool(before & _IN_TRANS) or what == "COMMIT"
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
    """Mixed into the driver's own cursor class: every cursor a pooled connection hands out is
    an instance of both ``tether.Cursor`` and the driver's class (``pymysql.cursors.Cursor``,
    ``MySQLdb.cursors.DictCursor``, ...). Fetching, iterating, ``description``, ``rowcount``
    and ``close()`` are the driver's own, at the driver's own cost; ``execute``,
    ``executemany`` and ``callproc`` add replay-or-raise on a lost connection and keep the
    session's status bits. ``cursor.connection`` is the driver's connection, as the driver's
    cursor code needs it to be: use the pooled connection for anything else.
    """

    __slots__ = ()

    # Set by cursor_class(): the driver's cursor class this one extends, and whether it
    # streams rows from the server (rows left unread make the connection unusable).
    _tether_base: ClassVar[type[Any]]
    _tether_unbuffered: ClassVar[bool] = False
    # Set on each instance by PooledConnection.cursor(): slots of the class cursor_class()
    # makes (Cursor itself has none, so that it mixes with any driver class).
    _tether_conn: PooledConnection
    _tether_gen: int

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
        conn = self._tether_conn
        entry = conn._entry
        if timeout is not None or entry is None or entry.broken or self._tether_gen != entry.gen:
            return self._tether_run("execute", query, args, idempotent, timeout)
        # The hot path: nothing before the statement but a timestamp for the watchdog, one
        # status read after it.
        entry.busy_since = _monotonic()
        try:
            result = self._tether_base.execute(self, query, args)
        except Exception as exc:
            entry.busy_since = 0.0
            return conn._failed(
                entry,
                exc,
                entry.last_status,
                self._tether_redo("execute", query, args),
                "execute",
                query,
                idempotent,
            )
        entry.busy_since = 0.0
        status = entry.status
        if status is not None:  # PooledConnection._read_status, inline: the hot path
            bits = status()
            entry.last_status = bits
            if bits & _STATE_CHANGED:
                entry.session_dirty = True
                conn._pool._driver.clear_state_flag(entry.raw)
        return result

    def executemany(self, query: str | bytes, args: Sequence[Any]) -> Any:
        """Like the driver's; never replayed after a lost connection unless read-only (some
        rows may already have been written)."""
        return self._tether_run("executemany", query, args, is_read_only(query), None)

    def callproc(self, procname: str, args: Sequence[Any] = ()) -> Any:
        return self._tether_run("callproc", f"CALL {procname}", (procname, args), False, None)

    def _tether_redo(self, method: str, query: Any, args: Any) -> Any:
        """``call(raw)`` for PooledConnection._run: the driver's ``method`` on ``raw``,
        rebinding this cursor first when the connection was replaced (a replay)."""
        base = self._tether_base

        def call(raw: Any) -> Any:
            conn = self._tether_conn
            entry = conn._entry
            if entry is not None and self._tether_gen != entry.gen:
                base.__init__(self, raw)  # a fresh cursor state on the fresh connection
                self._tether_gen = entry.gen  # type: ignore[misc]  # a slot of the subclass
            if method == "execute":
                return base.execute(self, query, args)
            if method == "callproc":
                return base.callproc(self, *args)
            # The driver's executemany may call self.execute per row: for the duration, that
            # is the driver's own (the whole batch has one replay-or-raise decision).
            self.execute = functools.partial(base.execute, self)  # type: ignore[method-assign]
            try:
                return base.executemany(self, query, args)
            finally:
                del self.execute

        return call

    def _tether_run(
        self,
        method: str,
        query: str | bytes,
        args: Any,
        replayable: bool | None,
        timeout: float | None,
    ) -> Any:
        conn = self._tether_conn
        if timeout is not None:
            query = conn._pool._with_statement_timeout(query, timeout)
        entry = conn._use()
        return conn._run(
            entry,
            self._tether_redo(method, query, args),
            method,
            statement=query,
            replayable=replayable,
        )


class _UnbufferedCursor(Cursor):
    """A streaming cursor: the pool counts it open until closed (a connection given back with
    a result still streaming is closed, not reused)."""

    __slots__ = ()
    _tether_unbuffered = True

    def close(self) -> None:
        counted = self.__dict__.pop("_tether_open", False)
        try:
            self._tether_base.close(self)
        finally:
            entry = self._tether_conn._entry
            if counted and entry is not None and entry.unbuffered > 0:
                entry.unbuffered -= 1


_cursor_classes: dict[tuple[type[Any], bool], type[Any]] = {}


def cursor_class(base: type[Any], unbuffered: bool) -> type[Any]:
    """The tether subclass of the driver's cursor class ``base`` (made once per class)."""
    key = (base, unbuffered)
    cls = _cursor_classes.get(key)
    if cls is None:
        if issubclass(base, Cursor):
            return base
        if not base.__dictoffset__:
            raise TypeError(f"cursor class {base.__qualname__} uses __slots__: not supported")
        mixin = _UnbufferedCursor if unbuffered else Cursor
        # The two attributes every cursor gets as slots beside the driver's __dict__: set
        # and read on every statement, a fixed place is cheaper than the instance dict (and
        # the compiled paths read it directly).
        namespace = {
            "__slots__": ("_tether_conn", "_tether_gen"),
            "_tether_base": base,
            "__module__": "tether",
        }
        cls = type(base.__name__, (mixin, base), namespace)
        cls.__qualname__ = f"{mixin.__name__}[{base.__module__}.{base.__qualname__}]"
        _cursor_classes[key] = cls
    return cls
