"""asyncio driver adapters: every asyncmy and aiomysql quirk :class:`tether.AsyncPool` relies
on lives here, as the threaded drivers' quirks live in :mod:`tether.drivers`.

Beyond what :class:`tether.drivers.DriverBase` gives (error classes and numbers, status bits,
cursor classes, connect arguments), an adapter does the I/O as coroutines: a connect bounded as
a whole (handshake included), a ping with a hard timeout, the protocol's session reset. Two
things it does without awaiting anything, so that no cancellation can cut them short:

- the transport check (:meth:`AsyncDriver.broken`): whether the stream is closed, at EOF, in
  error, or holds bytes nobody asked for (an idle session has nothing to say; the error a
  server sends before it drops a session is such bytes);
- closing (:meth:`AsyncDriver.close`): ``QUIT`` is written to the transport, which flushes it
  and then closes the socket by itself; nothing waits for the server. A connection whose
  protocol state is unknown gets the same: the server sees the socket close either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import struct
import threading
from collections.abc import Callable, Mapping
from typing import Any

from ..drivers import (
    CLIENT_SESSION_TRACK,
    COM_RESET_CONNECTION,
    STATUS_SESSION_STATE_CHANGED,
    DriverBase,
)
from ..drivers.sockets import break_socket, neuter_fd
from ..dsn import DSN

__all__ = ["AsyncDriver", "get_async_driver", "resolve_async_driver"]

# A COM_QUIT packet: length 1, sequence 0, command 0x01.
_QUIT = struct.pack("<i", 1) + bytes([0x01])

# What both drivers' socket set-up (keepalive, no-delay) raises when it finds the transport
# already closed: under uvloop, a peer that reset the connection right after accepting it (a
# proxy whose server is down, a server going away mid-restart).
_TRANSPORT_GONE = "Transport does not expose socket instance"

# Connections dropped in a forked child: kept referenced so that their transports are never
# collected (a collected transport closes its socket through the parent's event loop).
_inherited: list[Any] = []


class AsyncDriver(DriverBase):
    """What the asyncio pool needs from an async MySQL driver."""

    #: The driver's connection class, and how its connect coroutine is reached.
    connection_class: Any

    def connect_arg_names(self) -> frozenset[str]:
        params = inspect.signature(self.connection_class.__init__).parameters
        return frozenset(params) - {"self", "loop"}

    def _kwargs(
        self, dsn: DSN, autocommit: bool, connect_args: Mapping[str, Any]
    ) -> dict[str, Any]:
        raise NotImplementedError

    async def connect(
        self,
        dsn: DSN,
        *,
        connect_timeout: float,
        autocommit: bool,
        connect_args: Mapping[str, Any],
    ) -> Any:
        """A new connection within ``connect_timeout`` (handshake included). A connect that
        fails, times out or is cancelled leaves no socket behind."""
        raw = self.connection_class(**self._kwargs(dsn, autocommit, connect_args))
        try:
            async with asyncio.timeout(connect_timeout):
                await self._handshake(raw)
        except TimeoutError:
            self.close(raw)
            raise self.OperationalError(
                2013, f"Lost connection to server at handshake: no answer in {connect_timeout:g}s"
            ) from None
        except OSError as exc:
            self.close(raw)
            raise self.OperationalError(2003, f"Can't connect to server ({exc})") from exc
        except RuntimeError as exc:
            self.close(raw)
            if str(exc) != _TRANSPORT_GONE:
                raise
            raise self.OperationalError(
                2013, "Lost connection to server at handshake (reset by the peer)"
            ) from exc
        except BaseException:
            self.close(raw)
            raise
        return raw

    async def _handshake(self, raw: Any) -> None:
        raise NotImplementedError

    def charset(self, raw: Any) -> str:
        return str(raw.charset if not callable(raw.charset) else raw.charset())

    def status_reader(self, raw: Any) -> Callable[[], int] | None:
        # A partial of getattr runs in C, with no Python frame.
        return functools.partial(getattr, raw, "server_status")

    def clear_state_flag(self, raw: Any) -> None:
        # The bit would otherwise stay set through every following statement.
        raw.server_status &= ~STATUS_SESSION_STATE_CHANGED

    def thread_id(self, raw: Any) -> int:
        return int(raw.thread_id())

    def is_unbuffered(self, cursor_class: type[Any]) -> bool:
        return issubclass(cursor_class, self.module.cursors.SSCursor)

    def default_cursor(self) -> type[Any]:
        return self.module.cursors.Cursor  # type: ignore[no-any-return]

    def cursor(self, raw: Any, cursor_class: type[Any] | None) -> Any:
        """A driver cursor of ``cursor_class`` (``None``: the default) on ``raw``."""
        return raw.cursor(cursor_class) if cursor_class is not None else raw.cursor()

    # -- the transport

    def transport(self, raw: Any) -> Any:
        """The connection's asyncio transport, or ``None`` once closed."""
        raise NotImplementedError

    def fileno(self, raw: Any) -> int:
        """The socket's descriptor, or -1 when the connection is closed."""
        transport = self.transport(raw)
        if transport is None:
            return -1
        sock = transport.get_extra_info("socket")
        return -1 if sock is None else int(sock.fileno())

    def broken(self, raw: Any) -> bool:
        """Whether an idle connection's stream is closed, at EOF, in error, or holds unread
        bytes: it is dead (no round trip; what the event loop has already read)."""
        raise NotImplementedError

    def closed_transport(self, raw: Any, exc: BaseException) -> BaseException | None:
        """What ``exc``, raised by a call on ``raw``, means if it is uvloop refusing a write
        on a closed transport (``RuntimeError``: "the handler is closed"; aiomysql passes it
        on, asyncmy turns it into its own 2006): the driver's 2006, the request never left.
        ``None`` for anything else."""
        if not isinstance(exc, RuntimeError):
            return None
        transport = self.transport(raw) if raw is not None else None
        if transport is not None and not transport.is_closing():
            return None
        return self.OperationalError(2006, f"MySQL server has gone away ({exc})")

    # -- round trips

    async def ping(self, raw: Any, timeout: float) -> None:
        """A round trip that raises the driver's error if the server does not answer within
        ``timeout`` (the connection is then closed: its protocol state is unknown)."""
        try:
            async with asyncio.timeout(timeout):
                await raw.ping(False)
        except RuntimeError as exc:
            lost = self.closed_transport(raw, exc)
            if lost is None:
                raise
            raise lost from exc
        except TimeoutError:
            self.close(raw)
            raise self.OperationalError(
                2013, f"Lost connection to server: no answer to a ping in {timeout:g}s"
            ) from None

    async def reset(self, raw: Any) -> bool:
        """``COM_RESET_CONNECTION``."""
        await raw._execute_command(COM_RESET_CONNECTION, "")
        await raw._read_ok_packet()
        return True

    async def execute(
        self, raw: Any, sql: str, args: tuple[Any, ...] = ()
    ) -> list[tuple[Any, ...]]:
        """Run one statement on ``raw`` and return its rows."""
        cur = self.cursor(raw, None)
        try:
            await cur.execute(sql, args or None)
            return list(await cur.fetchall() or ())
        finally:
            with contextlib.suppress(self.Error):
                await cur.close()

    # -- closing, without awaiting

    def close(self, raw: Any) -> None:
        """Close now: ``QUIT`` written to the transport, which flushes it, then closes the
        socket by itself. Never awaits, so a cancellation cannot leave it half done; a
        connection already closed is no error. With the event loop already closed (at
        exit), the socket is shut down directly."""
        transport = self.transport(raw)
        if transport is None:
            return
        try:
            if not transport.is_closing():
                with contextlib.suppress(OSError, RuntimeError):
                    transport.write(_QUIT)
            raw.close()
        except RuntimeError:
            # The loop is closed: the transport cannot schedule its own close.
            fd = self.fileno(raw)
            if fd >= 0:
                break_socket(fd)
            self._forget(raw)

    def abandon(self, raw: Any) -> None:
        """Drop a connection inherited from a parent process without a byte on its socket,
        and without touching the parent's event loop: the descriptor is pointed at a blank
        socket, and the transport is kept referenced (never collected, never closed)."""
        fd = self.fileno(raw)
        if fd >= 0:
            neuter_fd(fd)
        _inherited.append(raw)
        self._forget(raw)

    def _forget(self, raw: Any) -> None:
        """Make ``raw`` look closed without calling its transport."""
        raise NotImplementedError


