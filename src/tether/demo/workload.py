"""The demo's workload, variants and fault schedule.

One workload (threads doing reads by key and small two-statement transactions) runs through
each variant in turn while the same faults are injected on the same schedule. Every request is
timed and its outcome kept; the ledger table tells afterwards which writes really happened.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import tether
from tether.testing import FaultProxy, MariaDBServer

THINK = 0.005  # seconds between a thread's requests


# ----------------------------------------------------------------------------- variants


class Variant:
    """A way to get a connection for one request, as applications write it."""

    name = "?"
    description = ""

    def __init__(self, dsn: dict[str, Any]) -> None:
        self.dsn = dsn

    def connection(self) -> Any:
        """A context manager yielding a DB-API connection."""
        raise NotImplementedError

    def begin(self, conn: Any) -> None:
        conn.begin()

    def close(self) -> None:
        pass


def _pymysql_connect(dsn: dict[str, Any]) -> Any:
    import pymysql

    return pymysql.connect(autocommit=True, **dsn)


class PerRequest(Variant):
    name = "naive per-request"
    description = "connect, query, close: the classic advice"

    @contextlib.contextmanager
    def connection(self) -> Iterator[Any]:
        conn = _pymysql_connect(self.dsn)
        try:
            yield conn
        finally:
            with contextlib.suppress(Exception):
                conn.close()


class NaivePersistent(Variant):
    name = "naive persistent"
    description = "one connection per thread, ping(reconnect=True) before use"

    def __init__(self, dsn: dict[str, Any]) -> None:
        super().__init__(dsn)
        self.local = threading.local()
        self.all: list[Any] = []

    @contextlib.contextmanager
    def connection(self) -> Iterator[Any]:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = _pymysql_connect(self.dsn)
            self.all.append(conn)
        else:
            with contextlib.suppress(DeprecationWarning):
                import warnings

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    conn.ping(reconnect=True)
        yield conn

    def close(self) -> None:
        for conn in self.all:
            with contextlib.suppress(Exception):
                conn.close()


class PersistentDB(Variant):
    name = "DBUtils PersistentDB"
    description = "thread-affine connections, ping on checkout"

    def __init__(self, dsn: dict[str, Any]) -> None:
        super().__init__(dsn)
        import pymysql
        from dbutils.persistent_db import PersistentDB as _PersistentDB

        self.pool = _PersistentDB(pymysql, autocommit=True, **dsn)
        self.opened: list[Any] = []

    @contextlib.contextmanager
    def connection(self) -> Iterator[Any]:
        conn = self.pool.connection()
        yield conn

    def close(self) -> None:
        # PersistentDB keeps connections in thread-locals; close this thread's and let the
        # others go with their threads, as applications do.
        with contextlib.suppress(Exception):
            self.pool.connection().close()


class SQLAlchemyPrePing(Variant):
    name = "SQLAlchemy pre_ping"
    description = "QueuePool(pool_size=8), pool_pre_ping=True"

    def __init__(self, dsn: dict[str, Any]) -> None:
        super().__init__(dsn)
        from sqlalchemy import create_engine

        url = (
            f"mysql+pymysql://{dsn['user']}:{dsn['password']}@{dsn['host']}:{dsn['port']}"
            f"/{dsn['database']}"
        )
        self.engine = create_engine(
            url, pool_size=8, max_overflow=0, pool_pre_ping=True, pool_timeout=10
        )

    @contextlib.contextmanager
    def connection(self) -> Iterator[Any]:
        conn = self.engine.raw_connection()
        try:
            yield conn
        finally:
            conn.close()

    def close(self) -> None:
        self.engine.dispose()


class TetherPool(Variant):
    name = "tether Pool"
    description = "tether.Pool(max_size=8, timeout=10), defaults otherwise"

    def __init__(self, dsn: dict[str, Any]) -> None:
        super().__init__(dsn)
        url = (
            f"mysql://{dsn['user']}:{dsn['password']}@{dsn['host']}:{dsn['port']}/{dsn['database']}"
        )
        self.pool = tether.Pool(url, driver="pymysql", max_size=8, timeout=10, name="demo")

    def connection(self) -> Any:
        return self.pool.connection()

    def close(self) -> None:
        self.pool.close()


VARIANTS: list[type[Variant]] = [
    PerRequest,
    NaivePersistent,
    PersistentDB,
    SQLAlchemyPrePing,
    TetherPool,
]


# ----------------------------------------------------------------------------- outcomes


@dataclass
class Outcome:
    t: float  # seconds since the variant started
    latency: float
    kind: str  # "read" / "write"
    error: str | None  # exception class name, None when it worked
    request_id: int | None = None
    verdict: str = "ok"  # for writes: "committed", "failed", "unknown"


@dataclass
class VariantResult:
    name: str
    description: str
    outcomes: list[Outcome] = field(default_factory=list)
    stuck: list[float] = field(default_factory=list)  # how long still-running requests had run
    phases: list[tuple[str, float, float]] = field(default_factory=list)
    lost: int = 0
    duplicated: int = 0
    half_committed: int = 0
    unexpected: int = 0  # writes reported failed that are in the ledger anyway
    left_open: int = 0
    elapsed: float = 0.0

    @property
    def requests(self) -> int:
        return sum(1 for o in self.outcomes if o.error is None)

    @property
    def errors(self) -> int:
        return sum(1 for o in self.outcomes if o.error is not None)

    def errors_by_kind(self) -> dict[str, int]:
        kinds: dict[str, int] = {}
        for o in self.outcomes:
            if o.error is not None:
                kinds[o.error] = kinds.get(o.error, 0) + 1
        return kinds

    @property
    def longest_stall(self) -> float:
        times = [o.latency for o in self.outcomes] + self.stuck
        return max(times, default=0.0)

    def as_dict(self) -> dict[str, Any]:
        return {
            "variant": self.name,
            "requests": self.requests,
            "errors": self.errors,
            "errors_by_kind": self.errors_by_kind(),
            "longest_stall_s": round(self.longest_stall, 2),
            "stuck_at_end": len(self.stuck),
            "writes_lost": self.lost,
            "writes_duplicated": self.duplicated,
            "half_committed": self.half_committed,
            "failed_writes_that_happened": self.unexpected,
            "connections_left_open": self.left_open,
        }


# ----------------------------------------------------------------------------- the run


class Workload:
    """Threads issuing requests through one variant until told to stop."""

    _ids = itertools.count(1)

    def __init__(self, variant: Variant, threads: int, result: VariantResult) -> None:
        self.variant = variant
        self.threads = threads
        self.result = result
        self.start = time.monotonic()
        self.running = threading.Event()
        self.running.set()
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.in_flight: dict[int, float] = {}
        self.workers = [
            threading.Thread(target=self._loop, args=(n,), daemon=True, name=f"demo-{n}")
            for n in range(threads)
        ]

    def begin(self) -> None:
        for w in self.workers:
            w.start()

    def pause(self) -> None:
        self.running.clear()

    def resume(self) -> None:
        self.running.set()

    def finish(self, grace: float) -> None:
        self.stop.set()
        self.running.set()
        deadline = time.monotonic() + grace
        for w in self.workers:
            w.join(max(0.0, deadline - time.monotonic()))
        now = time.monotonic()
        with self.lock:
            # Requests still blocked (a peer hanging on a dead socket): count how long.
            self.result.stuck = [now - started for started in self.in_flight.values()]

    def _loop(self, n: int) -> None:
        rnd = random.Random(n)
        while not self.stop.is_set():
            self.running.wait()
            if self.stop.is_set():
                break
            write = rnd.random() < 0.3
            self._request(n, write, rnd)
            time.sleep(THINK)

    def _request(self, n: int, write: bool, rnd: random.Random) -> None:
        started = time.monotonic()
        with self.lock:
            self.in_flight[n] = started
        request_id = next(self._ids) if write else None
        error: str | None = None
        verdict = "ok"
        try:
            with self.variant.connection() as conn:
                cur = conn.cursor()
                if write:
                    verdict = "failed"
                    self.variant.begin(conn)
                    cur.execute("INSERT INTO ledger (request_id) VALUES (%s)", (request_id,))
                    time.sleep(0.01)  # a transaction that is open for a while
                    cur.execute("UPDATE counters SET n = n + 1 WHERE id = 1")
                    conn.commit()
                    verdict = "committed"
                else:
                    cur.execute("SELECT name FROM city WHERE id = %s", (rnd.randint(1, 100),))
                    cur.fetchall()
                cur.close()
        except Exception as exc:
            error = type(exc).__name__
            if isinstance(exc, tether.OutcomeUnknown):
                verdict = "unknown"
            elif write and verdict == "committed":
                verdict = "committed"  # failed after COMMIT returned (closing): it happened
            else:
                verdict = "failed" if write else "ok"
        latency = time.monotonic() - started
        with self.lock:
            self.in_flight.pop(n, None)
            self.result.outcomes.append(
                Outcome(
                    started - self.start,
                    latency,
                    "write" if write else "read",
                    error,
                    request_id,
                    verdict,
                )
            )


@dataclass
class Phase:
    name: str
    seconds: float
    action: Callable[[Any], None] | None = None  # called at the phase's start with the run
    at: float = 0.0  # when within the phase to fire the action


class Run:
    """Everything one variant's run can touch: the server, the proxy, the workload."""

    def __init__(self, server: MariaDBServer, proxy: FaultProxy, workload: Workload) -> None:
        self.server = server
        self.proxy = proxy
        self.workload = workload


