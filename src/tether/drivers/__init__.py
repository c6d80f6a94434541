"""Driver adapters: every PyMySQL and mysqlclient quirk tether relies on lives in this package.

The pool talks to a :class:`Driver`; it never touches a driver module itself. What an adapter
provides beyond DB-API: the server status bits of the last reply (open transaction, session state
changed) without a round trip, a ping with a hard timeout, a protocol-level session reset and the
statements that restore what the driver set up at connect, closing without ``QUIT`` (for a
forked child), and a check of ``connect_args`` against what the driver accepts.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from ..dsn import DSN
from .sockets import neuter_fd

__all__ = ["Driver", "DriverBase", "get_driver", "resolve_driver"]

# Server status bits (include/mysql_com.h); both drivers expose the raw value of the last reply.
STATUS_IN_TRANS = 0x0001
STATUS_AUTOCOMMIT = 0x0002
STATUS_MORE_RESULTS = 0x0008
STATUS_SESSION_STATE_CHANGED = 0x4000
CLIENT_SESSION_TRACK = 1 << 23
COM_RESET_CONNECTION = 0x1F

# Attributes of either driver's connection that cannot change session state: reached through
# a pooled connection, anything else marks the session as changed (reset when it goes back).
SAFE_ATTRIBUTES = frozenset(
    {
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

#: A statement and its arguments, as a cursor's ``execute`` takes them.
Statement = tuple[str, tuple[Any, ...]]


class DriverBase:
    """What every pool flavour needs from a MySQL driver without talking to the server: its
    error classes and error numbers, its status bits, its cursor classes, its connect
    arguments. :class:`Driver` adds the blocking I/O; the asyncio flavour's drivers
    (:mod:`tether.aio.drivers`) add the same I/O as coroutines."""

    name: ClassVar[str]
    module: Any
    Error: type[Exception]
    OperationalError: type[Exception]
    InterfaceError: type[Exception]
    ProgrammingError: type[Exception]

    # Whether the status bits are refreshed by result sets too (not only by OK packets).
    status_after_results: ClassVar[bool] = True
    # Whether the bits say when more result sets follow (MORE_RESULTS); where they do not, a
    # cursor's close, which may read them, is followed by a fresh read of the bits.
    more_results_in_status: ClassVar[bool] = True

    def _bind(self, module: Any) -> None:
        """Take the DB-API module and its exception classes (PEP 249 names)."""
        self.module = module
        self.Error = module.Error
        self.OperationalError = module.OperationalError
        self.InterfaceError = module.InterfaceError
        self.ProgrammingError = module.ProgrammingError

    # -- connecting

    def check_connect_args(self, args: Mapping[str, Any]) -> None:
        """Raise ``ValueError`` naming an argument the driver's ``connect()`` does not take,
        at construction rather than at the first check-out."""
        known = self.connect_arg_names()
        for name in args:
            if name not in known:
                raise ValueError(
                    f"connect_args: {self.name} does not take {name!r}"
                    f" (it takes: {', '.join(sorted(known))})"
                )

    def connect_arg_names(self) -> frozenset[str]:
        raise NotImplementedError

    def io_timeouts(self, seconds: float) -> dict[str, Any]:
        """connect_args that bound every read and write of a connection (for probes)."""
        return {"read_timeout": seconds, "write_timeout": seconds}

    def session_baseline(
        self, raw: Any, dsn: DSN, connect_args: Mapping[str, Any]
    ) -> list[Statement]:
        """The statements that put a reset session back where the driver's ``connect()``
        left it: the character set it encodes in, ``sql_mode`` and ``init_command`` as given
        in the DSN or ``connect_args``."""
        given = {**dsn.options, **connect_args}
        charset = self.charset(raw)
        collation = given.get("collation")
        names = f"SET NAMES {charset}" + (f" COLLATE {collation}" if collation else "")
        statements: list[Statement] = [(names, ())]
        if given.get("sql_mode"):
            statements.append(("SET SESSION sql_mode = %s", (str(given["sql_mode"]),)))
        if given.get("init_command"):
            statements.append((str(given["init_command"]), ()))
        return statements

    def charset(self, raw: Any) -> str:
        """The character set the driver encodes statements in."""
        raise NotImplementedError

    # -- what the pool reads

    def status_reader(self, raw: Any) -> Callable[[], int] | None:
        """A function returning the status bits of the connection's last reply without a
        round trip, or ``None`` where the driver can't tell."""
        raise NotImplementedError

    def clear_state_flag(self, raw: Any) -> None:
        """Forget the "session state changed" bit once the pool has taken note of it."""

    def thread_id(self, raw: Any) -> int:
        return int(raw.thread_id())

    def is_mariadb(self, raw: Any) -> bool:
        return "mariadb" in str(raw.get_server_info()).lower()

    def streaming_cursor(self) -> Any:
        """The driver's cursor class that streams rows instead of buffering them."""
        return self.module.cursors.SSCursor

    def is_unbuffered(self, cursor_class: type[Any]) -> bool:
        """Whether cursors of this class stream rows from the server (rows left unread make
        the connection unusable until they are drained)."""
        return False

    def detach_cursor(self, cursor: Any) -> None:
        """Close ``cursor`` without reading from its connection (which is lost or out of
        step with the server): both drivers take a cursor without a connection as closed."""
        cursor.connection = None

    def error_code(self, exc: BaseException) -> int | None:
        """The MySQL error number of a driver exception, if it has one."""
        args = getattr(exc, "args", ())
        if args and isinstance(args[0], int):
            return args[0]
        return None


