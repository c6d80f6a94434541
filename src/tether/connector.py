"""The I/O a pool does on a connection, apart from running its holder's statements: open it
and set its session up, learn the server's limits, ping it, put a returned session back to
its baseline, close it. Blocking calls, made outside the pool's lock; each leaves
``entry.in_flight`` set while it talks to the server, so one cut short by an exception leaves
the connection marked as being in an unknown protocol state (and it is then closed).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .config import Lifetimes, PoolConfig, lifetimes_under
from .cursor import cursor_class
from .drivers import Driver, DriverBase
from .drivers.sockets import poller, tune_socket
from .dsn import DSN
from .entry import Entry
from .errors import driver_error
from .policy import Cleanup, expiry
from .statements import server_milliseconds, server_seconds

if TYPE_CHECKING:
    from .budget import Gate

__all__ = ["ACCOUNT_LIMIT_QUERY", "Connector", "ConnectorBase", "ServerLimits"]

#: The account's own connection limit, where the account may read it.
ACCOUNT_LIMIT_QUERY = (
    "SELECT max_user_connections FROM mysql.user WHERE CONCAT(User, '@', Host) = CURRENT_USER()"
)

logger = logging.getLogger("tether")

#: How long a close waits for the server to end the session before its budget lease is
#: freed (the server counts a session until it has processed the ``QUIT``; a healthy one
#: does so in well under a millisecond, a dead one has closed its end already).
SESSION_END_WAIT = 0.2


def watch_session(fd: int) -> socket.socket | None:
    """A second handle on a connection's socket, taken just before it is closed, to see the
    server end the session (see :func:`session_ended`)."""
    try:
        return socket.socket(fileno=os.dup(fd)) if fd >= 0 else None
    except OSError:
        return None


def session_ended(watch: socket.socket | None, timeout: float = SESSION_END_WAIT) -> None:
    """Wait (at most ``timeout`` seconds) until the server has closed its end of a connection
    whose client end was just closed: ``watch`` is a second handle on that socket."""
    if watch is None:
        return
    deadline = time.monotonic() + timeout
    try:
        while (left := deadline - time.monotonic()) > 0:
            watch.settimeout(left)
            if not watch.recv(4096):
                break  # the server closed the session
    except OSError:
        pass  # reset, timed out: either way, waited enough
    finally:
        watch.close()


class ServerLimits:
    """What the server said about itself on the pool's first connect."""

    __slots__ = (
        "max_connections",
        "max_user_connections",
        "net_read_timeout",
        "net_write_timeout",
        "version",
        "wait_timeout",
    )

    QUERY = (
        "SELECT VERSION(), @@SESSION.wait_timeout, @@GLOBAL.max_connections,"
        " @@SESSION.max_user_connections, @@SESSION.net_read_timeout,"
        " @@SESSION.net_write_timeout"
    )

    def __init__(self, row: Sequence[Any]) -> None:
        self.version = str(row[0])
        self.wait_timeout = float(row[1])
        self.max_connections = int(row[2])
        self.max_user_connections = int(row[3])
        self.net_read_timeout = float(row[4])
        self.net_write_timeout = float(row[5])

    @property
    def mariadb(self) -> bool:
        return "mariadb" in self.version.lower()

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


