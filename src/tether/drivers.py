"""Driver adapters: every PyMySQL and mysqlclient quirk tether relies on lives here.

The pool talks to a :class:`Driver`; it never touches a driver module itself. What an adapter
provides beyond DB-API: the server status bits of the last reply (open transaction, session state
changed) without a round trip, a ping with a hard timeout, a protocol-level session reset, closing
without ``QUIT`` (for a forked child) and socket tuning (keepalive, ``TCP_USER_TIMEOUT``).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import math
import os
import socket
import threading
from collections.abc import Callable
from typing import Any, ClassVar

from .dsn import DSN

__all__ = ["Driver", "MySQLClientDriver", "PyMySQLDriver", "get_driver"]

# Server status bits (include/mysql_com.h); both drivers expose the raw value of the last reply.
STATUS_IN_TRANS = 0x0001
STATUS_AUTOCOMMIT = 0x0002
STATUS_MORE_RESULTS = 0x0008
STATUS_SESSION_STATE_CHANGED = 0x4000
CLIENT_SESSION_TRACK = 1 << 23
CLIENT_SSL = 1 << 11
COM_RESET_CONNECTION = 0x1F


def _load_speedups() -> Any:
    """``tether._speedups`` (the compiled fast paths, optional), or ``None`` when it was not
    built or ``TETHER_NO_SPEEDUPS`` is set to anything but ``0``."""
    if os.environ.get("TETHER_NO_SPEEDUPS", "") not in ("", "0"):
        return None
    try:
        from . import _speedups
    except ImportError:
        return None
    return _speedups


speedups = _load_speedups()


def break_socket(fd: int) -> None:
    """Shut a connected socket down both ways so a thread blocked reading it returns at once.

    Works on a duplicate of ``fd``: ``shutdown`` acts on the socket shared by both descriptors,
    while closing the duplicate leaves the driver's own descriptor for it to close.
    """
    with contextlib.suppress(OSError):
        dup = socket.socket(fileno=os.dup(fd))
        try:
            dup.shutdown(socket.SHUT_RDWR)
        finally:
            dup.close()


def neuter_fd(fd: int) -> None:
    """Point ``fd`` at a fresh unconnected socket, so nothing written to it reaches the server.

    Used in a forked child: the inherited descriptor shares the parent's TCP connection, and a
    ``QUIT`` (or any byte) sent from the child would break the parent's session.
    """
    with contextlib.suppress(OSError):
        blank = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            os.dup2(blank.fileno(), fd)
        finally:
            blank.close()


def tune_socket(
    fd: int,
    *,
    keepalive_idle: int,
    keepalive_interval: int,
    keepalive_count: int,
    user_timeout_ms: int,
) -> None:
    """TCP keepalive with short timings and ``TCP_USER_TIMEOUT``.

    Keepalive finds a peer that vanished while the connection is idle; ``TCP_USER_TIMEOUT``
    bounds how long written data may stay unacknowledged (a silently dropped flow), which would
    otherwise take the kernel's retransmission timeout: about 15 minutes.
    """
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    try:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (
            ("TCP_KEEPIDLE", keepalive_idle),
            ("TCP_KEEPINTVL", keepalive_interval),
            ("TCP_KEEPCNT", keepalive_count),
            ("TCP_USER_TIMEOUT", user_timeout_ms),
        ):
            option = getattr(socket, name, None)
            if option is not None and value > 0:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, option, value)
    finally:
        sock.close()


class Driver:
    """What the pool needs from a DB-API MySQL driver."""

    name: ClassVar[str]
    module: Any
    Error: type[BaseException]
    OperationalError: type[BaseException]
    InterfaceError: type[BaseException]
    ProgrammingError: type[BaseException]

    def _bind(self, module: Any) -> None:
        """Take the DB-API module and its exception classes (PEP 249 names)."""
        self.module = module
        self.Error = module.Error
        self.OperationalError = module.OperationalError
        self.InterfaceError = module.InterfaceError
        self.ProgrammingError = module.ProgrammingError

    def connect(
        self, dsn: DSN, *, connect_timeout: float, autocommit: bool, connect_args: dict[str, Any]
    ) -> Any:
        raise NotImplementedError

    def io_timeouts(self, seconds: float) -> dict[str, Any]:
        """connect_args that bound every read and write of a connection (for probes)."""
        return {"read_timeout": seconds, "write_timeout": seconds}

    def fileno(self, raw: Any) -> int:
        """The socket's descriptor, or -1 when the connection is closed."""
        raise NotImplementedError

    def status_reader(self, raw: Any) -> Callable[[], int] | None:
        """A function returning the status bits of the connection's last reply without a
        round trip, or ``None`` where the driver can't tell."""
        raise NotImplementedError

    def ping(self, raw: Any, timeout: float) -> None:
        """A round trip that raises if the server does not answer within ``timeout``."""
        raise NotImplementedError

    def reset(self, raw: Any) -> bool:
        """``COM_RESET_CONNECTION``: returns False when the driver cannot send it."""
        raise NotImplementedError

    def close(self, raw: Any) -> None:
        """Close politely (``QUIT``), never raising."""
        with contextlib.suppress(Exception):
            raw.close()

    def abandon(self, raw: Any) -> None:
        """Drop a connection without sending a byte (a forked child's inherited socket):
        the descriptor is pointed at a blank socket first, so whatever the driver sends while
        closing (mysqlclient: QUIT) goes nowhere."""
        fd = self.fileno(raw)
        if fd >= 0:
            neuter_fd(fd)
        with contextlib.suppress(Exception):
            self._drop(raw)

    def _drop(self, raw: Any) -> None:
        raw.close()

    def thread_id(self, raw: Any) -> int:
        return int(raw.thread_id())

    # Whether the status bits are refreshed by result sets too (not only by OK packets).
    status_after_results: ClassVar[bool] = True
    # Whether the bits say when more result sets follow (MORE_RESULTS); where they do not, a
    # cursor's close, which may read them, is followed by a fresh read of the bits.
    more_results_in_status: ClassVar[bool] = True

    def clear_state_flag(self, raw: Any) -> None:
        """Forget the "session state changed" bit once the pool has taken note of it."""

    def streaming_cursor(self) -> Any:
        """The driver's cursor class that streams rows instead of buffering them."""
        return self.module.cursors.SSCursor

    def is_unbuffered(self, cursor_class: type[Any]) -> bool:
        """Whether cursors of this class stream rows from the server (rows left unread make
        the connection unusable until they are drained)."""
        return False

    def error_code(self, exc: BaseException) -> int | None:
        """The MySQL error number of a driver exception, if it has one."""
        args = getattr(exc, "args", ())
        if args and isinstance(args[0], int):
            return args[0]
        return None

    def execute(self, raw: Any, sql: str) -> list[tuple[Any, ...]]:
        cur = raw.cursor()
        try:
            cur.execute(sql)
            return list(cur.fetchall() or ())
        finally:
            with contextlib.suppress(Exception):
                cur.close()