def _kill_app_sessions(run: Run) -> None:
    run.server.kill_sessions()


def _restart(down: float) -> Callable[[Run], None]:
    def action(run: Run) -> None:
        run.server.restart(down=down)

    return action


def _idle(pause: float) -> Callable[[Run], None]:
    def action(run: Run) -> None:
        run.workload.pause()
        time.sleep(pause)
        run.workload.resume()

    return action


def _cap(limit: int) -> Callable[[Run], None]:
    def action(run: Run) -> None:
        s = run.server
        s.execute_admin(f"ALTER USER '{s.user}'@'%' WITH MAX_USER_CONNECTIONS {int(limit)}")
        s.kill_sessions()  # everyone reconnects under the cap

    return action


def _blackhole(seconds: float) -> Callable[[Run], None]:
    def action(run: Run) -> None:
        run.proxy.blackhole()
        time.sleep(seconds)
        run.proxy.pass_through()

    return action


def _kill_in_transaction(seconds: float) -> Callable[[Run], None]:
    def action(run: Run) -> None:
        deadline = time.monotonic() + seconds
        killed = 0
        while time.monotonic() < deadline and killed < 3:
            rows = run.server.execute_admin(
                "SELECT trx_mysql_thread_id FROM information_schema.INNODB_TRX"
            )
            if rows:
                killed += run.server.kill_sessions(ids=[int(rows[0][0])])
                time.sleep(0.3)
            else:
                time.sleep(0.002)

    return action


