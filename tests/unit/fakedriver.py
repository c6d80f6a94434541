"""A scripted fake driver for pool-logic tests: no server, but real sockets.

Each fake connection owns one end of a socketpair; the test holds the other end as "the server"
and can close it to make the connection dead the way a server timeout or KILL does (the pool
sees the socket become readable). Connect failures and latencies are scripted.
"""

from __future__ import annotations

import itertools
import socket
import threading
import time
from collections import deque
from typing import Any

from tether.drivers import STATUS_AUTOCOMMIT, STATUS_IN_TRANS, STATUS_SESSION_STATE_CHANGED, Driver
from tether.dsn import DSN


class FakeError(Exception):
    pass


class FakeOperationalError(FakeError):
    pass


class FakeInterfaceError(FakeError):
    pass


class FakeProgrammingError(FakeError):
    pass


class FakeCursor:
    def __init__(self, conn: FakeConnection) -> None:
        self.conn = conn
        self.rows: list[tuple[Any, ...]] = []

    def execute(self, query: str, args: Any = None) -> int:
        self.conn.check()
        self.conn.statements.append(query)
        q = query.strip().upper()
        if q.startswith("BEGIN") or q.startswith("START TRANSACTION"):
            self.conn.status |= STATUS_IN_TRANS
        elif q.startswith(("COMMIT", "ROLLBACK")):
            self.conn.status &= ~STATUS_IN_TRANS
        elif q.startswith("SET @"):
            self.conn.status |= STATUS_SESSION_STATE_CHANGED
        self.rows = [(1,)]
        if "VERSION()" in q:
            self.rows = [("10.11-fake", self.conn.driver.wait_timeout, 151, 0, 30, 60)]
        return 1

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self.rows

    def fetchone(self) -> tuple[Any, ...] | None:
        return self.rows[0] if self.rows else None

    def close(self) -> None:
        pass


class FakeConnection:
    _ids = itertools.count(1)

    def __init__(self, driver: FakeDriver, autocommit: bool) -> None:
        self.driver = driver
        self.sock, self.server_end = socket.socketpair()
        self.id = next(self._ids)
        self.status = STATUS_AUTOCOMMIT if autocommit else 0
        self.closed = False
        self.statements: list[str] = []
        self.pings = 0

    def check(self) -> None:
        if self.closed:
            raise FakeInterfaceError(0, "")
        if self.server_end.fileno() == -1:
            raise FakeOperationalError(2013, "Lost connection to server during query")

    def cursor(self) -> FakeCursor:
        return FakeCursor(self)

    def begin(self) -> None:
        self.cursor().execute("BEGIN")

    def commit(self) -> None:
        self.cursor().execute("COMMIT")

    def rollback(self) -> None:
        self.cursor().execute("ROLLBACK")

    def autocommit(self, on: bool) -> None:
        self.check()
        self.status = (
            (self.status | STATUS_AUTOCOMMIT) if on else (self.status & ~STATUS_AUTOCOMMIT)
        )

    def kill(self) -> None:
        """The server side goes away: the pool's poll() sees the socket readable."""
        self.server_end.close()

    def close(self) -> None:
        self.closed = True
        self.sock.close()
        if self.server_end.fileno() != -1:
            self.server_end.close()
        self.driver.open_now -= 1


class FakeDriver(Driver):
    name = "fake"
    Error = FakeError
    OperationalError = FakeOperationalError
    InterfaceError = FakeInterfaceError
    ProgrammingError = FakeProgrammingError

    def __init__(self, *, wait_timeout: int = 28800, connect_delay: float = 0.0) -> None:
        self.module = None
        self.wait_timeout = wait_timeout
        self.connect_delay = connect_delay
        self.failures: deque[BaseException] = deque()  # raised by the next connects, in order
        self.connections: list[FakeConnection] = []
        self.lock = threading.Lock()
        self.open_now = 0
        self.max_open = 0
        self.connects = 0
        self.ping_ok = True

    def connect(
        self, dsn: DSN, *, connect_timeout: float, autocommit: bool, connect_args: dict[str, Any]
    ) -> Any:
        if self.connect_delay:
            time.sleep(self.connect_delay)
        with self.lock:
            self.connects += 1
            if self.failures:
                raise self.failures.popleft()
            conn = FakeConnection(self, autocommit)
            self.connections.append(conn)
            self.open_now += 1
            self.max_open = max(self.max_open, self.open_now)
            return conn

    def fileno(self, raw: Any) -> int:
        return -1 if raw.closed else int(raw.sock.fileno())

    def status_reader(self, raw: Any) -> Any:
        return lambda: raw.status

    def clear_state_flag(self, raw: Any) -> None:
        raw.status &= ~STATUS_SESSION_STATE_CHANGED

    def ping(self, raw: Any, timeout: float) -> None:
        raw.pings += 1
        raw.check()
        if not self.ping_ok:
            raise FakeOperationalError(2013, "no answer")

    def reset(self, raw: Any) -> bool:
        raw.check()
        raw.statements.append("<reset>")
        raw.status = STATUS_AUTOCOMMIT
        return True

    def close(self, raw: Any) -> None:
        with self.lock:
            if not raw.closed:
                raw.close()

    def abandon(self, raw: Any) -> None:
        self.close(raw)

    def thread_id(self, raw: Any) -> int:
        return int(raw.id)
