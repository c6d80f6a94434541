"""PyMySQL: pure Python, so its quirks are attributes to read and swap."""

from __future__ import annotations

import contextlib
import inspect
import threading
from collections.abc import Callable, Mapping
from typing import Any

from ..dsn import DSN
from . import (
    CLIENT_SESSION_TRACK,
    COM_RESET_CONNECTION,
    STATUS_MORE_RESULTS,
    STATUS_SESSION_STATE_CHANGED,
    Driver,
)

__all__ = ["PyMySQLDriver"]

CLIENT_SSL = 1 << 11


class PyMySQLDriver(Driver):
    name = "pymysql"

    # PyMySQL keeps the status of the last OK packet: the EOF packet ending a result set does
    # not update it. So a SELECT leaves the previous statement's bits in place (harmless for
    # "in transaction" under autocommit, but an implicit transaction opened by a SELECT with
    # autocommit off is invisible: such pools roll back on every return).
    status_after_results = False

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

    def connect_arg_names(self) -> frozenset[str]:
        params = inspect.signature(self.module.connections.Connection.__init__).parameters
        return frozenset(params) - {"self", "defer_connect"}

    def _kwargs(
        self,
        dsn: DSN,
        connect_timeout: float,
        autocommit: bool,
        connect_args: Mapping[str, Any],
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
        # Ask the server to flag replies that changed session state.
        kwargs["client_flag"] = int(kwargs.get("client_flag", 0)) | CLIENT_SESSION_TRACK
        return kwargs

    def connect(
        self,
        dsn: DSN,
        *,
        connect_timeout: float,
        autocommit: bool,
        connect_args: Mapping[str, Any],
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
        try:
            conn.connect()
            conn._read_timeout, conn._write_timeout = want_read, want_write
        except BaseException:
            # Half-open (or interrupted right after opening): never leave the socket behind.
            self.close(conn)
            raise
        return conn

    def charset(self, raw: Any) -> str:
        return str(raw.charset)

    def fileno(self, raw: Any) -> int:
        sock = raw._sock
        if sock is None:
            return -1
        return int(sock.fileno())

    def status_reader(self, raw: Any) -> Callable[[], int] | None:
        # PyMySQL keeps the bits of the last OK packet: its MORE_RESULTS may be left over
        # from an earlier statement of a multi-statement, and need not say that results are
        # left to read. So that bit comes from what PyMySQL knows itself: more result sets
        # to come, or a streamed result not read to its end.
        def read() -> int:
            bits = int(raw.server_status) & ~STATUS_MORE_RESULTS
            result = raw._result
            if result is not None and (result.has_next or result.unbuffered_active):
                bits |= STATUS_MORE_RESULTS
            return bits

        return read

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
        if raw._sock is None:
            return
        with contextlib.suppress(OSError):
            # QUIT, bounded: a server that stopped reading must not hold up a close.
            raw._sock.settimeout(1.0)
        super().close(raw)

    def _drop(self, raw: Any) -> None:
        # _force_close drops the socket without QUIT (and is what PyMySQL's __del__ does).
        raw._force_close()
