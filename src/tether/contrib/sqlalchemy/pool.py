"""SQLAlchemy's pool on tether: :class:`TetherPool`, the ``tether`` engine plugin, the error
mapping.

SQLAlchemy keeps a pool *record* per connection it hands out, and runs its per-connection
set-up (the dialect's ``connect`` events) once per record. Here a record does not own a server
connection: it holds a tether check-out from SQLAlchemy's check-out to its check-in, so the
server connections, their bound, health checks and lifetimes are tether's alone, and the
records (as many as connections were ever in use at once) are kept for their set-up.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import event, exc
from sqlalchemy.engine import CreateEnginePlugin, Engine, ExceptionContext
from sqlalchemy.engine.url import URL
from sqlalchemy.pool import ConnectionPoolEntry, Pool, PoolProxiedConnection

from ...aio import AsyncPool
from ...errors import OutcomeUnknown, TransactionLost
from ...pool import Pool as TetherPoolBase
from .dbapi import SessionConnection

__all__ = ["TetherPlugin", "TetherPool", "install_error_mapping", "tether_dsn"]

logger = logging.getLogger("tether.sqlalchemy")

# SQLAlchemy dialect driver names and tether's.
_DRIVERS = {"pymysql": "pymysql", "mysqldb": "mysqlclient", "asyncmy": "asyncmy",
            "aiomysql": "aiomysql"}  # fmt: skip

# QueuePool's sizing options: tether's max_size and timeout decide instead.
_SIZING = ("pool_size", "max_overflow", "timeout", "use_lifo")


class TetherPool(Pool):
    """A SQLAlchemy pool whose connections are tether check-outs.

    ``tether_pool`` is a :class:`tether.Pool` (or :class:`tether.ThreadLocalPool`) the
    application owns, or a function that makes one: then the engine owns it, and
    ``engine.dispose()`` closes it (and makes a new one for later use). A pool handed in is
    never closed here; ``engine.dispose()`` leaves it open.

    ``pool_pre_ping`` and ``pool_recycle`` are accepted and ignored: tether checks each
    connection it hands out without a round trip and retires connections under the server's
    ``wait_timeout``. QueuePool's ``pool_size``, ``max_overflow`` and ``pool_timeout`` are
    tether's ``max_size`` and ``timeout``.
    """

    def __init__(
        self,
        creator: Any = None,
        # (Not keyword-only: create_engine() hands a pool class only the named parameters
        # it finds, and it finds no keyword-only ones.)
        tether_pool: TetherPoolBase | Callable[[], TetherPoolBase] | None = None,
        lazy_begin: bool = True,
        recycle: int = -1,
        pre_ping: bool = False,
        pool_size: int | None = None,
        max_overflow: int | None = None,
        timeout: float | None = None,
        use_lifo: bool | None = None,
        _recreated: bool = False,
        **kw: Any,
    ) -> None:
        if tether_pool is None:
            raise exc.ArgumentError("TetherPool needs tether_pool= (a tether.Pool)")
        self._made: TetherPoolBase | None = None
        self._making = threading.Lock()
        if isinstance(tether_pool, TetherPoolBase | AsyncPool):
            self._factory: Callable[[], TetherPoolBase] | None = None
            self._made = tether_pool
        elif callable(tether_pool):
            self._factory = tether_pool
            if not _recreated:
                self._made = tether_pool()  # at once: its options are checked here
        else:
            raise exc.ArgumentError(
                f"tether_pool must be a tether.Pool or a function making one, not {tether_pool!r}"
            )
        if pre_ping or recycle > -1:
            logger.info(
                "%s: pool_pre_ping and pool_recycle are not needed on tether and are ignored"
                " (connections are checked at check-out and retired under wait_timeout)",
                self._tether.name,
            )
        given = {"pool_size": pool_size, "max_overflow": max_overflow, "pool_timeout": timeout}
        ignored = [name for name, value in given.items() if value is not None]
        if ignored:
            logger.warning(
                "%s: %s ignored: tether's max_size (%d) and timeout (%gs) apply",
                self._tether.name,
                ", ".join(ignored),
                self._tether.config.max_size,
                self._tether.config.timeout,
            )
        self._lazy_begin = lazy_begin
        self._records: deque[ConnectionPoolEntry] = deque()
        self._disposed = False
        self._creator_arg = creator
        super().__init__(self._new_session, recycle=-1, pre_ping=False, **kw)

    @property
    def _tether(self) -> TetherPoolBase:
        made = self._made
        if made is None:
            # After engine.dispose(): the new pool is made when the engine is used again.
            assert self._factory is not None
            with self._making:
                made = self._made
                if made is None:
                    made = self._made = self._factory()
        return made

    @property
    def tether_pool(self) -> TetherPoolBase:
        """The tether pool connections come from."""
        return self._tether

    @property
    def owns_tether_pool(self) -> bool:
        """Whether this pool made its tether pool (and closes it on ``dispose()``)."""
        return self._factory is not None

    def _new_session(self) -> SessionConnection:
        session = SessionConnection(self._tether, lazy_begin=self._lazy_begin)
        session.check_out()
        return session

    def _do_get(self) -> ConnectionPoolEntry:
        try:
            record = self._records.pop()
        except IndexError:
            return self._create_connection()  # its creator checks out
        session: Any = record.dbapi_connection  # a session of ours (or None)
        if session is not None:
            try:
                session.check_out()
            except BaseException:
                self._records.append(record)
                raise
        # (A record without a connection gets a new one from the creator, checked out.)
        return record

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        session: Any = record.dbapi_connection
        try:
            if session is not None:
                session.give_back()
        finally:
            if not self._disposed:
                self._records.append(record)

    def _invalidate(
        self,
        connection: PoolProxiedConnection,
        exception: BaseException | None = None,
        _checkin: bool = True,
    ) -> None:
        # SQLAlchemy's answer to a disconnect is to reconnect every connection of the pool:
        # tether already replaces each dead one as it finds it, so only this one goes.
        if _checkin and getattr(connection, "is_valid", False):
            connection.invalidate(exception)

    def dispose(self) -> None:
        self._disposed = True
        self._records.clear()
        if self._factory is not None and self._made is not None:
            self._made.close()
        self.logger.info("Pool disposed. %s", self.status())

    def recreate(self) -> TetherPool:
        self.logger.info("Pool recreating")
        return self.__class__(
            self._creator_arg,
            tether_pool=self._factory or self._tether,
            lazy_begin=self._lazy_begin,
            _recreated=True,
            echo=self.echo,
            logging_name=self._orig_logging_name,
            reset_on_return=self._reset_on_return,
            _dispatch=self.dispatch,
            dialect=self._dialect,
        )

    def status(self) -> str:
        return f"TetherPool {self._made!r}" if self._made is not None else "TetherPool (unused)"


def _on_error(context: ExceptionContext) -> None:
    """tether's errors for a lost connection are disconnects to SQLAlchemy (it invalidates
    the connection and sets ``connection_invalidated``), whatever their errno; the rest of
    the pool is left alone, tether replaces dead connections as it finds them."""
    if isinstance(context.original_exception, (TransactionLost, OutcomeUnknown)):
        context.is_disconnect = True
    if context.is_disconnect:
        context.invalidate_pool_on_disconnect = False


def install_error_mapping(engine: Engine) -> None:
    """Make ``engine`` see tether's errors as disconnects (the plugin does it)."""
    if not event.contains(engine, "handle_error", _on_error):
        event.listen(engine, "handle_error", _on_error)


