"""The cursors a pooled connection hands out: the driver's own cursor class, extended.

``conn.cursor()`` returns an instance of a class made once per driver cursor class: a subclass
of both :class:`Cursor` and the driver's class (``pymysql.cursors.Cursor``,
``MySQLdb.cursors.DictCursor``, ...). Fetching from a buffered result, ``description``,
``rowcount`` and iteration are the driver's own, at the driver's own cost. Every call that talks
to the server goes through the connection, which marks the call in flight (the watchdog's cue;
a call cut short by an exception leaves the protocol state unknown and the connection is then
closed), and applies replay-or-raise if the connection is lost (see
:mod:`tether.connection`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from .statements import is_read_only

if TYPE_CHECKING:
    from .connection import PooledConnection
    from .entry import Entry

__all__ = ["Cursor", "DBAPICursor", "cursor_class"]


class DBAPICursor(Protocol):
    """The type of ``conn.cursor()``: a DB-API cursor with tether's ``execute`` options.
    (``conn.cursor(SomeDriverCursor)`` is typed as that class.)"""

    @property
    def description(self) -> Sequence[Sequence[Any]] | None: ...

    @property
    def rowcount(self) -> int: ...

    @property
    def lastrowid(self) -> int | None: ...

    def execute(
        self,
        query: str | bytes,
        args: Any = None,
        *,
        idempotent: bool | None = None,
        timeout: float | None = None,
    ) -> int: ...

    def executemany(self, query: str | bytes, args: Sequence[Any]) -> int | None: ...

    def callproc(self, procname: str, args: Sequence[Any] = ()) -> Any: ...

    def fetchone(self) -> Any: ...

    def fetchmany(self, size: int = ...) -> Sequence[Any]: ...

    def fetchall(self) -> Sequence[Any]: ...

    def nextset(self) -> bool | None: ...

    def close(self) -> None: ...

    def __iter__(self) -> Iterator[Any]: ...

    def __enter__(self) -> DBAPICursor: ...

    def __exit__(self, *exc: object) -> None: ...


class Cursor:
    """Mixed into the driver's own cursor class: every cursor a pooled connection hands out is
    an instance of both ``tether.Cursor`` and the driver's class. ``execute``,
    ``executemany`` and ``callproc`` add replay-or-raise on a lost connection;
    ``cursor.connection`` is the driver's connection, as the driver's cursor code needs it to
    be (whatever is done through it, a give-back reads the server's status bits afresh)."""

    __slots__ = ()

    # Set by cursor_class(): the driver's cursor class this one extends, and whether it
    # streams rows from the server (rows left unread make the connection unusable).
    _tether_base: ClassVar[type[Any]]
    _tether_unbuffered: ClassVar[bool] = False
    # Set on each instance by PooledConnection.cursor() (slots of the class cursor_class()
    # makes: Cursor itself has none, so that it mixes with any driver class).
    _tether_conn: PooledConnection
    _tether_entry: Entry

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
        if timeout is not None:
            query = conn._lender.statement_timeout(query, timeout)
        return conn._run(self, "execute", (query, args), query, idempotent)

    def executemany(self, query: str | bytes, args: Sequence[Any]) -> Any:
        """Like the driver's; after a lost connection it is replayed only if it cannot
        write (some rows may already have been written)."""
        conn = self._tether_conn
        return conn._run(self, "executemany", (query, args), query, is_read_only(query))

    def callproc(self, procname: str, args: Sequence[Any] = ()) -> Any:
        conn = self._tether_conn
        return conn._run(self, "callproc", (procname, args), f"CALL {procname}", False)

    def close(self) -> None:
        entry = self._tether_entry
        if entry.broken or entry.raw is None:
            # The driver's close() reads what is left of the results. On a connection lost or
            # out of step nothing can be read, and an error from trying would replace the
            # error the caller is handling (``with conn.cursor()`` around a call cut short;
            # Django closes the cursor of a failed statement before re-raising): the cursor
            # lets go of the connection without reading. The connection itself is closed
            # when it goes back.
            self._tether_conn._lender.driver.detach_cursor(self)
            return
        self._tether_base.close(self)

    def nextset(self) -> Any:
        # The one call of a buffered cursor that reads from the server after execute(): its
        # close() reads through it (results of a multi-statement left unread), so close()
        # needs no wrapping of its own.
        return self._tether_conn._io(self, "nextset", ())


class _UnbufferedCursor(Cursor):
    """A streaming cursor: fetching talks to the server, and the pool counts it open until
    closed (a connection given back with a result still streaming is closed, not reused)."""

    __slots__ = ()
    _tether_unbuffered = True

    def fetchone(self) -> Any:
        return self._tether_conn._io(self, "fetchone", ())

    def fetchmany(self, size: int | None = None) -> Any:
        return self._tether_conn._io(self, "fetchmany", () if size is None else (size,))

    def fetchall(self) -> Any:
        return self._tether_conn._io(self, "fetchall", ())

    def close(self) -> None:
        counted = self.__dict__.pop("_tether_open", False)
        try:
            self._tether_conn._io(self, "close", ())
        finally:
            entry = self._tether_entry
            if counted and entry.unbuffered > 0:
                entry.unbuffered -= 1


_cursor_classes: dict[tuple[type[Any], bool], type[Any]] = {}


def cursor_class(base: type[Any], unbuffered: bool) -> type[Any]:
    """The tether subclass of the driver's cursor class ``base`` (made once per class)."""
    if issubclass(base, Cursor):
        return base
    key = (base, unbuffered)
    cls = _cursor_classes.get(key)
    if cls is None:
        if not base.__dictoffset__:
            raise TypeError(f"cursor class {base.__qualname__} uses __slots__: not supported")
        mixin = _UnbufferedCursor if unbuffered else Cursor
        namespace = {
            "__slots__": ("_tether_conn", "_tether_entry"),
            "_tether_base": base,
            "__module__": "tether",
        }
        cls = type(base.__name__, (mixin, base), namespace)
        cls.__qualname__ = f"{mixin.__name__}[{base.__module__}.{base.__qualname__}]"
        _cursor_classes[key] = cls
    return cls
