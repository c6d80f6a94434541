"""The ways of getting a connection that the demo compares, each written the way its users
write it: connect per request, a connection kept per thread, DBUtils ``PersistentDB``,
SQLAlchemy with ``pool_pre_ping``, SQLAlchemy's ORM on tether, and tether; and the asyncio
ones (:mod:`.async_variants`).

Every variant answers two requests: :meth:`Variant.read` (a ``SELECT`` by key) and
:meth:`Variant.write` (``INSERT`` a ledger row, some application work, ``UPDATE`` a counter, in
one transaction). A write that returns normally is one the application believes committed; an
exception is an error that reached the application. No variant gets timeouts or retries beyond
what its own documentation sets up by default: where a peer hangs, the demo shows it hanging.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import quote

import tether

__all__ = [
    "DEFAULT_KEYS",
    "QUICK_KEYS",
    "VARIANTS",
    "Endpoint",
    "Tables",
    "Variant",
    "errno_of",
    "error_kind",
]


@dataclass(frozen=True)
class Endpoint:
    """Where a variant connects: the fault proxy in front of the server, as one user."""

    host: str
    port: int
    user: str
    password: str
    database: str

    def url(self, scheme: str = "mysql") -> str:
        auth = quote(self.user, safe="") + ":" + quote(self.password, safe="")
        return f"{scheme}://{auth}@{self.host}:{self.port}/{quote(self.database, safe='')}"

    def redacted(self) -> str:
        return f"mysql://{self.user}:***@{self.host}:{self.port}/{self.database}"

    def connect_kwargs(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "database": self.database,
        }


@dataclass(frozen=True)
class Tables:
    """The tables one variant's run uses: its own ledger and counters (a fresh state per
    variant, out of reach of a previous variant's stragglers), and the shared read table."""

    items: str
    ledger: str
    counters: str

    @property
    def select(self) -> str:
        return f"SELECT name, qty FROM {self.items} WHERE id = %s"

    @property
    def insert(self) -> str:
        # The session id lets the demo find (and kill) a transaction by its request id.
        return (
            f"INSERT INTO {self.ledger} (request_id, slot, session)"
            " VALUES (%s, %s, CONNECTION_ID())"
        )

    @property
    def update(self) -> str:
        return f"UPDATE {self.counters} SET n = n + 1 WHERE slot = %s"

    def sqlalchemy_statements(self) -> tuple[Any, Any, Any]:
        """The select, insert and update as SQLAlchemy ``text()`` with named parameters
        (``:key``; ``:request_id``, ``:slot``; ``:slot``)."""
        from sqlalchemy import text

        return (
            text(self.select.replace("%s", ":key")),
            text(self.insert.replace("%s, %s", ":request_id, :slot")),
            text(self.update.replace("%s", ":slot")),
        )


Work = Callable[[], None]


def driver_module(driver: str) -> Any:
    if driver == "pymysql":
        import pymysql

        return pymysql
    if driver == "mysqlclient":
        import MySQLdb

        return MySQLdb
    raise ValueError(f"driver must be 'pymysql' or 'mysqlclient', not {driver!r}")


def errno_of(exc: BaseException) -> int | None:
    """The server or client error number of a driver error (SQLAlchemy's wrapper included)."""
    orig = getattr(exc, "orig", None)  # SQLAlchemy wraps the driver's exception
    source = orig if isinstance(orig, BaseException) else exc
    args = getattr(source, "args", ())
    if args and isinstance(args[0], int) and not isinstance(args[0], bool):
        return args[0]
    return None


def error_kind(exc: BaseException) -> str:
    """A short name for what reached the application: ``pymysql.OperationalError(2013)``,
    ``tether.TransactionLost(2013)``, ``sqlalchemy.OperationalError(1226)``,
    ``sqlalchemy.OperationalError(2013) from tether.TransactionLost``."""
    cls = type(exc)
    package = cls.__module__.split(".")[0]
    code = errno_of(exc)
    name = f"{package}.{cls.__name__}"
    if code is not None:
        name = f"{name}({code})"
    orig = getattr(exc, "orig", None)
    if isinstance(orig, tether.Error):  # SQLAlchemy's wrapper of one of tether's errors
        name = f"{name} from tether.{type(orig).__name__}"
    return name


