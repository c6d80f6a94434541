"""What ``pool.connection()`` hands out: a DB-API connection proxy.

It is thin on purpose (a pooled query must cost what a raw one costs). What tether adds: it
refuses use after the connection went back; it marks each call in flight while it talks to
the server (the watchdog's cue, and the sign that a call cut short by an exception left the
protocol state unknown); it notes, after each statement, the status bits of the reply (a
session state change is reported by that reply only); and when the connection turns out to
be lost, it applies :func:`tether.policy.after_disconnect`: replay on a fresh connection
where nothing can be lost or repeated, else tell the caller (DESIGN section 3):

* inside a transaction: :class:`tether.TransactionLost`, never a silent replay;
* a write that may have run: :class:`tether.OutcomeUnknown`;
* a read (or a statement never sent) on a session that held nothing it could depend on:
  replayed once; on a session that held state: the driver's own error.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, TypeVar, overload

from .classify import ErrorKind, classify
from .cursor import DBAPICursor, cursor_class
from .drivers import SAFE_ATTRIBUTES
from .entry import Entry, Lease
from .errors import ConnectionReleased, driver_error
from .lender import Lender
from .outcomes import failure_outcome, interrupted, lost_error, note_reply
from .policy import Outcome

__all__ = ["PooledConnection"]

C = TypeVar("C")

# What _failed() tells _run() when it does not raise.
_IGNORE = object()


class PooledConnection:
    """A checked-out connection. Use as a context manager, or call :meth:`close` to give it
    back. Everything the driver's connection offers is reachable through it."""

    __slots__ = ("__weakref__", "_lease", "_lender")

    def __init__(self, lender: Lender, lease: Lease) -> None:
        self._lender = lender
        self._lease: Lease | None = lease

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> PooledConnection:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self._lease is not None:
            self.close()

    def close(self) -> None:
        """Give the connection back to the pool (the server connection stays open)."""
        lease = self._lease
        if lease is None:
            raise self._released("this connection was already returned to the pool")
        self._lender.give_back(lease)
        self._lease = None

    @property
    def closed(self) -> bool:
        """Whether this connection was given back (or taken away by the pool)."""
        lease = self._lease
        return lease is None or lease.entry is None or lease.entry.holder is not lease

    @property
    def open(self) -> bool:
        """The driver's ``open``: false once given back."""
        if self.closed:
            return False
        assert self._lease is not None and self._lease.entry is not None
        raw = self._lease.entry.raw
        return raw is not None and bool(raw.open)

    def _released(self, message: str) -> BaseException:
        return driver_error(ConnectionReleased, self._lender.driver.InterfaceError, 0, message)

    def _live(self) -> Entry:
        """The entry, renewed if its connection was lost, or an error if it went back."""
        lease = self._lease
        if lease is None:
            raise self._released("this connection was returned to the pool; check out another")
        entry = lease.entry
        if entry is None or entry.holder is not lease:
            raise self._released(
                "this connection is no longer usable (the pool closed it, or the process forked)"
            )
        if entry.broken or entry.raw is None:
            entry = self._renew(lease, entry)
        return entry

    def _renew(self, lease: Lease, entry: Entry) -> Entry:
        """The previous call lost the connection (nothing is in flight now): a fresh one takes
        its place before anything is sent, unless the caller has not yet heard what the
        loss cost (an interrupted call inside a transaction, or on a session holding state)."""
        lost, entry.unreported = entry.unreported, None
        driver = self._lender.driver
        if lost == "transaction":
            self._lender.count("transactions_lost")
            raise lost_error(driver, 2013, "earlier (a call was interrupted)")
        if lost == "session":
            raise driver.OperationalError(
                2013,
                "Lost connection to server earlier (a call was interrupted): the session and"
                " what it held are gone; the next statement runs on a fresh session",
            )
        return self._lender.renew(lease)

    # ------------------------------------------------------------------ DB-API

    @overload
    def cursor(self) -> DBAPICursor: ...

    @overload
    def cursor(self, cursorclass: type[C], /) -> C: ...

    @overload
    def cursor(self, *, cursor: type[C]) -> C: ...

    @overload
    def cursor(self, *, cursorclass: type[C]) -> C: ...

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        """A cursor of the driver's own class (or of the class given, as the driver takes
        it), extended by :class:`tether.Cursor`."""
        entry = self._live()
        cls = entry.cursor_class
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
            if base is not None:
                cls = cursor_class(base, self._lender.driver.is_unbuffered(base))
        cur = cls(entry.raw)
        cur._tether_conn = self
        cur._tether_entry = entry
        if cls._tether_unbuffered:
            cur._tether_open = True
            entry.unbuffered += 1
        return cur

    def begin(self) -> None:
        """Start a transaction (``BEGIN``)."""
        self._run(None, "begin", (), "BEGIN", None)

    def commit(self) -> None:
        self._run(None, "commit", (), "COMMIT", None)

    def rollback(self) -> None:
        lease = self._lease
        entry = lease.entry if lease is not None else None
        if entry is not None and entry.holder is lease and entry.broken:
            entry.unreported = None  # the server rolled back when the connection died
            return
        self._run(None, "rollback", (), "ROLLBACK", None)

    def autocommit(self, on: bool) -> None:
        """Switch autocommit for this check-out; restored when the connection goes back."""
        entry = self._live()
        # The server flags the switch as a change of session state, but the status bits of
        # every reply say how autocommit stands and the give-back restores it: the switch
        # alone leaves nothing a reset is needed for (ORMs switch it for every transaction).
        # Where the driver can't report the bits, the flag stays the only record.
        clean = not entry.dirty and entry.status is not None
        self._run(None, "autocommit", (on,), "SET autocommit", None)
        lease = self._lease
        if clean and lease is not None and lease.entry is entry:
            entry.dirty = False

    def select_db(self, database: str) -> None:
        self._run(None, "select_db", (database,), "USE", None)
        self._live().dirty = True

    def ping(self, reconnect: bool = False) -> None:
        """A round trip, bounded by the pool's ``ping_timeout``. A dead connection raises
        the driver's error; with ``reconnect=True`` it is replaced instead, unless a
        transaction was open (:class:`tether.TransactionLost`) or the session held state
        (the driver's error): a silent reconnect must not lose either."""
        self._run(None, "ping", (), "PING" if reconnect else "PING, no reconnect", None)

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
        cur = self.cursor(self._lender.driver.streaming_cursor())
        try:
            cur.execute(query, args)
            while True:
                rows = cur.fetchmany(batch)
                if not rows:
                    break
                yield from rows
        finally:
            cur.close()

    @property
    def raw(self) -> Any:
        """The driver's own connection. Using it directly bypasses tether's bookkeeping, so
        the session is reset when the connection goes back."""
        entry = self._live()
        entry.dirty = True
        return entry.raw

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_lease", "_lender"):
            raise AttributeError(name)
        entry = self._live()
        if name not in SAFE_ATTRIBUTES:
            entry.dirty = True
        return getattr(entry.raw, name)

    def __repr__(self) -> str:
        lease = self._lease
        entry = lease.entry if lease is not None else None
        if entry is None or lease is None or entry.holder is not lease:
            return f"<tether.PooledConnection returned to {self._lender.name!r}>"
        return f"<tether.PooledConnection session {entry.session_id} from {self._lender.name!r}>"

    # ------------------------------------------------------------------ calls

    def _call(self, entry: Entry, cursor: Any, method: str, args: tuple[Any, ...]) -> Any:
        """The driver's ``method``: the cursor's (rebound to ``entry`` if the connection was
        replaced since it was made) or the connection's."""
        if cursor is None:
            if method == "ping":
                return self._lender.driver.ping(entry.raw, self._lender.config.ping_timeout)
            return getattr(entry.raw, method)(*args)
        if cursor._tether_entry is not entry:
            cursor._tether_base.__init__(cursor, entry.raw)  # a fresh cursor state
            cursor._tether_entry = entry
            if cursor.__dict__.get("_tether_open"):
                entry.unbuffered += 1
        return getattr(cursor._tether_base, method)(cursor, *args)

    def _run(
        self,
        cursor: Any,
        method: str,
        args: tuple[Any, ...],
        what: str | bytes,
        replayable: bool | None,
    ) -> Any:
        """Run a call that talks to the server, with the failure semantics. ``what`` is the
        statement (for a cursor's call) or the name of the connection-level call."""
        entry = self._live()
        if entry.in_flight:
            # Inside one of our own calls (the driver's executemany runs execute per row):
            # the whole batch has one in-flight mark and one replay-or-raise decision.
            return self._call(entry, cursor, method, args)
        before = entry.last_status
        entry.in_flight = time.monotonic()
        try:
            result = self._call(entry, cursor, method, args)
        except BaseException as exc:
            # (Called inside the handler: a bare ``raise`` there re-raises ``exc``.)
            return self._recover(entry, exc, before, cursor, method, args, what, replayable)
        self._noted(entry, what if cursor is not None else None)
        return result

    def _recover(
        self,
        entry: Entry,
        exc: BaseException,
        before: int,
        cursor: Any,
        method: str,
        args: tuple[Any, ...],
        what: str | bytes,
        replayable: bool | None,
    ) -> Any:
        """A call failed: raise what it means, or run it once more on a fresh connection
        (see :meth:`_failed`). Runs inside the handler of the call's exception."""
        statement = what if cursor is not None else None
        name = method if cursor is not None else str(what)
        fresh = self._failed(entry, exc, before, name, statement, replayable, attempt=1)
        if fresh is None:
            raise  # noqa: PLE0704 - the call's own exception, being handled by the caller
        if fresh is _IGNORE:
            return None
        entry = fresh
        before = entry.last_status
        entry.in_flight = time.monotonic()
        try:
            result = self._call(entry, cursor, method, args)
        except BaseException as again:
            if self._failed(entry, again, before, name, statement, replayable, 2) is _IGNORE:
                return None
            raise  # a second attempt is never replayed
        self._noted(entry, statement)
        return result

    def _noted(self, entry: Entry, statement: str | bytes | None) -> None:
        note_reply(self._lender.driver, entry, statement)

    def _io(self, cursor: Any, method: str, args: tuple[Any, ...]) -> Any:
        """A cursor call that may read from the server but runs no statement (fetching a
        streamed result, moving to the next result set, closing): marked in flight, no
        replay. After the connection went back, the driver's own call."""
        base = cursor._tether_base
        lease = self._lease
        entry = cursor._tether_entry
        if lease is None or entry.holder is not lease or entry.raw is None:
            return getattr(base, method)(cursor, *args)
        if entry.broken:
            # Lost, or a call on it was cut short (it is out of step with the server): what
            # is left of the result can't be read. Closing the cursor reads nothing: the
            # connection is closed when it goes back.
            if method == "close":
                self._lender.driver.detach_cursor(cursor)
                return None
            raise self._lender.driver.OperationalError(
                2013, "Lost connection to server: the result can no longer be read"
            )
        if entry.in_flight:
            return getattr(base, method)(cursor, *args)  # inside one of our own calls
        entry.in_flight = time.monotonic()
        try:
            result = getattr(base, method)(cursor, *args)
        except BaseException as exc:
            driver = self._lender.driver
            if isinstance(exc, driver.Error):
                entry.in_flight = 0.0
                if classify(exc, driver, self._lender.config.error_kinds) is ErrorKind.DISCONNECT:
                    entry.broken = True
            else:
                self._interrupted(entry)
            raise
        entry.in_flight = 0.0
        return result

    def _interrupted(self, entry: Entry) -> None:
        interrupted(self._lender, entry, None, "fetch")

    def _failed(
        self,
        entry: Entry,
        exc: BaseException,
        before: int,
        what: str,
        statement: str | bytes | None,
        replayable: bool | None,
        attempt: int,
    ) -> Any:
        """Decide what a failed call means (:func:`failure_outcome`). Returns ``None`` (the
        caller re-raises the original error), ``_IGNORE`` (the call returns ``None``), or a
        fresh entry to run the call again on; raises tether's own errors."""
        outcome = failure_outcome(
            self._lender, entry, exc, before, what, statement, replayable, attempt
        )
        if outcome is None:
            return None
        if outcome is Outcome.IGNORE:
            return _IGNORE
        self._lender.count("replays")
        return self._lender.renew(self._lease)  # type: ignore[arg-type]
