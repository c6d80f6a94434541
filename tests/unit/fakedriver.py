"""A scripted fake driver for pool-logic tests: no server, but real sockets and a protocol
that can be left out of sync.

Each fake connection owns one end of a socketpair; the test holds the other end as "the server"
and can close it to make the connection dead the way a server timeout or KILL does (the pool
sees the socket become readable). Connect failures and latencies are scripted.

Like a real driver, a fake connection is out of step with its server when a call was cut
short between sending a request and reading its reply (``busy`` stays set): every later call
fails with "Commands out of sync" (2014), which is what tether must never let a borrower see.
"""

from __future__ import annotations

import itertools
import socket
import threading
import time
from collections import deque
from collections.abc import Mapping
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
        self.connection = conn
        self.rows: list[tuple[Any, ...]] = []
        self.rowcount = -1

    def execute(self, query: str, args: Any = None) -> int:
        conn = self.connection
        conn.send(query)
        q = query.strip().upper()
        if q.startswith("BEGIN") or q.startswith("START TRANSACTION"):
            conn.status |= STATUS_IN_TRANS
        elif q.startswith(("COMMIT", "ROLLBACK")):
            conn.status &= ~STATUS_IN_TRANS
        elif q.startswith("SET @") or q.startswith("SET NAMES"):
            conn.status |= STATUS_SESSION_STATE_CHANGED
        elif q.startswith("SET AUTOCOMMIT"):
            on = q.rstrip().endswith("1")
            conn.status = (
                (conn.status | STATUS_AUTOCOMMIT) if on else (conn.status & ~STATUS_AUTOCOMMIT)
            )
            # As the server does: a system variable changed, so the reply flags it.
            conn.status |= STATUS_SESSION_STATE_CHANGED
        rows: list[tuple[Any, ...]] = [(1,)]
        if "VERSION()" in q:
            rows = [("10.11-fake-MariaDB", conn.driver.wait_timeout, 151, 0, 30, 60)]
        conn.receive()
        self.rows = rows
        self.rowcount = len(rows)
        return 1

    def executemany(self, query: str, args: Any) -> int:
        return sum(self.execute(query, a) for a in args)

    def fetchall(self) -> list[tuple[Any, ...]]:
        rows, self.rows = self.rows, []
        return rows

    def fetchone(self) -> tuple[Any, ...] | None:
        return self.rows.pop(0) if self.rows else None

    def nextset(self) -> None:
        return None

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
        self.busy = False  # a request was sent and its reply not read: out of step
        self.statements: list[str] = []
        self.pings = 0
        self.open = True

    # The two halves of a round trip: a call cut short between them leaves ``busy`` set.
    def send(self, what: str) -> None:
        if self.closed:
            raise FakeInterfaceError(0, "")
        if self.busy:
            raise FakeProgrammingError(2014, "Commands out of sync; you can't run this command now")
        if self.server_end.fileno() == -1:
            raise FakeOperationalError(2013, "Lost connection to server during query")
        if what in self.driver.lose_at:  # scripted: the connection dies on this request
            self.driver.lose_at.remove(what)
            self.server_end.close()
            raise FakeOperationalError(2013, "Lost connection to server during query")
        self.busy = True
        self.statements.append(what)

    def receive(self) -> None:
        self.busy = False

    def cursor(self, cursorclass: Any = None) -> FakeCursor:
        return (cursorclass or FakeCursor)(self)

    def begin(self) -> None:
        self.cursor().execute("BEGIN")

    def commit(self) -> None:
        self.cursor().execute("COMMIT")

    def rollback(self) -> None:
        self.cursor().execute("ROLLBACK")

    def autocommit(self, on: bool) -> None:
        self.cursor().execute(f"SET AUTOCOMMIT = {1 if on else 0}")

    def select_db(self, database: str) -> None:
        self.cursor().execute(f"USE {database}")
        self.status |= STATUS_SESSION_STATE_CHANGED

    def thread_id(self) -> int:
        return self.id

    def get_server_info(self) -> str:
        return "10.11-fake-MariaDB"

    def kill(self) -> None:
        """The server side goes away: the pool's poll() sees the socket readable."""
        self.server_end.close()

    def close(self) -> None:
        self.closed = True
        self.open = False
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
        self.lose_at: list[str] = []  # requests whose next send loses the connection

    def connect_arg_names(self) -> frozenset[str]:
        return frozenset({"charset", "sql_mode", "init_command", "read_timeout", "write_timeout"})

    def connect(
        self,
        dsn: DSN,
        *,
        connect_timeout: float,
        autocommit: bool,
        connect_args: Mapping[str, Any],
    ) -> Any:
        if self.connect_delay:
            time.sleep(self.connect_delay)
        with self.lock:
            self.connects += 1
            if self.failures:
                raise self.failures.popleft()
            self.open_now += 1
            conn = FakeConnection(self, autocommit)
            try:
                self.connections.append(conn)
                self.max_open = max(self.max_open, self.open_now)
                return conn
            except BaseException:
                # As a real driver does: a connect cut short closes what it opened.
                conn.close()
                raise

    def charset(self, raw: Any) -> str:
        return "utf8mb4"

    def is_mariadb(self, raw: Any) -> bool:
        return True

    def fileno(self, raw: Any) -> int:
        return -1 if raw.closed else int(raw.sock.fileno())

    def status_reader(self, raw: Any) -> Any:
        return lambda: raw.status

    def clear_state_flag(self, raw: Any) -> None:
        raw.status &= ~STATUS_SESSION_STATE_CHANGED

    def ping(self, raw: Any, timeout: float) -> None:
        raw.pings += 1
        raw.send("<ping>")
        if not self.ping_ok:
            raise FakeOperationalError(2013, "no answer")
        raw.receive()

    def reset(self, raw: Any) -> bool:
        raw.send("<reset>")
        raw.status = STATUS_AUTOCOMMIT
        raw.receive()
        return True

    def close(self, raw: Any) -> None:
        with self.lock:
            if not raw.closed:
                raw.close()

    def abandon(self, raw: Any) -> None:
        self.close(raw)

    def thread_id(self, raw: Any) -> int:
        return int(raw.id)