class Variant:
    """One way of getting connections, used the way its users use it."""

    key: ClassVar[str] = "?"
    title: ClassVar[str] = "?"
    description: ClassVar[str] = ""

    def __init__(self, endpoint: Endpoint, tables: Tables, *, driver: str) -> None:
        self.endpoint = endpoint
        self.tables = tables
        self.driver = driver
        self.module = driver_module(driver)

    def read(self, key: int) -> None:
        raise NotImplementedError

    def write(self, request_id: int, slot: int, work: Work) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """What the application does at shutdown."""


def _close_quietly(conn: Any) -> None:
    # A connection the driver already knows is broken refuses close() ("Already closed");
    # that must not replace the error the request really had.
    if conn is not None and getattr(conn, "open", True):
        with contextlib.suppress(Exception):
            conn.close()


class ConnectPerRequest(Variant):
    key = "connect"
    title = "naive: connect per request"
    description = "driver.connect() for every request, closed afterwards; driver defaults"

    def read(self, key: int) -> None:
        conn = self.module.connect(**self.endpoint.connect_kwargs())
        try:
            cur = conn.cursor()
            cur.execute(self.tables.select, (key,))
            cur.fetchall()
        finally:
            _close_quietly(conn)

    def write(self, request_id: int, slot: int, work: Work) -> None:
        conn = self.module.connect(**self.endpoint.connect_kwargs())
        try:
            cur = conn.cursor()
            cur.execute(self.tables.insert, (request_id, slot))
            work()
            cur.execute(self.tables.update, (slot,))
            conn.commit()
        finally:
            _close_quietly(conn)