class Driver(DriverBase):
    """What the threaded pool needs from a DB-API MySQL driver: blocking I/O."""

    def connect(
        self,
        dsn: DSN,
        *,
        connect_timeout: float,
        autocommit: bool,
        connect_args: Mapping[str, Any],
    ) -> Any:
        raise NotImplementedError

    def fileno(self, raw: Any) -> int:
        """The socket's descriptor, or -1 when the connection is closed."""
        raise NotImplementedError

    def ping(self, raw: Any, timeout: float) -> None:
        """A round trip that raises if the server does not answer within ``timeout``."""
        raise NotImplementedError

    def reset(self, raw: Any) -> bool:
        """``COM_RESET_CONNECTION``: returns False when the driver cannot send it."""
        raise NotImplementedError

    def execute(self, raw: Any, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run one statement on ``raw`` and return its rows."""
        cur = raw.cursor()
        try:
            cur.execute(sql, args or None)
            return list(cur.fetchall() or ())
        finally:
            with contextlib.suppress(self.Error):
                cur.close()

    # -- closing

    def close(self, raw: Any) -> None:
        """Close politely (``QUIT``); a connection already broken or closed is no error."""
        with contextlib.suppress(self.Error, OSError):
            raw.close()

    def abandon(self, raw: Any) -> None:
        """Drop a connection without sending a byte (a forked child's inherited socket):
        the descriptor is pointed at a blank socket first, so whatever the driver sends while
        closing (mysqlclient: QUIT) goes nowhere."""
        fd = self.fileno(raw)
        if fd >= 0:
            neuter_fd(fd)
        with contextlib.suppress(self.Error, OSError):
            self._drop(raw)

    def _drop(self, raw: Any) -> None:
        raw.close()


_drivers: dict[str, Driver] = {}
_drivers_lock = threading.Lock()
_ALIASES = {"pymysql": "pymysql", "mysqlclient": "mysqlclient", "mysqldb": "mysqlclient"}


def driver_name(name: str) -> str:
    """The canonical name for ``name`` ("mysqldb" is "mysqlclient"); ``ValueError`` for a
    driver tether does not support."""
    key = _ALIASES.get(name.lower()) if isinstance(name, str) else None
    if key is None and isinstance(name, str) and name.lower() in ("asyncmy", "aiomysql"):
        raise ValueError(f"driver={name!r} is an asyncio driver: use it with tether.AsyncPool")
    if key is None:
        raise ValueError(f"driver={name!r} is not supported (use 'pymysql' or 'mysqlclient')")
    return key


def get_driver(name: str | None) -> Driver:
    """The adapter for ``name`` ("pymysql" or "mysqlclient"; ``None``: whichever is installed,
    mysqlclient first as the faster one)."""
    if name is None:
        for candidate in ("mysqlclient", "pymysql"):
            try:
                return get_driver(candidate)
            except ImportError:
                continue
        raise ImportError(
            "no MySQL driver installed: pip install 'tether[pymysql]' or 'tether[mysqlclient]'"
        )
    key = driver_name(name)
    with _drivers_lock:
        driver = _drivers.get(key)
        if driver is None:
            try:
                if key == "pymysql":
                    from .pymysql import PyMySQLDriver

                    driver = PyMySQLDriver()
                else:
                    from .mysqlclient import MySQLClientDriver

                    driver = MySQLClientDriver()
            except ImportError as exc:
                raise ImportError(
                    f"driver={name!r} is not installed: pip install 'tether[{key}]'"
                ) from exc
            _drivers[key] = driver
    return driver


def resolve_driver(driver: str | Driver | None, dsn: DSN) -> Driver:
    """The adapter a pool uses: ``driver`` (a name or an adapter), else the one the DSN's
    scheme names, else whichever is installed. A name that disagrees with the scheme is a
    ``ValueError``, never resolved silently."""
    if isinstance(driver, Driver):
        return driver
    if driver is not None and dsn.driver is not None and driver_name(driver) != dsn.driver:
        raise ValueError(
            f"driver={driver!r} disagrees with the DSN's scheme, which names {dsn.driver!r}"
        )
    return get_driver(driver or dsn.driver)
