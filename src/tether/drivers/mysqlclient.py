"""mysqlclient (``MySQLdb``): a C extension over Connector/C, so the server status bits and
the protocol reset are reached through the client library itself (``ctypes``)."""

from __future__ import annotations

import ctypes
import ctypes.util
import math
from collections.abc import Callable, Mapping
from typing import Any

from ..dsn import DSN
from . import Driver
from .sockets import TimedBreak

__all__ = ["MySQLClientDriver"]

# What MySQLdb.connect() takes: _mysql.connection's keywords and those MySQLdb's
# Connection.__init__ takes itself.
_CONNECT_ARGS = frozenset(
    {
        "host",
        "user",
        "password",
        "passwd",
        "database",
        "db",
        "port",
        "unix_socket",
        "conv",
        "connect_timeout",
        "compress",
        "named_pipe",
        "init_command",
        "read_default_file",
        "read_default_group",
        "client_flag",
        "ssl",
        "ssl_mode",
        "local_infile",
        "read_timeout",
        "write_timeout",
        "charset",
        "auth_plugin",
        "server_public_key_path",
        "local_infile_dir",
        "cursorclass",
        "collation",
        "use_unicode",
        "sql_mode",
        "binary_prefix",
        "executemany_fallback",
        "multi_statements",
        "autocommit",
    }
)


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
        # runs after every statement.
        self.get_info = ctypes.PyDLL(name).mariadb_get_info
        self.get_info.restype = None
        self.reset_connection = lib.mysql_reset_connection
        self.reset_connection.argtypes = [ctypes.c_void_p]
        self.reset_connection.restype = ctypes.c_int
        capsule_ptr = ctypes.pythonapi.PyCapsule_GetPointer
        capsule_ptr.restype = ctypes.c_void_p
        capsule_ptr.argtypes = [ctypes.py_object, ctypes.c_char_p]
        self._capsule_ptr = capsule_ptr

    def handle(self, raw: Any) -> int:
        """The connection's ``MYSQL*``, from the capsule mysqlclient hands out for this."""
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

    def connect_arg_names(self) -> frozenset[str]:
        return _CONNECT_ARGS

    def connect(
        self,
        dsn: DSN,
        *,
        connect_timeout: float,
        autocommit: bool,
        connect_args: Mapping[str, Any],
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
        args = dict(connect_args)
        for source in (opts, args):
            for key in ("read_timeout", "write_timeout"):
                if key in source:
                    source[key] = max(1, math.ceil(source[key]))
        ssl = {k[4:]: opts.pop(k) for k in ("ssl_ca", "ssl_cert", "ssl_key") if k in opts}
        if ssl:
            kwargs["ssl"] = ssl
        if opts.pop("ssl_disabled", False):
            kwargs["ssl_mode"] = "DISABLED"
        opts.pop("ssl_verify_cert", None)
        opts.pop("ssl_verify_identity", None)
        kwargs.update(opts)
        kwargs.update(args)
        return self.module.connect(**kwargs)

    def charset(self, raw: Any) -> str:
        return str(raw.character_set_name())

    def fileno(self, raw: Any) -> int:
        try:
            return int(raw.fileno())
        except self.Error:
            return -1

    def status_reader(self, raw: Any) -> Callable[[], int] | None:
        lib = self._lib
        if lib is None:
            return None
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
        with TimedBreak(fd, timeout) as guard:
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