class AsyncmyDriver(AsyncDriver):
    name = "asyncmy"
    # asyncmy keeps the status of every reply, the EOF that ends a result set included.
    status_after_results = True
    more_results_in_status = True

    def __init__(self) -> None:
        import asyncmy
        import asyncmy.cursors
        import asyncmy.errors

        self.module = asyncmy
        self.Error = asyncmy.errors.Error
        self.OperationalError = asyncmy.errors.OperationalError
        self.InterfaceError = asyncmy.errors.InterfaceError
        self.ProgrammingError = asyncmy.errors.ProgrammingError
        self.connection_class = asyncmy.Connection

    def _kwargs(
        self, dsn: DSN, autocommit: bool, connect_args: Mapping[str, Any]
    ) -> dict[str, Any]:
        opts = dict(dsn.options)
        opts.pop("connect_timeout", None)  # the pool bounds the whole connect
        kwargs: dict[str, Any] = {
            "host": dsn.host,
            "port": dsn.port,
            "user": dsn.user,
            "password": dsn.password,
            "database": dsn.database,
            "charset": opts.pop("charset", "utf8mb4"),
            "autocommit": autocommit,
        }
        kwargs.update(opts)
        kwargs.update(connect_args)
        # Ask the server to flag replies that changed session state.
        kwargs["client_flag"] = int(kwargs.get("client_flag", 0)) | CLIENT_SESSION_TRACK
        return kwargs

    async def _handshake(self, raw: Any) -> None:
        await raw.connect()

    def charset(self, raw: Any) -> str:
        return str(raw._charset)

    def is_mariadb(self, raw: Any) -> bool:
        return "mariadb" in str(raw.get_server_info()).lower()

    def transport(self, raw: Any) -> Any:
        return raw._transport

    def broken(self, raw: Any) -> bool:
        if raw._stream_broken:
            return True
        proto = raw._proto
        return bool(proto.length != proto.pos)

    def _forget(self, raw: Any) -> None:
        raw._transport = None
        raw._connected = False