class ConnectorBase:
    """What opening and resetting a session means, whatever does the I/O: the session
    settings tether relies on, and the lifetimes learnt from the server's limits. The
    threaded :class:`Connector` and the asyncio one (:mod:`tether.aio.connector`) share it."""

    def __init__(self, *, name: str, driver: DriverBase, dsn: DSN, config: PoolConfig) -> None:
        self.name = name
        self.dsn = dsn
        self.config = config
        #: Known after the first connect; the lifetimes follow from it.
        self.server: ServerLimits | None = None
        self.lifetimes: Lifetimes = lifetimes_under(config, None)
        self._driver_base = driver
        #: A fleet-wide budget's gate: a lease before each connect, settled after the close.
        self.gate: Gate | None = None
        if config.budget is not None:
            from .budget import make_gate

            self.gate = make_gate(config.budget, dsn=dsn, name=name, config=config)

    def _take_lease(self) -> Any:
        """A lease of the fleet's budget for one connect (``None`` without a budget); none
        free is refused like the server's own cap (1226): waited out, not raised."""
        gate = self.gate
        if gate is None:
            return None
        token = gate.take()
        if token is None:
            from .budget import BudgetFull

            error = self._driver_base.OperationalError
            raise driver_error(BudgetFull, error, 1226, f"{self.name}: {gate.describe()}")
        return token

    def _settle_lease(self, entry: Entry) -> None:
        token, entry.budget = entry.budget, None
        if token is not None and self.gate is not None:
            self.gate.settle(token)

    def _learn_cap(self, account_limit: int | None) -> None:
        """The budget's cap from the server's limits (read on the first connect)."""
        if self.gate is not None and self.server is not None:
            self.gate.learn(
                max_connections=self.server.max_connections,
                session_user_limit=self.server.max_user_connections,
                account_limit=account_limit,
            )

    def _session_settings(self, raw: Any) -> str:
        """The session variables tether relies on, as one ``SET`` list."""
        settings = ["SESSION session_track_state_change = ON"]
        timeout = self.config.query_timeout
        if timeout is not None:
            # A server-side statement timeout: the server aborts the statement and the
            # connection stays usable (a client-side read timeout would have to drop it).
            if self._driver_base.is_mariadb(raw):
                settings.append(f"SESSION max_statement_time = {server_seconds(timeout)}")
            else:
                settings.append(f"SESSION max_execution_time = {server_milliseconds(timeout)}")
        return ", ".join(settings)

    def _adopt(self, limits: ServerLimits) -> None:
        """Derive lifetimes from the server's own idle timeout (read on first connect): no
        connection is ever kept, or handed out, past what the server would keep."""
        if self.server is not None:
            return
        self.lifetimes = lifetimes_under(self.config, limits.wait_timeout)
        self.server = limits
        for option in ("max_lifetime", "idle_timeout"):
            want = getattr(self.config, option)
            if want is not None and getattr(self.lifetimes, option) < want:
                logger.info(
                    "%s: %s %.0fs is above the server's wait_timeout %.0fs: using %.1fs",
                    self.name,
                    option,
                    want,
                    limits.wait_timeout,
                    getattr(self.lifetimes, option),
                )
        logger.info(
            "%s: server %s, wait_timeout %.0fs, max_connections %d, max_user_connections %d",
            self.name,
            limits.version,
            limits.wait_timeout,
            limits.max_connections,
            limits.max_user_connections,
        )

    @staticmethod
    def _note_status(entry: Entry) -> None:
        if entry.status is not None:
            entry.last_status = entry.status()
        entry.last_used = time.monotonic()