def tether_dsn(url: URL) -> str:
    """The tether DSN for a SQLAlchemy URL (its driver named in the scheme)."""
    url = url.difference_update_query(["plugin", "plugins"])
    driver = _DRIVERS.get(url.get_driver_name())
    if driver is None:
        raise exc.ArgumentError(
            f"tether does not drive {url.get_driver_name()!r}: use mysql+pymysql://,"
            " mysql+mysqldb:// (or for an async engine mysql+asyncmy://, mysql+aiomysql://)"
        )
    url = url.set(drivername=f"mysql+{driver}")
    return url.render_as_string(hide_password=False)


def _new_pool(pool_class: type[TetherPoolBase], dsn: str, options: Mapping[str, Any]) -> Any:
    return pool_class(dsn, **options)


class TetherPlugin(CreateEnginePlugin):
    """The ``tether`` engine plugin: ``create_engine(url, plugins=["tether"], ...)`` (or
    ``?plugin=tether`` in the URL) gets its connections from tether.

    Engine options it reads: ``tether_pool`` (a tether pool the application owns) or
    ``tether_options`` (the options of a pool the engine makes from its URL, closed by
    ``engine.dispose()``), ``tether_pool_class`` (:class:`tether.Pool` unless given) and
    ``tether_lazy_begin`` (see :mod:`tether.contrib.sqlalchemy.dbapi`).
    """

    def __init__(self, url: URL, kwargs: dict[str, Any]) -> None:
        super().__init__(url, kwargs)
        pool = kwargs.pop("tether_pool", None)
        options = dict(kwargs.pop("tether_options", None) or {})
        pool_class = kwargs.pop("tether_pool_class", None)
        lazy_begin = kwargs.pop("tether_lazy_begin", True)
        poolclass = kwargs.get("poolclass")
        ours: type[TetherPool] = TetherPool
        if url.get_driver_name() in ("asyncmy", "aiomysql"):
            from .aio import AsyncTetherPool

            ours, pool_class = AsyncTetherPool, pool_class or AsyncPool
        pool_class = pool_class or TetherPoolBase
        if poolclass is not None and not (
            isinstance(poolclass, type) and issubclass(poolclass, TetherPool)
        ):
            raise exc.ArgumentError(f"the tether plugin brings its own pool, not {poolclass!r}")
        if "pool" in kwargs:
            raise exc.ArgumentError("the tether plugin brings its own pool: drop pool=")
        # What SQLAlchemy would do when it connects is tether's to do: connections are opened
        # by tether, and sessions are reset when they go back to it.
        for name, instead in (("connect_args", "connect_args"), ("creator", "connect_args")):
            if name in kwargs:
                raise exc.ArgumentError(
                    f"{name}= is not used on tether: tether opens the connections; give the"
                    f" driver's options as tether_options={{'{instead}': {{...}}}} (or, for a"
                    " pool handed in, to tether.Pool)"
                )
        level = kwargs.get("isolation_level")
        if level is not None and str(level).upper() != "AUTOCOMMIT":
            raise exc.ArgumentError(
                f"isolation_level={level!r} for the whole engine: tether resets sessions when"
                " they come back, so set it for every session with tether's init_commands"
                " (['SET SESSION TRANSACTION ISOLATION LEVEL ...']), or per connection with"
                " execution_options(isolation_level=...)"
            )
        if pool is None:
            pool = functools.partial(_new_pool, pool_class, tether_dsn(url), options)
        elif options:
            raise exc.ArgumentError(
                "tether_options are for a pool the engine makes; a tether_pool handed in"
                " keeps its own options"
            )
        kwargs["poolclass"] = poolclass or ours
        kwargs["tether_pool"] = pool
        kwargs["lazy_begin"] = lazy_begin

    def update_url(self, url: URL) -> URL:
        return url  # (its options are engine options, not URL ones)

    def engine_created(self, engine: Engine) -> None:
        pool = engine.pool
        if isinstance(pool, TetherPool):
            _check_driver(engine, pool.tether_pool)
        install_error_mapping(engine)


def _check_driver(engine: Engine, pool: Any) -> None:
    """The dialect and tether must use the same driver: SQLAlchemy recognises a DB-API
    error by the classes of its own driver module."""
    expected = _DRIVERS.get(engine.dialect.driver)
    if expected != pool.driver.name:
        raise exc.ArgumentError(
            f"the engine's URL names the driver {engine.dialect.driver!r} and the tether pool"
            f" {pool.name!r} uses {pool.driver.name!r}: they must agree"
        )