def schedule(quick: bool) -> list[Phase]:
    k = 0.5 if quick else 1.0
    return [
        Phase("warm-up", 2 * k),
        Phase("idle past wait_timeout", 3.0 + 2 * k, _idle(3.0)),
        Phase("sessions killed", 3 * k, _kill_app_sessions, at=0.5 * k),
        Phase("server restart", 3.5 + 2 * k, _restart(1.5 if not quick else 1.0), at=0.5 * k),
        Phase("connection cap 4 < 8 threads", 4 * k, _cap(4), at=0.2),
        Phase("blackhole", 6.0 + 3 * k, _blackhole(3.0), at=0.5),
        Phase("killed inside a transaction", 3 * k, _kill_in_transaction(2 * k), at=0.2),
    ]


def reset_server(server: MariaDBServer) -> None:
    db = server.database
    server.execute_admin(f"ALTER USER '{server.user}'@'%' WITH MAX_USER_CONNECTIONS 0")
    server.kill_sessions()
    for statement in (
        f"DROP TABLE IF EXISTS {db}.ledger, {db}.counters, {db}.city",
        f"CREATE TABLE {db}.ledger (id INT AUTO_INCREMENT PRIMARY KEY, request_id INT NOT NULL)",
        f"CREATE TABLE {db}.counters (id INT PRIMARY KEY, n INT NOT NULL)",
        f"INSERT INTO {db}.counters VALUES (1, 0)",
        f"CREATE TABLE {db}.city (id INT PRIMARY KEY, name VARCHAR(32))",
        f"INSERT INTO {db}.city SELECT seq, CONCAT('city-', seq) FROM {db}.seq_1_to_100",
    ):
        server.execute_admin(statement)


def audit(server: MariaDBServer, result: VariantResult) -> None:
    """Compare what the application believes with what the server has."""
    db = server.database
    counts: dict[int, int] = {
        int(rid): int(n)
        for rid, n in server.execute_admin(
            f"SELECT request_id, COUNT(*) FROM {db}.ledger GROUP BY request_id"
        )
    }
    for o in result.outcomes:
        if o.kind != "write" or o.request_id is None:
            continue
        present = counts.get(o.request_id, 0)
        if present > 1:
            result.duplicated += present - 1
        if o.verdict == "committed" and present == 0:
            result.lost += 1
        elif o.verdict == "failed" and present:
            result.unexpected += 1
    ledger_rows = sum(counts.values())
    counter = int(server.execute_admin(f"SELECT n FROM {db}.counters WHERE id = 1")[0][0])
    # Each transaction inserts one ledger row and bumps the counter once, atomically.
    result.half_committed = abs(ledger_rows - counter)
