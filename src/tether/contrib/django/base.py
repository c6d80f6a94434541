"""``ENGINE = "tether.contrib.django"``: Django's MySQL backend with pooled connections.

Everything is Django's own MySQL backend (features, introspection, operations, schema editor,
creation, the cursor wrapper that turns some errors into ``IntegrityError``) except where a
connection comes from and where it goes:

* ``get_new_connection`` checks one out of the alias's tether pool (a
  :class:`tether.PooledConnection`, which behaves as the driver's connection does);
* ``_close`` gives it back: Django closes its connection at the end of each request
  (``CONN_MAX_AGE = 0``), or when it is older than ``CONN_MAX_AGE``, or after an error when it
  is no longer usable;
* ``init_connection_state`` runs no statement: the isolation level (and
  ``sql_auto_is_null = 0``) are the pool's init commands, applied once per server session;
* ``is_usable`` asks no round trip: a connection that went back, or whose socket is gone, is
  not usable; the pool checks every connection's transport before handing it out and replaces
  a lost one, so ``CONN_HEALTH_CHECKS`` costs nothing and adds nothing;
* a cursor asked for after the held connection sat idle longer than the pool's ``ping_after``
  (a ``manage.py shell`` or a management command that slept past ``wait_timeout``) is looked
  at first: a session that holds nothing is given back and checked out again (the pool hands
  out the same one if it is alive, a fresh one if not); otherwise it is pinged with
  ``reconnect=True``: replaced only where that loses nothing, else ``TransactionLost`` or the
  driver's error, the rules tether applies everywhere;
* ``_set_autocommit`` sends nothing when the session already has the wanted mode (Django sets
  it on every connect).

Errors are the driver's (tether's ``TransactionLost`` and ``OutcomeUnknown`` are also its
``OperationalError``), so Django turns them into ``django.db.OperationalError`` with the tether
error as ``__cause__``.
"""

from __future__ import annotations

import copy
import time
from typing import Any

from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.mysql import base as mysql
from django.utils.asyncio import async_unsafe

from ...connection import PooledConnection
from ...pool import Pool
from .pools import driver_of, pool_for, pool_settings

__all__ = ["Database", "DatabaseWrapper"]

Database = mysql.Database
_OLD_MYSQLCLIENT = Database.__name__ == "MySQLdb" and tuple(Database.version_info) < (2, 1)


class DatabaseWrapper(mysql.DatabaseWrapper):  # type: ignore[misc]
    """Django's MySQL ``DatabaseWrapper`` on a tether pool."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # When the held connection last had a cursor made on it, and how long it may sit
        # idle before the next cursor pings it first (the pool's ping_after).
        self._tether_used = 0.0
        self._tether_ping_after = 1.0
        self._tether_cached: tuple[tuple[Any, ...], Pool] | None = None

    # ------------------------------------------------------------------ the pool

    @property
    def pool(self) -> Pool:
        """This alias's pool in this process (made on first use)."""
        return self._tether_pool(self.get_connection_params())

    def _tether_pool(self, conn_params: dict[str, Any]) -> Pool:
        options = self.settings_dict.get("OPTIONS") or {}
        autocommit = self.settings_dict["AUTOCOMMIT"]
        key = (conn_params, self.isolation_level, autocommit, options.get("POOL"))
        cached = self._tether_cached
        # Each request's connect() lands here: the same settings find the same pool without
        # rebuilding them (a pool replaced by a change of settings is closed, never reused).
        if cached is not None and cached[0] == key and not cached[1].closed:
            return cached[1]
        dsn, settings = pool_settings(
            self.alias,
            conn_params,
            driver=driver_of(Database),
            isolation_level=self.isolation_level,
            autocommit=autocommit,
            pool_options=options.get("POOL"),
        )
        pool = pool_for(self.alias, dsn, settings)
        self._tether_cached = (copy.deepcopy(key), pool)
        return pool

    def get_connection_params(self) -> dict[str, Any]:
        params: dict[str, Any] = super().get_connection_params()
        params.pop("POOL", None)  # tether's options, not the driver's
        return params

    @async_unsafe  # type: ignore[untyped-decorator]
    def get_new_connection(self, conn_params: dict[str, Any]) -> PooledConnection:
        pool = self._tether_pool(conn_params)
        conn = _checked_out(pool)
        self._tether_ping_after = pool.config.ping_after
        self._tether_used = time.monotonic()
        return conn

    def init_connection_state(self) -> None:
        # Django's MySQL backend sets the isolation level (and sql_auto_is_null) here with a
        # statement per connection; they are the pool's init commands instead, set once per
        # server session. What the base class does (the version check) stays.
        BaseDatabaseWrapper.init_connection_state(self)

    @async_unsafe  # type: ignore[untyped-decorator]
    def create_cursor(self, name: str | None = None) -> Any:
        conn: PooledConnection = self.connection
        now = time.monotonic()
        if now - self._tether_used > self._tether_ping_after:
            conn = self._tether_revalidate(conn)
        self._tether_used = now
        return mysql.CursorWrapper(conn.cursor())

    def _tether_revalidate(self, conn: PooledConnection) -> PooledConnection:
        """The held connection sat idle (a shell, a command that slept past wait_timeout):
        look at it before a statement is sent, as the pool does at a check-out."""
        # tether's own proxy: its lease says whether the session holds anything.
        lease = conn._lease
        entry = lease.entry if lease is not None else None
        if not self.in_atomic_block and self.get_autocommit() and entry and not entry.dirty:
            # Nothing in this session a fresh one would lack: give it back and check out
            # again; the pool hands the same session back if it is alive (a poll or a
            # ping) and a fresh one if it is not, without an error.
            pool: Pool = conn._lender  # type: ignore[assignment]
            conn.close()
            self.connection = conn = _checked_out(pool)
            return conn
        # A transaction, or session state: a lost connection is replaced only where that
        # loses nothing; otherwise the caller hears of it (TransactionLost, or the driver's
        # error), as it would on the statement itself.
        conn.ping(reconnect=True)
        return conn

    def _set_autocommit(self, autocommit: bool) -> None:
        conn: PooledConnection = self.connection
        # Django sets it on every connect(); a session from the pool already has the alias's
        # AUTOCOMMIT (the status bits of its last reply say so, no round trip).
        if bool(conn.get_autocommit()) == autocommit:
            return
        with self.wrap_database_errors:
            conn.autocommit(autocommit)

    def _close(self) -> None:
        conn: PooledConnection | None = self.connection
        if conn is None or conn.closed:
            return
        with self.wrap_database_errors:
            # Gives it back: rolled back if a transaction is open, reset if the session
            # changed, closed if it was lost.
            conn.close()

    def is_usable(self) -> bool:
        conn: PooledConnection | None = self.connection
        return conn is not None and not conn.closed and bool(conn.open)


def _checked_out(pool: Pool) -> PooledConnection:
    conn = pool.connection()
    if _OLD_MYSQLCLIENT:
        # As Django's own backend does: before mysqlclient 2.1 its bytes encoder was a
        # leftover that breaks binary values (mysqlclient issue 489).
        encoders = conn.encoders
        if encoders.get(bytes) is bytes:
            encoders.pop(bytes)
    return conn