class _TimedBreak:
    """Breaks a socket if a call has not finished by a deadline (a hard timeout for drivers
    that have no per-call timeout). The lock makes sure a late timer never shuts down a
    descriptor that was since closed and reused."""

    __slots__ = ("_done", "_fd", "_lock", "_timer", "fired")

    def __init__(self, fd: int, timeout: float) -> None:
        self._fd = fd
        self._lock = threading.Lock()
        self._done = False
        self.fired = False
        self._timer = threading.Timer(timeout, self._fire)
        self._timer.daemon = True
        self._timer.name = "tether-timeout"

    def __enter__(self) -> _TimedBreak:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._done = True
        self._timer.cancel()

    def _fire(self) -> None:
        with self._lock:
            if not self._done:
                self.fired = True
                break_socket(self._fd)


class PyMySQLDriver(Driver):
    name = "pymysql"

    def __init__(self) -> None:
        import pymysql

        self._bind(pymysql)
        # PyMySQL >= 1.2 builds a fresh TLS context (loading the system CA store, ~27 ms) in
        # every Connection.__init__. The first connection's context is kept and handed to the
        # next ones with the same mode (preferred or required) and the same verification
        # settings, so connects cost about a millisecond with the same security.
        self._tls_lock = threading.Lock()
        self._tls_key: object = None
        self._tls_state: tuple[Any, bool, Any, int] | None = None

    def _kwargs(
        self, dsn: DSN, connect_timeout: float, autocommit: bool, connect_args: dict[str, Any]
    ) -> dict[str, Any]:
        opts = dict(dsn.options)
        kwargs: dict[str, Any] = {
            "host": dsn.host,
            "port": dsn.port,
            "user": dsn.user,
            "password": dsn.password,
            "database": dsn.database,
            "charset": opts.pop("charset", "utf8mb4"),
            "connect_timeout": connect_timeout,
            "autocommit": autocommit,
        }
        kwargs.update(opts)
        kwargs.update(connect_args)
        # Ask the server to flag replies that changed session state (see Driver.server_status).
        kwargs["client_flag"] = int(kwargs.get("client_flag", 0)) | CLIENT_SESSION_TRACK
        return kwargs

    def connect(
        self, dsn: DSN, *, connect_timeout: float, autocommit: bool, connect_args: dict[str, Any]
    ) -> Any:
        kwargs = self._kwargs(dsn, connect_timeout, autocommit, connect_args)
        # PyMySQL's connect_timeout covers only the TCP connect; the handshake reads use
        # read_timeout, which is usually None: a server (or middlebox) that accepts and then
        # says nothing would hang the connect forever. Bound the handshake too, then restore.
        want_read, want_write = kwargs.get("read_timeout"), kwargs.get("write_timeout")
        kwargs["read_timeout"] = want_read or connect_timeout
        kwargs["write_timeout"] = want_write or connect_timeout
        tls_key = repr(sorted((k, v) for k, v in kwargs.items() if k.startswith("ssl")))
        state = self._tls_state if self._tls_key == tls_key else None
        if state is None or kwargs.get("ssl_disabled"):
            conn = self.module.connections.Connection(defer_connect=True, **kwargs)
            if hasattr(conn, "_ssl_required") and hasattr(conn, "ctx"):
                with self._tls_lock:
                    self._tls_key = tls_key
                    self._tls_state = (
                        conn.ssl,
                        conn._ssl_required,
                        conn.ctx,
                        conn.client_flag & CLIENT_SSL,
                    )
        else:
            conn = self.module.connections.Connection(
                defer_connect=True, **{**kwargs, "ssl_disabled": True}
            )
            # Only the TLS part of the first connection's state: its other client flags
            # depend on its own arguments (a database given or not, ...).
            conn.ssl, conn._ssl_required, conn.ctx, ssl_flag = state
            conn.client_flag |= ssl_flag
        conn.connect()
        conn._read_timeout, conn._write_timeout = want_read, want_write
        return conn

    def fileno(self, raw: Any) -> int:
        sock = raw._sock
        if sock is None:
            return -1
        return int(sock.fileno())

    # PyMySQL keeps the status of the last OK packet: the EOF packet ending a result set does
    # not update it. So a SELECT leaves the previous statement's bits in place (harmless for
    # "in transaction" under autocommit, but an implicit transaction opened by a SELECT with
    # autocommit off is invisible: such pools roll back on every return).
    status_after_results = False
    more_results_in_status = False

    def status_reader(self, raw: Any) -> Callable[[], int] | None:
        # Called twice per request. The compiled fast paths look the attribute up directly;
        # without them, a partial of getattr runs in C, with no Python frame.
        if speedups is not None:
            reader: Callable[[], int] = speedups.AttributeReader(raw, "server_status")
            return reader
        return functools.partial(getattr, raw, "server_status")

    def clear_state_flag(self, raw: Any) -> None:
        # The bit would otherwise stay set through every following SELECT.
        raw.server_status &= ~STATUS_SESSION_STATE_CHANGED

    def ping(self, raw: Any, timeout: float) -> None:
        # PyMySQL re-applies _read_timeout/_write_timeout to the socket before each read or
        # write, so swapping them bounds this one round trip only.
        saved = raw._read_timeout, raw._write_timeout
        raw._read_timeout = raw._write_timeout = timeout
        try:
            raw.ping(False)
        finally:
            raw._read_timeout, raw._write_timeout = saved

    def reset(self, raw: Any) -> bool:
        if not hasattr(raw, "_execute_command") or not hasattr(raw, "_read_ok_packet"):
            return False
        raw._execute_command(COM_RESET_CONNECTION, b"")
        raw._read_ok_packet()
        return True

    def is_unbuffered(self, cursor_class: type[Any]) -> bool:
        return issubclass(cursor_class, self.module.cursors.SSCursor)

    def close(self, raw: Any) -> None:
        # A streaming result left unread would try to drain itself from the closed socket
        # when its cursor is collected; it is abandoned with the connection.
        result = getattr(raw, "_result", None)
        if result is not None and getattr(result, "unbuffered_active", False):
            result.unbuffered_active = False
        super().close(raw)

    def _drop(self, raw: Any) -> None:
        # _force_close drops the socket without QUIT (and is what PyMySQL's __del__ does).
        raw._force_close()