class AiomysqlDriver(AsyncDriver):
    name = "aiomysql"
    # aiomysql, a PyMySQL port, keeps the status of the last OK packet only (see
    # tether.drivers.pymysql): with autocommit off, every give-back rolls back.
    status_after_results = False
    more_results_in_status = False

    def __init__(self) -> None:
        import aiomysql
        import aiomysql.cursors

        self.module = aiomysql
        self.Error = aiomysql.Error
        self.OperationalError = aiomysql.OperationalError
        self.InterfaceError = aiomysql.InterfaceError
        self.ProgrammingError = aiomysql.ProgrammingError
        self.connection_class = aiomysql.Connection

    def _kwargs(
        self, dsn: DSN, autocommit: bool, connect_args: Mapping[str, Any]
    ) -> dict[str, Any]:
        opts = dict(dsn.options)
        opts.pop("connect_timeout", None)  # the pool bounds the whole connect
        kwargs: dict[str, Any] = {
            "host": dsn.host,
            "port": dsn.port,
            "user": dsn.user,
            "password": dsn.password,
            "db": dsn.database,
            "charset": opts.pop("charset", "utf8mb4"),
            "autocommit": autocommit,
        }
        kwargs.update(opts)
        kwargs.update(connect_args)
        kwargs["client_flag"] = int(kwargs.get("client_flag", 0)) | CLIENT_SESSION_TRACK
        return kwargs

    async def _handshake(self, raw: Any) -> None:
        await raw._connect()

    def cursor(self, raw: Any, cursor_class: type[Any] | None) -> Any:
        # aiomysql's Connection.cursor() returns an awaitable wrapper; the cursor itself is
        # made the way it makes it.
        cls = cursor_class if cursor_class is not None else raw.cursorclass
        return cls(raw, raw._echo)

    def charset(self, raw: Any) -> str:
        return str(raw.charset)

    def transport(self, raw: Any) -> Any:
        writer = raw._writer
        return None if writer is None else writer.transport

    def broken(self, raw: Any) -> bool:
        writer, reader = raw._writer, raw._reader
        if writer is None or reader is None or writer.transport.is_closing():
            return True
        return bool(reader._eof or reader._buffer or reader._exception is not None)

    def _forget(self, raw: Any) -> None:
        raw._writer = None
        raw._reader = None


_drivers: dict[str, AsyncDriver] = {}
_drivers_lock = threading.Lock()
_CLASSES: dict[str, Callable[[], AsyncDriver]] = {
    "asyncmy": AsyncmyDriver,
    "aiomysql": AiomysqlDriver,
}
# When none is named: asyncmy first, the faster one.
_PREFERENCE = ("asyncmy", "aiomysql")


def get_async_driver(name: str | None) -> AsyncDriver:
    """The adapter for ``name`` ("asyncmy" or "aiomysql"; ``None``: whichever is
    installed)."""
    if name is None:
        for candidate in _PREFERENCE:
            try:
                return get_async_driver(candidate)
            except ImportError:
                continue
        raise ImportError(
            "no asyncio MySQL driver installed: pip install 'tether[asyncmy]' or 'tether[aiomysql]'"
        )
    key = name.lower() if isinstance(name, str) else None
    if key not in _CLASSES:
        raise ValueError(f"driver={name!r} is not supported here (use 'asyncmy' or 'aiomysql')")
    with _drivers_lock:
        driver = _drivers.get(key)
        if driver is None:
            try:
                driver = _CLASSES[key]()
            except ImportError as exc:
                raise ImportError(
                    f"driver={name!r} is not installed: pip install 'tether[{key}]'"
                ) from exc
            _drivers[key] = driver
    return driver


def resolve_async_driver(driver: str | AsyncDriver | None, dsn: DSN) -> AsyncDriver:
    """The adapter an async pool uses: ``driver`` (a name or an adapter), else the one the
    DSN's scheme names, else whichever is installed."""
    if isinstance(driver, AsyncDriver):
        return driver
    if driver is not None and not isinstance(driver, str):
        raise ValueError(f"driver must be 'asyncmy' or 'aiomysql', not {driver!r}")
    if dsn.driver is not None and dsn.driver not in _CLASSES:
        raise ValueError(
            f"the DSN's scheme names {dsn.driver!r}, a threaded driver: use"
            " mysql+asyncmy:// or mysql+aiomysql:// (or tether.Pool)"
        )
    if driver is not None and dsn.driver is not None and driver.lower() != dsn.driver:
        raise ValueError(
            f"driver={driver!r} disagrees with the DSN's scheme, which names {dsn.driver!r}"
        )
    return get_async_driver(driver or dsn.driver)
