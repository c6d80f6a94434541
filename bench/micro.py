"""The micro benchmark: one request (check out, SELECT a row by primary key, fetch, give back)
through a raw held connection, connect-per-request, DBUtils, SQLAlchemy and tether, plus the
cost of a check-out alone, of a connect, and where tether's time goes.

Every way of serving the request is a small :class:`Variant` with ``setup``, ``checkout``
(or ``request``) and ``teardown``; everything else is shared.
"""

from __future__ import annotations

import contextlib
import cProfile
import pstats
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import partial
from typing import Any

from common import (
    POOL_SIZE,
    QUERY,
    ROWS,
    ConnectionCounter,
    connect_kwargs,
    driver_module,
    median,
    process_cpu,
    sqlalchemy_url,
)

import tether
from tether.cursor import cursor_class
from tether.testing import MariaDBServer

WARMUP_TIMEOUT = 60.0  # every thread's first request (its connect) must be done by then
JOIN_GRACE = 30.0  # past the cell's end, for a request in flight
MAX_REQUESTS = 1_000_000  # per thread and cell: a bound on the loop besides time
_rng = random.Random(7)
KEYS = [_rng.randint(1, ROWS) for _ in range(4096)]  # the ids asked for, the same every run


def query(conn: Any, key: int) -> Any:
    """The request's work on a connection, the same for every variant."""
    cur = conn.cursor()
    try:
        cur.execute(QUERY, (key,))
        return cur.fetchone()
    finally:
        cur.close()


# ----------------------------------------------------------------------------- variants