class Connector(ConnectorBase):
    """Opens, checks, cleans and closes one pool's connections."""

    def __init__(self, *, name: str, driver: Driver, dsn: DSN, config: PoolConfig) -> None:
        super().__init__(name=name, driver=driver, dsn=dsn, config=config)
        self.driver = driver

    # ------------------------------------------------------------------ opening

    def open(self, deadline: float) -> Entry:
        """A new connection, its session set up, within ``deadline`` (monotonic); with a
        budget, only with a lease, which the connection then holds."""
        token = self._take_lease()
        try:
            return self._open(deadline, token)
        except BaseException:
            if token is not None and self.gate is not None:
                self.gate.settle(token)
            raise

    def _open(self, deadline: float, token: Any) -> Entry:
        config, driver = self.config, self.driver
        remaining = deadline - time.monotonic()
        raw = driver.connect(
            self.dsn,
            connect_timeout=max(0.05, min(config.connect_timeout, remaining)),
            autocommit=config.autocommit,
            connect_args=config.connect_args,
        )
        try:
            fd = driver.fileno(raw)
            tune_socket(fd)
            self._set_up(raw)
            if self.server is None:
                self._adopt(ServerLimits(driver.execute(raw, ServerLimits.QUERY)[0]))
                if self.gate is not None:
                    self._learn_cap(self._account_limit(raw))
            now = time.monotonic()
            base = type(raw.cursor())
            entry = Entry(
                raw,
                status=driver.status_reader(raw),
                fd=fd,
                poller=poller(fd),
                session_id=driver.thread_id(raw),
                pid=os.getpid(),
                now=now,
                expires=expiry(now, self.lifetimes.max_lifetime),
                cursor_class=cursor_class(base, driver.is_unbuffered(base)),
                baseline=driver.session_baseline(raw, self.dsn, self.config.connect_args),
            )
            entry.budget = token
            return entry
        except BaseException:
            driver.close(raw)
            raise

    def _account_limit(self, raw: Any) -> int | None:
        """The account's own ``MAX_USER_CONNECTIONS``, if it may read ``mysql.user``."""
        try:
            rows = self.driver.execute(raw, ACCOUNT_LIMIT_QUERY)
        except self.driver.Error:
            return None
        return int(rows[0][0]) if rows else None

    def _set_up(self, raw: Any) -> None:
        """Per-session set-up: ask the server to flag every change of session state
        (variables, schema, temporary tables, prepared statements) in its replies, so a
        give-back knows when a reset is needed; run the configured init commands."""
        cur = raw.cursor()
        try:
            cur.execute("SET " + self._session_settings(raw))
            for statement in self.config.init_commands:
                cur.execute(statement)
        finally:
            cur.close()
        self.driver.clear_state_flag(raw)

    # ------------------------------------------------------------------ checking

    def ping(self, entry: Entry, timeout: float) -> None:
        """A round trip with a hard timeout; raises the driver's error if it fails."""
        entry.in_flight = time.monotonic()
        self.driver.ping(entry.raw, timeout)
        entry.in_flight = 0.0
        entry.last_used = time.monotonic()

    # ------------------------------------------------------------------ cleaning

    def clean(self, entry: Entry, plan: Cleanup) -> None:
        """Carry out a give-back's :func:`tether.policy.release_plan`; raises if the server
        does not go along (the caller then closes the connection)."""
        raw = entry.raw
        entry.in_flight = time.monotonic()
        if plan & Cleanup.RESET:
            self.reset(entry)
        else:
            if plan & Cleanup.ROLLBACK:
                raw.rollback()
            if plan & Cleanup.AUTOCOMMIT:
                raw.autocommit(self.config.autocommit)
        entry.in_flight = 0.0
        self._note_status(entry)

    def reset(self, entry: Entry) -> None:
        """Put the session back where opening it left it: the protocol's reset (which rolls
        back, drops temporary tables and user variables, releases locks and resets the
        session's variables to the server's defaults), then everything the driver and the
        configuration had set: character set, ``sql_mode``, ``init_command``, autocommit,
        tether's own settings, the database, the init commands."""
        raw, driver = entry.raw, self.driver
        entry.in_flight = time.monotonic()
        if not driver.reset(raw):
            raise RuntimeError(f"{driver.name} cannot reset a session here")
        cur = raw.cursor()
        try:
            for sql, args in entry.baseline:
                cur.execute(sql, args or None)
            autocommit = 1 if self.config.autocommit else 0
            cur.execute(f"SET {self._session_settings(raw)}, SESSION autocommit = {autocommit}")
            if self.dsn.database:
                raw.select_db(self.dsn.database)
            for statement in self.config.init_commands:
                cur.execute(statement)
        finally:
            cur.close()
        driver.clear_state_flag(raw)
        entry.in_flight = 0.0
        entry.dirty = False
        self._note_status(entry)

    # ------------------------------------------------------------------ closing

    def close(self, entry: Entry) -> None:
        """Close ``entry``'s connection: politely (``QUIT``) in the process that opened it,
        without a byte on its socket in any other (a forked child). Idempotent: closed
        first, forgotten after, so a close cut short is finished by the next."""
        raw = entry.raw
        if raw is not None:
            watch = None
            if entry.pid == os.getpid():
                # With a lease: freed once the server has ended the session, not before.
                if entry.budget is not None:
                    watch = watch_session(self.driver.fileno(raw))
                self.driver.close(raw)
            else:
                self.driver.abandon(raw)
            entry.raw = None
            session_ended(watch)
        if entry.budget is not None:
            self._settle_lease(entry)

    def abandon(self, entry: Entry) -> None:
        """Drop ``entry``'s connection without a byte on its socket."""
        if entry.raw is not None:
            self.driver.abandon(entry.raw)
        entry.raw = None