class _LibMariaDB:
    """``mariadb_get_info`` and ``mysql_reset_connection`` through ctypes, for mysqlclient
    built against Connector/C (Debian's libmariadb). mysqlclient exposes neither."""

    SERVER_STATUS = 30  # enum mariadb_value: MARIADB_CONNECTION_SERVER_STATUS

    def __init__(self) -> None:
        name = ctypes.util.find_library("mariadb") or "libmariadb.so.3"
        lib = ctypes.CDLL(name)
        # mariadb_get_info only reads a field: called through PyDLL it keeps the GIL, where
        # CDLL would release and re-take it on every statement (a thread switch under load).
        # Called with ready-made ctypes arguments and no argtypes/restype conversions: this
        # runs after every statement (0.17 against 0.30 us with converters).
        self.get_info = ctypes.PyDLL(name).mariadb_get_info
        self.get_info.restype = None
        self.get_info_address = ctypes.cast(self.get_info, ctypes.c_void_p).value or 0
        self.reset_connection = lib.mysql_reset_connection
        self.reset_connection.argtypes = [ctypes.c_void_p]
        self.reset_connection.restype = ctypes.c_int
        capsule_ptr = ctypes.pythonapi.PyCapsule_GetPointer
        capsule_ptr.restype = ctypes.c_void_p
        capsule_ptr.argtypes = [ctypes.py_object, ctypes.c_char_p]
        self._capsule_ptr = capsule_ptr

    def handle(self, raw: Any) -> int:
        ptr = self._capsule_ptr(
            raw._get_native_connection(), b"_mysql.connection.native_connection"
        )
        return int(ptr)


