"""The DB-API connection SQLAlchemy holds: a tether check-out seen as a driver connection.

SQLAlchemy drives a MySQL connection as the DB-API describes one with autocommit off: it
never sends ``BEGIN``, every statement runs inside a transaction, and ``commit()`` or
``rollback()`` ends it (a ``rollback()`` at least once per use: when its ``Connection`` or
``Session`` closes, and again when the connection goes back to its pool). tether's sessions
run in autocommit, so a read costs one round trip and a give-back none. This class joins the
two: a transaction is opened on the server (``BEGIN``) just before the first statement that
needs one (a write, a locking read, a ``SAVEPOINT``), and ``commit()`` / ``rollback()`` cost
a round trip only when one was opened. Reads before the first write of a transaction run in
autocommit: each sees the latest committed data. ``lazy_begin=False`` opens the transaction
before the first statement of any kind, for a single snapshot across all its reads.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from ...connection import PooledConnection
from ...errors import ConnectionReleased, driver_error
from ...pool import Pool
from ...statements import first_word, is_read_only

__all__ = ["SessionConnection"]

# What a statement means for the transaction SQLAlchemy believes is open.
_READ = 0  # needs no transaction (in lazy mode)
_NEVER = 1  # never opens one: session settings, DDL (which commits anyway), inspection
_WRITE = 2  # needs the transaction open on the server first
_OPENS = 3  # opens one itself (BEGIN, START TRANSACTION)
_ENDS = 4  # ends one itself (COMMIT, ROLLBACK)

_NEVER_WORDS = frozenset(
    {"SET", "SHOW", "USE", "CREATE", "ALTER", "DROP", "TRUNCATE", "RENAME", "ANALYZE",
     "OPTIMIZE", "CHECK", "GRANT", "REVOKE", "FLUSH", "KILL", "DESCRIBE", "DESC", "EXPLAIN",
     "XA", "LOCK", "UNLOCK", "HELP", "DO"}
)  # fmt: skip
_LOCKING_READ = re.compile(r"\bFOR\s+(UPDATE|SHARE)\b|\bLOCK\s+IN\s+SHARE\s+MODE\b", re.I)
_TO_SAVEPOINT = re.compile(r"\bTO\b", re.I)
_SET_NAMES = re.compile(r"\s*SET\s+NAMES\s+'?(\w+)'?\s*$", re.I)

# Statement texts are few (SQLAlchemy caches its compiled statements): their kind is
# remembered, so the hot path costs a dictionary look-up.
_kinds: dict[str | bytes, int] = {}
_KINDS_KEPT = 2000


def statement_kind(query: str | bytes) -> int:
    kind = _kinds.get(query)
    if kind is not None:
        return kind
    word = first_word(query)
    if is_read_only(query):
        text = query.decode("utf-8", "replace") if isinstance(query, bytes) else query
        kind = _WRITE if _LOCKING_READ.search(text) else _READ
    elif word in ("BEGIN", "START"):
        kind = _OPENS
    elif word in ("COMMIT", "ROLLBACK"):
        text = query.decode("utf-8", "replace") if isinstance(query, bytes) else query
        kind = _WRITE if _TO_SAVEPOINT.search(text) else _ENDS
    elif word in _NEVER_WORDS:
        kind = _NEVER
    else:
        kind = _WRITE
    if len(_kinds) >= _KINDS_KEPT:
        _kinds.clear()
    _kinds[query] = kind
    return kind


def given_back(driver: Any) -> BaseException:
    """Use of a connection SQLAlchemy already gave back: the driver's ``InterfaceError``."""
    return driver_error(
        ConnectionReleased,
        driver.InterfaceError,
        0,
        "this connection was given back to the tether pool",
    )