class ConnectionPerThread(Variant):
    key = "persistent"
    title = "naive: connection per thread"
    description = (
        "one connection per thread, kept open; dropped after a connection error and"
        " opened again by the next request"
    )

    def __init__(self, endpoint: Endpoint, tables: Tables, *, driver: str) -> None:
        super().__init__(endpoint, tables, driver=driver)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[Any] = []
        self._broken = (self.module.OperationalError, self.module.InterfaceError)

    def _conn(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self.module.connect(**self.endpoint.connect_kwargs())
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        _close_quietly(conn)

    def read(self, key: int) -> None:
        conn = self._conn()
        try:
            cur = conn.cursor()
            cur.execute(self.tables.select, (key,))
            cur.fetchall()
        except self._broken:
            self._drop()
            raise

    def write(self, request_id: int, slot: int, work: Work) -> None:
        conn = self._conn()
        try:
            cur = conn.cursor()
            cur.execute(self.tables.insert, (request_id, slot))
            work()
            cur.execute(self.tables.update, (slot,))
            conn.commit()
        except self._broken:
            self._drop()
            raise
        except Exception:
            with contextlib.suppress(Exception):
                conn.rollback()
            raise

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            _close_quietly(conn)


class DBUtilsPersistent(Variant):
    key = "dbutils"
    title = "DBUtils PersistentDB"
    description = (
        "dbutils.persistent_db.PersistentDB(driver, ...): defaults (ping on checkout);"
        " begin() around writes, as its documentation asks"
    )

    def __init__(self, endpoint: Endpoint, tables: Tables, *, driver: str) -> None:
        super().__init__(endpoint, tables, driver=driver)
        from dbutils.persistent_db import PersistentDB

        self.pool = PersistentDB(self.module, **endpoint.connect_kwargs())

    def read(self, key: int) -> None:
        db = self.pool.connection()
        cur = db.cursor()
        cur.execute(self.tables.select, (key,))
        cur.fetchall()
        cur.close()

    def write(self, request_id: int, slot: int, work: Work) -> None:
        db = self.pool.connection()
        db.begin()
        try:
            cur = db.cursor()
            cur.execute(self.tables.insert, (request_id, slot))
            work()
            cur.execute(self.tables.update, (slot,))
            cur.close()
            db.commit()
        except Exception:
            with contextlib.suppress(Exception):
                db.rollback()
            raise

    # close(): PersistentDB has no way to close other threads' connections; they are closed
    # when their threads end, as in an application.


class SQLAlchemyPrePing(Variant):
    key = "sqlalchemy"
    title = "SQLAlchemy pre_ping"
    description = (
        "create_engine(url, pool_pre_ping=True): QueuePool defaults (5 + 10 overflow);"
        " engine.connect() for reads, engine.begin() for writes"
    )

    def __init__(self, endpoint: Endpoint, tables: Tables, *, driver: str) -> None:
        super().__init__(endpoint, tables, driver=driver)
        from sqlalchemy import create_engine

        scheme = "mysql+pymysql" if driver == "pymysql" else "mysql+mysqldb"
        self.engine = create_engine(endpoint.url(scheme), pool_pre_ping=True)
        self._select, self._insert, self._update = tables.sqlalchemy_statements()

    def read(self, key: int) -> None:
        with self.engine.connect() as conn:
            conn.execute(self._select, {"key": key}).fetchall()

    def write(self, request_id: int, slot: int, work: Work) -> None:
        with self.engine.begin() as conn:
            conn.execute(self._insert, {"request_id": request_id, "slot": slot})
            work()
            conn.execute(self._update, {"slot": slot})

    def close(self) -> None:
        self.engine.dispose()


class SQLAlchemyOnTether(Variant):
    key = "sqlalchemy-tether"
    title = "SQLAlchemy ORM on tether"
    description = (
        "tether.contrib.sqlalchemy.create_engine(url, pool_options={'timeout': 10}): no"
        " pre_ping; an ORM Session for reads, Session.begin() for writes"
    )

    def __init__(self, endpoint: Endpoint, tables: Tables, *, driver: str) -> None:
        super().__init__(endpoint, tables, driver=driver)

        from ..contrib.sqlalchemy import create_engine

        scheme = "mysql+pymysql" if driver == "pymysql" else "mysql+mysqldb"
        self.engine = create_engine(
            endpoint.url(scheme), pool_options={"timeout": 10.0, "name": f"demo-{self.key}"}
        )
        self._select, self._insert, self._update = tables.sqlalchemy_statements()

    def read(self, key: int) -> None:
        from sqlalchemy.orm import Session

        with Session(self.engine) as session:
            session.execute(self._select, {"key": key}).fetchall()

    def write(self, request_id: int, slot: int, work: Work) -> None:
        from sqlalchemy.orm import Session

        with Session(self.engine) as session, session.begin():
            session.execute(self._insert, {"request_id": request_id, "slot": slot})
            work()
            session.execute(self._update, {"slot": slot})

    def close(self) -> None:
        self.engine.dispose()


class TetherPool(Variant):
    key = "tether"
    title = "tether Pool"
    description = "tether.Pool(dsn, timeout=10), defaults otherwise; pool.transaction() for writes"
    pool_class: ClassVar[type[tether.Pool]] = tether.Pool

    def __init__(self, endpoint: Endpoint, tables: Tables, *, driver: str) -> None:
        super().__init__(endpoint, tables, driver=driver)
        self.pool = self.pool_class(
            endpoint.url(), driver=driver, timeout=10.0, name=f"demo-{self.key}"
        )

    def read(self, key: int) -> None:
        with self.pool.connection() as conn:
            cur = conn.cursor()
            cur.execute(self.tables.select, (key,))
            cur.fetchall()

    def write(self, request_id: int, slot: int, work: Work) -> None:
        with self.pool.transaction() as conn:
            cur = conn.cursor()
            cur.execute(self.tables.insert, (request_id, slot))
            work()
            cur.execute(self.tables.update, (slot,))

    def close(self) -> None:
        self.pool.close()


class TetherThreadLocal(TetherPool):
    key = "tether-tl"
    title = "tether ThreadLocalPool"
    description = "tether.ThreadLocalPool(dsn, timeout=10), defaults otherwise"
    pool_class = tether.ThreadLocalPool


THREADED: tuple[type[Variant], ...] = (
    ConnectPerRequest,
    ConnectionPerThread,
    DBUtilsPersistent,
    SQLAlchemyPrePing,
    SQLAlchemyOnTether,
    TetherPool,
    TetherThreadLocal,
)


def _registry() -> dict[str, type[Variant]]:
    from .async_variants import AiomysqlPool, AsyncmyPool, SQLAlchemyAsync, TetherAsync

    every: tuple[type[Variant], ...] = (
        *THREADED,
        AsyncmyPool,
        AiomysqlPool,
        SQLAlchemyAsync,
        TetherAsync,
    )
    return {cls.key: cls for cls in every}


VARIANTS: dict[str, type[Variant]] = _registry()
DEFAULT_KEYS = tuple(VARIANTS)
QUICK_KEYS = (
    "connect",
    "persistent",
    "dbutils",
    "sqlalchemy",
    "sqlalchemy-tether",
    "tether",
    "asyncmy-pool",
    "tether-async",
)