class Variant:
    """One way of serving the request. ``checkout()`` is a context manager yielding a DB-API
    connection; ``request(key)`` runs the query on one."""

    name = "?"

    def __init__(self, server: MariaDBServer, driver: str) -> None:
        self.server, self.driver = server, driver
        self.module = driver_module(driver)
        self.kwargs = connect_kwargs(server, driver)

    def setup(self) -> None:
        pass

    def checkout(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def request(self, key: int) -> None:
        with self.checkout() as conn:
            query(conn, key)

    def teardown(self) -> None:
        pass


class Raw(Variant):
    """A connection opened once per thread and held: no pool at all, the limit."""

    name = "raw held connection"

    def setup(self) -> None:
        self.local = threading.local()
        self.conns: list[Any] = []
        self.lock = threading.Lock()

    def open(self) -> Any:
        conn = self.module.connect(**self.kwargs)
        with self.lock:
            self.conns.append(conn)
        return conn

    def connection(self) -> Any:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = self.open()
        return conn

    def checkout(self) -> AbstractContextManager[Any]:
        return contextlib.nullcontext(self.connection())

    def request(self, key: int) -> None:
        query(self.connection(), key)

    def teardown(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(Exception):
                conn.close()


class ConnectPerRequest(Variant):
    name = "connect per request"
    tls = True

    def setup(self) -> None:
        self.connect = partial(
            self.module.connect, **connect_kwargs(self.server, self.driver, tls=self.tls)
        )

    def checkout(self) -> AbstractContextManager[Any]:
        return contextlib.closing(self.connect())


class ConnectPerRequestNoTLS(ConnectPerRequest):
    name = "connect per request, TLS off"
    tls = False


class DBUtilsPersistent(Variant):
    """One connection per thread, pinged on every ``connection()`` (``ping=1``, the default);
    ``close()`` is a no-op, as the DBUtils docs use it."""

    name = "DBUtils PersistentDB"

    def setup(self) -> None:
        from dbutils.persistent_db import PersistentDB

        self.pool = PersistentDB(self.module, **self.kwargs)

    def checkout(self) -> AbstractContextManager[Any]:
        return contextlib.closing(self.pool.connection())


class DBUtilsPooled(DBUtilsPersistent):
    """Defaults (``ping=1``, ``reset=True``: a rollback on every return) except the bound,
    16 connections, and ``blocking=True`` so that a 17th thread waits instead of failing."""

    name = "DBUtils PooledDB"

    def setup(self) -> None:
        from dbutils.pooled_db import PooledDB

        self.pool = PooledDB(self.module, maxconnections=POOL_SIZE, blocking=True, **self.kwargs)

    def teardown(self) -> None:
        self.pool.close()


class SQLAlchemyQueuePool(Variant):
    """``engine.raw_connection()``: SQLAlchemy's leanest pooled path (the pool's check-out and
    reset-on-return rollback, no statement layer). Defaults otherwise."""

    name = "SQLAlchemy QueuePool"
    pre_ping = False

    def setup(self) -> None:
        from sqlalchemy import create_engine

        self.engine = create_engine(
            sqlalchemy_url(self.server, self.driver),
            pool_size=POOL_SIZE,
            max_overflow=0,
            pool_pre_ping=self.pre_ping,
        )

    def checkout(self) -> AbstractContextManager[Any]:
        return contextlib.closing(self.engine.raw_connection())

    def teardown(self) -> None:
        self.engine.dispose()


class SQLAlchemyPrePing(SQLAlchemyQueuePool):
    name = "SQLAlchemy QueuePool pre_ping"
    pre_ping = True


class SQLAlchemyCore(SQLAlchemyQueuePool):
    """``engine.connect()``, what most applications use (check-out only, for comparison)."""

    name = "SQLAlchemy engine.connect()"

    def checkout(self) -> AbstractContextManager[Any]:
        return self.engine.connect()


class TetherPool(Variant):
    """Defaults, every safety on (socket poll on check-out, ping after 1 s idle, lifetimes,
    status check on return, watchdog), sized 16 like the other pools."""

    name = "tether Pool"
    cls: type[tether.Pool] = tether.Pool

    def __init__(
        self,
        server: MariaDBServer,
        driver: str,
        *,
        max_size: int = POOL_SIZE,
        raw_beside: bool = False,
    ) -> None:
        super().__init__(server, driver)
        self.max_size = max_size
        # A raw variant will use this pool's connections behind its back: no background
        # maintenance, which polls idle sockets once a second and would take a raw reply
        # arriving on an "idle" one for a server-side close. It is off the request path.
        self.raw_beside = raw_beside

    def setup(self) -> None:
        extra = {"maintenance_interval": 3600.0} if self.raw_beside else {}
        self.pool = self.cls(self.server.dsn(), driver=self.driver, max_size=self.max_size, **extra)

    def checkout(self) -> AbstractContextManager[Any]:
        return self.pool.connection()

    def teardown(self) -> None:
        self.pool.close()


class TetherThreadLocal(TetherPool):
    name = "tether ThreadLocalPool"
    cls = tether.ThreadLocalPool


class TetherThreadLocalDefaults(TetherThreadLocal):
    """``ThreadLocalPool(dsn)`` as a DBUtils PersistentDB user writes it: no option at all, so
    the default bound (``max_size`` 10), maintenance and watchdog; the driver named by the
    DSN's scheme. Above 10 threads a thread at times finds no idle connection of its own and
    takes over another thread's idle one, or waits."""

    name = "tether ThreadLocalPool, defaults"

    def setup(self) -> None:
        scheme = "mysql+pymysql" if self.driver == "pymysql" else "mysql+mysqldb"
        dsn = self.server.dsn()
        self.pool = self.cls(scheme + dsn[dsn.index("://") :])


VARIANTS: list[type[Variant]] = [
    Raw,
    ConnectPerRequest,
    ConnectPerRequestNoTLS,
    DBUtilsPersistent,
    DBUtilsPooled,
    SQLAlchemyQueuePool,
    SQLAlchemyPrePing,
    TetherPool,
    TetherThreadLocal,
    TetherThreadLocalDefaults,
]
POOLS: list[type[Variant]] = [
    TetherPool,
    TetherThreadLocal,
    DBUtilsPersistent,
    DBUtilsPooled,
    SQLAlchemyQueuePool,
    SQLAlchemyPrePing,
    SQLAlchemyCore,
]


@contextlib.contextmanager
def running(variant: Variant) -> Iterator[Variant]:
    variant.setup()
    try:
        yield variant
    finally:
        variant.teardown()


# ----------------------------------------------------------------------------- throughput


@dataclass
class Sample:
    """One cell: one variant, one driver, one thread count, one round."""

    qps: float
    p50_us: float
    p99_us: float
    cpu_us: float  # this process's CPU time per request (all threads)
    server_cpu_us: float  # the server's CPU time per request
    opened: int  # connects the server accepted during the cell, warm-up included
    errors: int
    first_error: str | None


def run_cell(variant: Variant, threads: int, seconds: float, counter: ConnectionCounter) -> Sample:
    """Every thread makes one request to warm up (its connect, outside the clock), then all
    start together and run requests for ``seconds``."""
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors = [0] * threads
    finished = [0.0] * threads
    first_error: list[str] = []
    barrier = threading.Barrier(threads + 1)

    def fail(n: int, exc: Exception) -> None:
        errors[n] += 1
        if not first_error:
            first_error.append(f"{type(exc).__name__}: {exc}")

    def worker(n: int) -> None:
        request, perf, out = variant.request, time.perf_counter, latencies[n]
        keys, i = KEYS, n * 97
        try:
            request(keys[i & 4095])
        except Exception as exc:
            fail(n, exc)
        try:
            barrier.wait(WARMUP_TIMEOUT)
        except threading.BrokenBarrierError:
            return
        end = perf() + seconds
        t1 = 0.0
        while t1 < end and len(out) < MAX_REQUESTS:
            i += 1
            t0 = perf()
            try:
                request(keys[i & 4095])
            except Exception as exc:
                fail(n, exc)
                time.sleep(0.001)  # a failing variant must not spin
                t1 = perf()
                continue
            t1 = perf()
            out.append(t1 - t0)
        finished[n] = t1

    before = counter.read()
    with running(variant):
        workers = [
            threading.Thread(target=worker, args=(n,), daemon=True, name=f"bench-{n}")
            for n in range(threads)
        ]
        for w in workers:
            w.start()
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(WARMUP_TIMEOUT)
        server_pid = variant.server.pid or 0
        t0, cpu0 = time.perf_counter(), time.process_time()
        server0 = process_cpu(server_pid)
        deadline = t0 + seconds + JOIN_GRACE
        for w in workers:
            w.join(max(0.0, deadline - time.perf_counter()))
        cpu = time.process_time() - cpu0
        server_cpu = process_cpu(server_pid) - server0
        elapsed = max(max(finished) - t0, 1e-9)
        stuck = sum(w.is_alive() for w in workers)
        if stuck and not first_error:
            first_error.append(f"{stuck} thread(s) still busy {JOIN_GRACE:g} s after the end")
        opened = counter.read() - before
    merged = sorted(x for lst in latencies for x in lst)
    count = len(merged)
    return Sample(
        qps=count / elapsed,
        p50_us=merged[count // 2] * 1e6 if count else 0.0,
        p99_us=merged[min(count - 1, int(count * 0.99))] * 1e6 if count else 0.0,
        cpu_us=cpu / count * 1e6 if count else 0.0,
        server_cpu_us=server_cpu / count * 1e6 if count else 0.0,
        opened=opened,
        errors=sum(errors) + stuck,
        first_error=first_error[0] if first_error else None,
    )


Cells = dict[tuple[str, str, int], list[Sample]]


def run_cells(
    server: MariaDBServer,
    counter: ConnectionCounter,
    *,
    drivers: list[str],
    thread_counts: list[int],
    rounds: int,
    seconds: float,
) -> Cells:
    """Round-robin: every round runs each (threads, driver) group's variants back to back,
    in an order rotated every round, so the cells compared sit close in time."""
    cells: Cells = {}
    total = rounds * len(thread_counts) * len(drivers) * len(VARIANTS)
    done = 0
    for round_no in range(rounds):
        for t_index, threads in enumerate(thread_counts):
            for driver in drivers:
                shift = (round_no + t_index) % len(VARIANTS)
                for cls in VARIANTS[shift:] + VARIANTS[:shift]:
                    sample = run_cell(cls(server, driver), threads, seconds, counter)
                    cells.setdefault((cls.name, driver, threads), []).append(sample)
                    done += 1
                    print(
                        f"[{done}/{total}] {driver:11} {threads:2} threads {cls.name:32}"
                        f" {sample.qps:9,.0f} q/s  p99 {sample.p99_us:8,.0f} µs"
                        + (f"  errors {sample.errors}" if sample.errors else ""),
                        flush=True,
                    )
    return cells


def ratios(cells: Cells, name: str, driver: str, threads: int) -> list[float]:
    """Per-round ratios to the raw cell of the same round (taken moments apart)."""
    raw = cells[(Raw.name, driver, threads)]
    own = cells[(name, driver, threads)]
    return [s.qps / r.qps for s, r in zip(own, raw, strict=True) if r.qps > 0]


# ----------------------------------------------------------------------------- interleaved


PLAIN_PYTHON_US = 5.0  # the extra work of the "raw + plain Python" control, per request


class RawOnPool(Raw):
    """The raw held connection on the very driver connection that a tether pool keeps for
    this thread (checked out once, its driver connection used directly from then on;
    measurement only). Two connections' requests can run several percent apart for as long
    as both are open (which server thread, which buffers), so raw and tether are compared on
    the same connections where they can be. The pool closes them."""

    def __init__(self, server: MariaDBServer, driver: str, on: TetherPool) -> None:
        super().__init__(server, driver)
        self.on = on

    def open(self) -> Any:
        # The thread's own connection from now on: a thread gets its last one back. The
        # driver's connection is read from the lease, not through ``conn.raw``, which would
        # mark the session as changed (and have it reset on return).
        with self.on.pool.connection() as conn:
            entry = conn._lease.entry if conn._lease is not None else None
            if entry is None or entry.raw is None:
                raise RuntimeError("a checked-out connection without a driver connection")
            return entry.raw

    def request(self, key: int) -> None:
        try:
            query(self.connection(), key)
        except Exception:
            self.local.conn = None  # replaced by the pool meanwhile: take its new one
            raise

    def teardown(self) -> None:
        pass


class RawPlusPython(RawOnPool):
    """The raw held connection plus a fixed amount of plain Python per request (a loop that
    touches nothing shared): what extra CPU alone does to throughput, as a control."""

    name = f"raw + {PLAIN_PYTHON_US:g} µs of plain Python"
    loops = 0  # set by calibrate()

    @classmethod
    def calibrate(cls) -> None:
        n, elapsed = 20_000, 0.0
        while elapsed < 0.02:
            n *= 2
            t0 = time.perf_counter()
            for _ in range(n):
                pass
            elapsed = time.perf_counter() - t0
        cls.loops = max(1, int(n / (elapsed * 1e6) * PLAIN_PYTHON_US))

    def request(self, key: int) -> None:
        for _ in range(self.loops):
            pass
        super().request(key)


class RawAgain(RawOnPool):
    """The raw held connection on another set of connections (tether Pool's up to 16
    threads; the plain one runs on tether ThreadLocalPool's). Against the plain one: how far
    two sets of connections land apart."""

    name = "raw held connection, again"


def base_of(name: str, threads: int) -> str:
    """The raw variant a variant's A/B ratio is taken against. Up to 16 threads raw runs on
    the compared pools' own connections: tether Pool against raw on tether Pool's ("raw held
    connection, again"), the rest against raw on tether ThreadLocalPool's (the defaults pool
    keeps at most 10, fewer than the threads at 16, so it has no like set of its own). Above
    16 threads raw holds a connection per thread, which no pool of 16 has: every variant
    against "raw held connection", on connections of its own."""
    if threads <= POOL_SIZE and name == TetherPool.name:
        return RawAgain.name
    return Raw.name


def ab_variants(
    server: MariaDBServer, driver: str, threads: int
) -> tuple[list[Variant], list[TetherPool]]:
    """The A/B's variants, and the pools whose connections the raw variants use.

    Up to 16 threads: tether Pool and tether ThreadLocalPool (sized 16), ThreadLocalPool
    with its defaults, raw on ThreadLocalPool's connections, raw again on Pool's, and the
    control on ThreadLocalPool's. Above 16 threads (64 threads on 16 connections): the two
    pools of 16, shared by all threads, against raw with a connection per thread (on a
    pool of as many connections as threads, opened by tether's own connect path like the
    pools', so the sessions are alike), raw again on a second such set, and the control."""
    if threads <= POOL_SIZE:
        pool = TetherPool(server, driver, raw_beside=True)
        local = TetherThreadLocal(server, driver, raw_beside=True)
        first, second = local, pool
        variants: list[Variant] = [pool, local, TetherThreadLocalDefaults(server, driver)]
    else:
        # Nothing runs raw on these pools' connections: their defaults, maintenance on.
        variants = [TetherPool(server, driver), TetherThreadLocal(server, driver)]
        first = TetherPool(server, driver, max_size=threads, raw_beside=True)
        second = TetherPool(server, driver, max_size=threads, raw_beside=True)
    variants += [
        RawOnPool(server, driver, first),
        RawAgain(server, driver, second),
        RawPlusPython(server, driver, first),
    ]
    return variants, [first, second]


POOL_EVENTS = ("checkouts", "waits", "takeovers", "resets", "pings", "opened", "closed")


def interleaved(
    server: MariaDBServer,
    driver: str,
    threads: int,
    each: int,
    slice_seconds: float,
    events: dict[str, dict[str, int]] | None = None,
) -> dict[str, list[float]]:
    """The same worker threads alternate between the variants (:func:`ab_variants`) in
    short slices, ``each`` of every variant (every cycle one slice of each, in a new random
    order), so that every
    variant sees the same machine state: a slow moment of the host lands on all of them
    instead of on whichever cell it hit. Returns each variant's queries/s per slice (a
    request counts for the variant it started in); ``events``, when given, gets what each
    tether variant's pool counted during the slices (:data:`POOL_EVENTS`).

    Why a new order every cycle: a slice begins with the threads finishing the requests
    they started in the slice before, on its clock, and with the caches as that variant
    left them. With several threads that is a few percent of a 20 ms slice, and in a fixed
    cyclic order (rotating it keeps who follows whom) each variant always followed the same
    one: raw after the slowest variant, say, and raw again after raw. Two sets of raw
    requests on the same kind of connection then ran 2-4% apart at 16 threads, for no
    reason but their places. Shuffled, every variant follows every other about as often."""
    RawPlusPython.calibrate()
    variants, keepers = ab_variants(server, driver, threads)
    current = [0]
    stop = threading.Event()
    counts = [[0] * len(variants) for _ in range(threads)]
    errors = [[0] * len(variants) for _ in range(threads)]
    barrier = threading.Barrier(threads + 1)
    claim = threading.Barrier(threads)
    per_slice: dict[str, list[float]] = {v.name: [] for v in variants}

    def worker(n: int) -> None:
        keys, i, mine, failed = KEYS, n * 97, counts[n], errors[n]
        try:
            # Raw uses the keepers' connections behind their backs, which is safe only while
            # no other thread is handed the one a thread uses raw. A thread gets its last
            # connection back as long as it is idle, and only that thread uses it: so every
            # thread first holds one of each keeper's at the same time (each its own), and
            # from then on no keeper gives one thread's connection to another. Checked below.
            with contextlib.ExitStack() as held:
                for keeper in keepers:
                    held.enter_context(keeper.pool.connection())
                claim.wait(WARMUP_TIMEOUT)
            for variant in variants:
                variant.request(keys[i & 4095])  # a warm-up
            barrier.wait(WARMUP_TIMEOUT)
        except Exception:  # a broken barrier or a failed warm-up: nothing to measure
            claim.abort()
            barrier.abort()
            return
        done = 0
        while not stop.is_set() and done < MAX_REQUESTS * len(variants):
            which = current[0]
            i += 1
            try:
                variants[which].request(keys[i & 4095])
            except Exception:
                failed[which] += 1
                time.sleep(0.001)
                continue
            mine[which] += 1
            done += 1

    setups = [*(k for k in keepers if k not in variants), *variants]
    workers = [
        threading.Thread(target=worker, args=(n,), daemon=True, name=f"bench-ab-{n}")
        for n in range(threads)
    ]
    ready: list[Variant] = []
    try:
        for variant in setups:
            variant.setup()
            ready.append(variant)
        for w in workers:
            w.start()
        try:
            barrier.wait(WARMUP_TIMEOUT)
        except threading.BrokenBarrierError:
            raise RuntimeError("the A/B's warm-up failed") from None
        claimed = [k.pool.stats().counters.as_dict() for k in keepers]
        pools = [v for v in variants if isinstance(v, TetherPool)]
        started = [v.pool.stats().counters.as_dict() for v in pools]
        order = list(range(len(variants)))
        shuffle = random.Random(threads).shuffle  # the same orders for the same run
        for s in range(each * len(variants)):
            if s % len(order) == 0:
                shuffle(order)
            which = order[s % len(order)]
            before = sum(c[which] for c in counts)
            current[0] = which
            t0 = time.perf_counter()
            time.sleep(slice_seconds)
            elapsed = time.perf_counter() - t0
            after = sum(c[which] for c in counts)
            per_slice[variants[which].name].append((after - before) / elapsed)
        stop.set()
        for w in workers:
            w.join(JOIN_GRACE)
        if events is not None:
            for v, then in zip(pools, started, strict=True):
                now = v.pool.stats().counters.as_dict()
                events[v.name] = {k: now[k] - then[k] for k in POOL_EVENTS}
        for keeper, then in zip(keepers, claimed, strict=True):
            now = keeper.pool.stats().counters.as_dict()
            moved = {k: now[k] - then[k] for k in ("opened", "closed") if now[k] != then[k]}
            if moved:
                raise RuntimeError(
                    f"the connections raw runs on changed during the A/B ({moved}): raw ran"
                    " on connections the pool may have handed to another thread"
                )
        totals = [sum(column) for column in zip(*errors, strict=True)]
        failures = {v.name: n for v, n in zip(variants, totals, strict=True) if n}
        if failures:
            raise RuntimeError(f"requests failed during the A/B: {failures}")
    finally:
        stop.set()
        for w in workers:
            w.join(JOIN_GRACE)
        for variant in ready:
            variant.teardown()
    return per_slice


# ----------------------------------------------------------------------------- costs


def per_call_us(fn: Callable[[], Any], budget: float) -> float:
    """Median over batches (about 20 ms each, for ``budget`` seconds, at least 5) of the
    mean time of one ``fn()`` call, in microseconds."""
    for _ in range(20):
        fn()
    t0 = time.perf_counter()
    fn()
    batch = max(10, int(0.02 / max(time.perf_counter() - t0, 1e-7)))
    samples: list[float] = []
    stop = time.perf_counter() + budget
    while len(samples) < 5 or (time.perf_counter() < stop and len(samples) < 500):
        t0 = time.perf_counter()
        for _ in range(batch):
            fn()
        samples.append((time.perf_counter() - t0) / batch * 1e6)
    return median(samples)


def acquire_release(
    server: MariaDBServer, driver: str, budget: float, rounds: int = 5
) -> dict[str, float]:
    """Microseconds per check-out + give-back, one thread, no statement: the pools take
    turns for ``rounds`` rounds, and each reports its fastest round (a round's figure is
    its batches' median). The host of a VM can be twice as slow for seconds at a time;
    spread over the run and taken at its best, the figure is the code's cost, not that
    of the moment it happened to run in."""
    samples: dict[str, list[float]] = {}
    with contextlib.ExitStack() as stack:
        variants = [stack.enter_context(running(cls(server, driver))) for cls in POOLS]
        for _ in range(rounds):
            for variant in variants:

                def pair(variant: Variant = variant) -> None:
                    with variant.checkout():
                        pass

                samples.setdefault(variant.name, []).append(per_call_us(pair, budget / rounds))
    return {name: min(values) for name, values in samples.items()}


def connect_cost(server: MariaDBServer, driver: str, n: int) -> dict[str, float]:
    """Milliseconds per connect + close (median of ``n``, the ways interleaved).

    tether's figure is its own connect path, the pool's connector (the driver's connect, with
    the pool's TLS context reused for PyMySQL; socket tuning; one ``SET`` for session
    tracking) followed by its close: what the pool pays whenever it opens a connection."""
    module = driver_module(driver)
    default, off = connect_kwargs(server, driver), connect_kwargs(server, driver, tls=False)
    ways: dict[str, Callable[[], None]] = {
        "driver, TLS default": lambda: module.connect(**default).close(),
        "driver, TLS disabled": lambda: module.connect(**off).close(),
    }
    samples: dict[str, list[float]] = {}
    with tether.Pool(server.dsn(), driver=driver, max_size=1) as pool:
        with pool.connection():
            pass  # the first connect: reads the server's limits (and builds a TLS context)
        connector = pool._connector  # tether's own connect path (read-only use)

        def through_tether() -> None:
            connector.close(connector.open(time.monotonic() + 10))

        ways["tether Pool connect (TLS default)"] = through_tether
        for _ in range(n):
            for name, fn in ways.items():
                t0 = time.perf_counter()
                fn()
                samples.setdefault(name, []).append((time.perf_counter() - t0) * 1e3)
    return {name: median(values) for name, values in samples.items()}


# The steps of the CPU breakdown, each timed as a whole request on one thread.
RAW = "raw held connection"
FULL_POOL = "tether Pool"
FULL_LOCAL = "tether ThreadLocalPool"
RAW_LOCAL = "raw held connection, on tether ThreadLocalPool's"


class _StubCursor:
    """A cursor that does no I/O: what is left of a query is the proxy's own work."""

    def __init__(self, connection: Any = None) -> None:
        self.connection = connection

    def execute(self, query: Any, args: Any = None) -> int:
        return 1

    def fetchone(self) -> Any:
        return ("city",)

    def close(self) -> None:
        pass


class _StubConnection:
    def cursor(self, *args: Any, **kwargs: Any) -> _StubCursor:
        return _StubCursor(self)


@dataclass
class Breakdown:
    """tether's cost per request, alone (no I/O, exact) and in context (thread CPU)."""

    cpu: dict[str, float]  # whole request, CPU µs, in context
    wall: dict[str, float]  # whole request, wall µs
    proxy_alone: float | None  # cursor/execute/fetchone/close through the proxy, minus direct
    status_read: float | None  # one read of the server status bits

    def extra(self, step: str) -> float:
        """CPU per request over raw's on the same connection."""
        return self.cpu[step] - self.cpu[RAW_LOCAL if step == FULL_LOCAL else RAW]


def breakdown(server: MariaDBServer, driver: str, n: int, rounds: int) -> Breakdown:
    """Whole requests on one thread (tether Pool, tether ThreadLocalPool, and raw on each
    pool's own connection), client CPU by
    ``time.thread_time`` (other threads and processes do not count), alternated quickly for
    ``rounds`` rounds of ``n`` requests, medians; and the proxy's own cost per query with the
    I/O taken out: the checked-out connection's entry is pointed at a stub driver connection
    (a private field, for this measurement only), its real status reader kept."""
    with (
        running(TetherPool(server, driver, raw_beside=True)) as pool,
        running(TetherThreadLocal(server, driver, raw_beside=True)) as local,
    ):
        # Raw on the very connections the pools hold: two connections can differ by more
        # than what is measured here.
        raw, raw_local = RawOnPool(server, driver, pool), RawOnPool(server, driver, local)
        raw.setup()
        raw_local.setup()
        variants: dict[str, Variant] = {
            RAW: raw,
            RAW_LOCAL: raw_local,
            FULL_POOL: pool,
            FULL_LOCAL: local,
        }
        cpu: dict[str, list[float]] = {}
        wall: dict[str, list[float]] = {}
        for variant in variants.values():
            for key in KEYS[:50]:
                variant.request(key)
        for _ in range(rounds):
            for name, variant in variants.items():
                step = variant.request
                c0, w0 = time.thread_time(), time.perf_counter()
                for i in range(n):
                    step(KEYS[i & 4095])
                cpu.setdefault(name, []).append((time.thread_time() - c0) / n * 1e6)
                wall.setdefault(name, []).append((time.perf_counter() - w0) / n * 1e6)
        assert isinstance(pool, TetherPool)
        proxy_alone = status_read = None
        with pool.pool.connection() as conn:
            lease = getattr(conn, "_lease", None)
            entry = getattr(lease, "entry", None)
            status = getattr(entry, "status", None)
            if callable(status):
                status_read = per_call_us(status, 0.2)
            real = getattr(entry, "raw", None)
            if entry is not None and real is not None:
                stub = _StubConnection()
                direct = per_call_us(lambda: query(stub, 1), 0.2)
                # The connection makes its cursors of tether's subclass of the driver's
                # cursor class: here, of the stub's. The status reader stays the real one.
                real_class = entry.cursor_class
                entry.raw, entry.cursor_class = stub, cursor_class(_StubCursor, False)
                try:
                    proxied = per_call_us(lambda: query(conn, 1), 0.2)
                finally:
                    entry.raw, entry.cursor_class = real, real_class
                proxy_alone = proxied - direct
    return Breakdown(
        cpu={k: median(v) for k, v in cpu.items()},
        wall={k: median(v) for k, v in wall.items()},
        proxy_alone=proxy_alone,
        status_read=status_read,
    )


@dataclass
class ProfileRow:
    function: str
    calls: float  # per request
    own_us: float  # per request, under the profiler
    share: float  # of tether's own profiled time


@dataclass
class Profile:
    tether: list[ProfileRow]  # tether's functions by own time
    others: list[ProfileRow]  # the rest (driver, sockets, the benchmark loop)
    tether_share: float  # tether's own time over the whole request's


def profile(server: MariaDBServer, driver: str, n: int) -> Profile:
    """cProfile of ``n`` requests through tether Pool on one thread. The profiler's clock is
    wall time and it inflates small Python functions: the shares matter, not the µs."""
    with running(TetherPool(server, driver)) as variant:
        for key in KEYS[:50]:
            variant.request(key)
        prof = cProfile.Profile()
        prof.enable()
        for i in range(n):
            variant.request(KEYS[i & 4095])
        prof.disable()
    stats: dict[Any, Any] = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    entries = sorted(
        ((func, nc, tt) for func, (_cc, nc, tt, _ct, _callers) in stats.items()),
        key=lambda e: e[2],
        reverse=True,
    )
    total = sum(tt for _, _, tt in entries) or 1e-9
    ours = [e for e in entries if _is_tether(e[0])]
    ours_total = sum(tt for _, _, tt in ours) or 1e-9
    others = [e for e in entries if not _is_tether(e[0])]
    return Profile(
        tether=[
            ProfileRow(_name(f), nc / n, tt / n * 1e6, tt / ours_total) for f, nc, tt in ours[:12]
        ],
        others=[ProfileRow(_name(f), nc / n, tt / n * 1e6, tt / total) for f, nc, tt in others[:6]],
        tether_share=ours_total / total,
    )


def _is_tether(func: tuple[str, int, str]) -> bool:
    return "/tether/" in func[0]


def _name(func: tuple[str, int, str]) -> str:
    file, line, name = func
    if file == "~":  # a builtin: "<method 'recv_into' of '_socket.socket' objects>"
        return re.sub(r" at 0x[0-9a-f]+", "", name).strip("<>")
    parts = file.replace("\\", "/").split("/")
    return f"{'/'.join(parts[-2:])}:{line} {name}"