class MySQLClientDriver(Driver):
    name = "mysqlclient"

    def __init__(self) -> None:
        import MySQLdb

        self._bind(MySQLdb)
        self._lib: _LibMariaDB | None
        try:
            self._lib = _LibMariaDB()
        except (OSError, AttributeError):
            # Built against MySQL's libmysqlclient: status bits unknown, the pool falls back
            # to a rollback on return and to reconnecting instead of a protocol reset.
            self._lib = None

    def connect(
        self, dsn: DSN, *, connect_timeout: float, autocommit: bool, connect_args: dict[str, Any]
    ) -> Any:
        opts = dict(dsn.options)
        kwargs: dict[str, Any] = {
            "host": dsn.host,
            "port": dsn.port,
            "user": dsn.user,
            "password": dsn.password,
            "charset": opts.pop("charset", "utf8mb4"),
            # libmariadb takes whole seconds; round up so a timeout never becomes "none".
            "connect_timeout": max(1, math.ceil(connect_timeout)),
            "autocommit": autocommit,
        }
        if dsn.database:
            kwargs["database"] = dsn.database
        for key in ("read_timeout", "write_timeout"):
            if key in opts:
                kwargs[key] = max(1, math.ceil(opts.pop(key)))
        for key in ("read_timeout", "write_timeout"):
            if key in connect_args:
                connect_args = {**connect_args, key: max(1, math.ceil(connect_args[key]))}
        ssl = {k[4:]: opts.pop(k) for k in ("ssl_ca", "ssl_cert", "ssl_key") if k in opts}
        if ssl:
            kwargs["ssl"] = ssl
        if opts.pop("ssl_disabled", False):
            kwargs["ssl_mode"] = "DISABLED"
        opts.pop("ssl_verify_cert", None)
        opts.pop("ssl_verify_identity", None)
        kwargs.update(opts)
        kwargs.update(connect_args)
        return self.module.connect(**kwargs)

    def fileno(self, raw: Any) -> int:
        try:
            return int(raw.fileno())
        except Exception:
            return -1

    def status_reader(self, raw: Any) -> Callable[[], int] | None:
        lib = self._lib
        if lib is None:
            return None
        if speedups is not None:
            # The same call in C: no Python frame, no ctypes conversions. It keeps the
            # connection object (which holds the MYSQL struct) alive as long as itself.
            reader: Callable[[], int] = speedups.StatusReader(
                raw, lib.get_info_address, lib.handle(raw), lib.SERVER_STATUS
            )
            return reader
        # The MYSQL* handle lives as long as the connection object; each reader has its own
        # output cell, so readers of different connections never share state across threads.
        handle = ctypes.c_void_p(lib.handle(raw))
        get_info, key = lib.get_info, ctypes.c_int(lib.SERVER_STATUS)
        cell = ctypes.c_uint()
        ref = ctypes.byref(cell)

        def read() -> int:
            get_info(handle, key, ref)
            return cell.value

        return read

    def ping(self, raw: Any, timeout: float) -> None:
        # libmariadb has no per-call timeout and a read timeout set at connect would also cut
        # long queries, so a timer breaks the socket if the ping hangs.
        fd = self.fileno(raw)
        with _TimedBreak(fd, timeout) as guard:
            try:
                raw.ping()
            except self.Error:
                if guard.fired:
                    raise self.OperationalError(
                        2013, f"Lost connection to server: no answer to ping within {timeout:g}s"
                    ) from None
                raise

    def reset(self, raw: Any) -> bool:
        lib = self._lib
        if lib is None:
            return False
        if lib.reset_connection(lib.handle(raw)) != 0:
            raise self.OperationalError(raw.errno(), raw.error())
        return True

    def is_unbuffered(self, cursor_class: type[Any]) -> bool:
        return issubclass(cursor_class, self.module.cursors.CursorUseResultMixIn)


_drivers: dict[str, Driver] = {}
_drivers_lock = threading.Lock()
_ALIASES = {"pymysql": "pymysql", "mysqlclient": "mysqlclient", "mysqldb": "mysqlclient"}


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
    key = _ALIASES.get(name.lower())
    if key is None:
        raise ValueError(f"driver={name!r} is not supported (use 'pymysql' or 'mysqlclient')")
    with _drivers_lock:
        driver = _drivers.get(key)
        if driver is None:
            try:
                driver = PyMySQLDriver() if key == "pymysql" else MySQLClientDriver()
            except ImportError as exc:
                extra = "pymysql" if key == "pymysql" else "mysqlclient"
                raise ImportError(
                    f"driver={name!r} is not installed: pip install 'tether[{extra}]'"
                ) from exc
            _drivers[key] = driver
    return driver