class SessionConnection:
    """One SQLAlchemy pool record's DB-API connection. It holds a tether check-out only while
    SQLAlchemy has it checked out (:class:`tether.contrib.sqlalchemy.TetherPool` takes it at
    check-out and gives it back at check-in); ``close()`` gives it back too."""

    __slots__ = ("_autocommit", "_began", "_conn", "_emulate", "_lazy", "_pool")

    def __init__(self, pool: Pool, *, lazy_begin: bool = True) -> None:
        self._pool = pool
        self._conn: PooledConnection | None = None
        self._began = False  # a transaction is open on the server
        self._autocommit = False  # SQLAlchemy's AUTOCOMMIT isolation level
        self._lazy = lazy_begin
        # A tether pool made with autocommit=False runs transactions the driver's way; this
        # then only passes calls on.
        self._emulate = pool.config.autocommit

    # ------------------------------------------------------------------ pool side

    def check_out(self) -> None:
        if self._conn is None:
            self._conn = self._pool.connection()

    def give_back(self) -> None:
        conn, self._conn = self._conn, None
        self._began = False
        if conn is not None and not conn.closed:
            conn.close()

    @property
    def checked_out(self) -> bool:
        return self._conn is not None

    # ------------------------------------------------------------------ DB-API

    def _live(self) -> PooledConnection:
        conn = self._conn
        if conn is None:
            raise given_back(self._pool.driver)
        return conn

    def cursor(self, *args: Any, **kwargs: Any) -> SessionCursor:
        return SessionCursor(self, self._live().cursor(*args, **kwargs))

    def before(self, query: str | bytes) -> bool:
        """Open the server transaction SQLAlchemy believes is open, if ``query`` needs it.
        Returns ``False`` for a statement that need not reach the server at all."""
        if not self._emulate:
            return True
        kind = statement_kind(query)
        if kind == _OPENS:
            self._began = True
        elif kind == _ENDS:
            self._began = False
        elif kind == _NEVER:
            match = _SET_NAMES.match(query) if isinstance(query, str) else None
            # SQLAlchemy's MySQL dialects send SET NAMES with the charset the connection
            # already has, once per new pool record: a no-op that would mark the session as
            # changed (a reset at every give-back). It is skipped.
            conn = self._live()
            if (
                match is not None
                and match.group(1).lower() == str(conn.character_set_name()).lower()
            ):
                return False
        elif not self._began and not self._autocommit and (kind == _WRITE or not self._lazy):
            self._live().begin()
            self._began = True
        return True

    def commit(self) -> None:
        if not self._emulate:
            self._live().commit()
        elif self._began:
            self._began = False
            self._live().commit()

    def rollback(self) -> None:
        if not self._emulate:
            self._live().rollback()
        elif self._began:
            self._began = False
            self._live().rollback()

    def autocommit(self, on: bool) -> None:
        """SQLAlchemy's ``AUTOCOMMIT`` isolation level (and back)."""
        if not self._emulate:
            self._live().autocommit(on)
            return
        if on and self._began:
            self.commit()  # as the server does when autocommit is switched on
        self._autocommit = bool(on)

    def get_autocommit(self) -> bool:
        if not self._emulate:
            return bool(self._live().get_autocommit())
        return self._autocommit

    def ping(self, *args: Any) -> Any:
        return self._live().ping(*args)

    def close(self) -> None:
        """SQLAlchemy closes a connection it invalidated or disposed of: it goes back to
        tether, which closes it if it was lost and keeps it otherwise."""
        self.give_back()

    @property
    def in_transaction(self) -> bool:
        """Whether a transaction is open on the server (what a ``rollback()`` would undo)."""
        return self._began

    @property
    def tether_connection(self) -> PooledConnection:
        """The tether connection checked out for this use."""
        return self._live()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._live(), name)

    def __repr__(self) -> str:
        state = repr(self._conn) if self._conn is not None else "given back"
        return f"<tether SQLAlchemy connection of {self._pool.name!r}: {state}>"


class SessionCursor:
    """The cursor of a :class:`SessionConnection`: the tether cursor, with the transaction
    opened on the server before a statement that needs one."""

    __slots__ = ("_cur", "_session")

    def __init__(self, session: SessionConnection, cur: Any) -> None:
        object.__setattr__(self, "_session", session)
        object.__setattr__(self, "_cur", cur)

    def execute(self, query: str | bytes, args: Any = None) -> Any:
        if not self._session.before(query):
            return 0
        return self._cur.execute(query, args)

    def executemany(self, query: str | bytes, args: Any) -> Any:
        self._session.before(query)
        return self._cur.executemany(query, args)

    def callproc(self, name: str, args: Any = ()) -> Any:
        self._session.before("CALL")
        return self._cur.callproc(name, args)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._cur)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cur, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._cur, name, value)
