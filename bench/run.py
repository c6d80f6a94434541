"""tether beside its peers on the same work, in one run, against a throwaway MariaDB.

    python bench/run.py            # full run, writes bench/RESULTS.md and bench/*.png
    python bench/run.py --quick    # under a minute, for CI: proves the harness works

Every cell runs the same request (check out, SELECT a row by primary key, fetch, give back)
through one variant, one driver, at one thread count, for a fixed time. Cells are interleaved
(round-robin over variants) and repeated; reported figures are medians over rounds. Ratios are
to a raw connection held by each thread (the limit: no pool at all), same driver, same threads.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import tether
from tether.testing import MariaDBServer

HERE = Path(__file__).resolve().parent
ROWS = 1000
QUERY = "SELECT name FROM city WHERE id = %s"
POOL_SIZE = 16


# ----------------------------------------------------------------------------- drivers


def driver_module(driver: str) -> Any:
    if driver == "pymysql":
        import pymysql

        return pymysql
    import MySQLdb

    return MySQLdb


def connect_kwargs(server: MariaDBServer, driver: str, *, tls: bool = True) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "host": server.host,
        "port": server.port,
        "user": server.user,
        "password": server.password,
        "database": server.database,
        "charset": "utf8mb4",
        "autocommit": True,
    }
    if not tls:
        kwargs["ssl_disabled" if driver == "pymysql" else "ssl_mode"] = (
            True if driver == "pymysql" else "DISABLED"
        )
    return kwargs


def raw_connect(server: MariaDBServer, driver: str, *, tls: bool = True) -> Any:
    return driver_module(driver).connect(**connect_kwargs(server, driver, tls=tls))


def sqlalchemy_url(server: MariaDBServer, driver: str) -> str:
    dialect = "mysql+pymysql" if driver == "pymysql" else "mysql+mysqldb"
    return (
        f"{dialect}://{server.user}:{server.password}@{server.host}:{server.port}"
        f"/{server.database}?charset=utf8mb4"
    )


# ----------------------------------------------------------------------------- variants


class Variant:
    """One way of getting a connection for a request. ``checkout`` is a context manager
    yielding a DB-API connection; ``close`` releases everything."""

    name = "?"

    def __init__(self, server: MariaDBServer, driver: str, threads: int) -> None:
        self.server, self.driver, self.threads = server, driver, threads

    @contextmanager
    def checkout(self) -> Iterator[Any]:
        raise NotImplementedError
        yield

    def close(self) -> None:
        pass


class Raw(Variant):
    """A connection opened once per thread and held: the limit, no pool at all."""

    name = "raw held connection"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.local = threading.local()
        self.all: list[Any] = []
        self.lock = threading.Lock()

    @contextmanager
    def checkout(self) -> Iterator[Any]:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = raw_connect(self.server, self.driver)
            with self.lock:
                self.all.append(conn)
        yield conn

    def close(self) -> None:
        for conn in self.all:
            conn.close()


class ConnectPerRequest(Variant):
    name = "connect per request"
    tls = True

    @contextmanager
    def checkout(self) -> Iterator[Any]:
        conn = raw_connect(self.server, self.driver, tls=self.tls)
        try:
            yield conn
        finally:
            conn.close()


class ConnectPerRequestNoTLS(ConnectPerRequest):
    name = "connect per request, TLS off"
    tls = False


class DBUtilsPersistent(Variant):
    name = "DBUtils PersistentDB"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        from dbutils.persistent_db import PersistentDB

        self.pool = PersistentDB(
            driver_module(self.driver), **connect_kwargs(self.server, self.driver)
        )

    @contextmanager
    def checkout(self) -> Iterator[Any]:
        conn = self.pool.connection()
        try:
            yield conn
        finally:
            conn.close()  # a no-op for persistent connections, as the docs use it


class DBUtilsPooled(Variant):
    name = "DBUtils PooledDB"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        from dbutils.pooled_db import PooledDB

        self.pool = PooledDB(
            driver_module(self.driver),
            maxconnections=POOL_SIZE,
            maxcached=POOL_SIZE,
            blocking=True,
            **connect_kwargs(self.server, self.driver),
        )

    @contextmanager
    def checkout(self) -> Iterator[Any]:
        conn = self.pool.connection()
        try:
            yield conn
        finally:
            conn.close()

    def close(self) -> None:
        self.pool.close()


class SQLAlchemyQueuePool(Variant):
    name = "SQLAlchemy QueuePool"
    pre_ping = False

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        from sqlalchemy import create_engine

        # raw_connection() is SQLAlchemy's leanest pooled path: the pool's own checkout and
        # reset-on-return, no Core statement layer.
        self.engine = create_engine(
            sqlalchemy_url(self.server, self.driver),
            pool_size=POOL_SIZE,
            max_overflow=0,
            pool_pre_ping=self.pre_ping,
            pool_timeout=60,
        )

    @contextmanager
    def checkout(self) -> Iterator[Any]:
        conn = self.engine.raw_connection()
        try:
            yield conn
        finally:
            conn.close()

    def close(self) -> None:
        self.engine.dispose()


class SQLAlchemyPrePing(SQLAlchemyQueuePool):
    name = "SQLAlchemy QueuePool pre_ping"
    pre_ping = True


class TetherPool(Variant):
    name = "tether Pool"
    cls: type[tether.Pool] = tether.Pool

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        # Every safety on (defaults): liveness poll, ping after idle, lifetimes, watchdog.
        self.pool = self.cls(self.server.dsn(), driver=self.driver, max_size=POOL_SIZE, timeout=60)

    def checkout(self) -> Any:
        return self.pool.connection()

    def close(self) -> None:
        self.pool.close()


class TetherThreadLocal(TetherPool):
    name = "tether ThreadLocalPool"
    cls = tether.ThreadLocalPool


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
]


# ----------------------------------------------------------------------------- measuring


@dataclass
class Cell:
    variant: str
    driver: str
    threads: int
    qps: list[float] = field(default_factory=list)
    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    opened: list[int] = field(default_factory=list)
    errors: int = 0


def server_connections(server: MariaDBServer) -> int:
    return int(server.execute_admin("SHOW GLOBAL STATUS LIKE 'Connections'")[0][1])


def run_cell(variant: Variant, seconds: float, cell: Cell) -> None:
    stop = time.monotonic() + seconds
    latencies: list[list[float]] = [[] for _ in range(variant.threads)]
    errors = [0]
    start_barrier = threading.Barrier(variant.threads + 1, timeout=60)

    def worker(n: int) -> None:
        rnd = random.Random(n)
        out = latencies[n]
        start_barrier.wait()
        perf = time.perf_counter
        while time.monotonic() < stop and len(out) < 2_000_000:
            t0 = perf()
            try:
                with variant.checkout() as conn:
                    cur = conn.cursor()
                    cur.execute(QUERY, (rnd.randint(1, ROWS),))
                    cur.fetchone()
                    cur.close()
            except Exception:
                errors[0] += 1
                continue
            out.append(perf() - t0)

    before = server_connections(variant.server)
    workers = [threading.Thread(target=worker, args=(n,)) for n in range(variant.threads)]
    for w in workers:
        w.start()
    start_barrier.wait()
    t_start = time.monotonic()
    for w in workers:
        w.join(seconds + 120)
    elapsed = time.monotonic() - t_start
    opened = server_connections(variant.server) - before - 1  # minus our own admin session
    merged = sorted(x for lst in latencies for x in lst)
    cell.qps.append(len(merged) / elapsed)
    cell.p50.append(merged[len(merged) // 2] * 1e6 if merged else 0.0)
    cell.p99.append(merged[int(len(merged) * 0.99)] * 1e6 if merged else 0.0)
    cell.opened.append(opened)
    cell.errors += errors[0]


def acquire_release_us(make: Callable[[], Any], checkout: Callable[[Any], Any], n: int) -> float:
    """Microseconds per checkout + return, no statement, one thread (best of 5 runs)."""
    pool = make()
    try:
        with checkout(pool):
            pass
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(n):
                with checkout(pool):
                    pass
            best = min(best, (time.perf_counter() - t0) / n * 1e6)
        return best
    finally:
        close = getattr(pool, "close", None) or getattr(pool, "dispose", None)
        if close:
            close()


@contextmanager
def closing_checkout(conn: Any) -> Iterator[Any]:
    try:
        yield conn
    finally:
        conn.close()


def measure_acquire(server: MariaDBServer, driver: str, n: int) -> dict[str, float]:
    from dbutils.persistent_db import PersistentDB
    from dbutils.pooled_db import PooledDB
    from sqlalchemy import create_engine

    module = driver_module(driver)
    kwargs = connect_kwargs(server, driver)
    dsn = server.dsn()
    url = sqlalchemy_url(server, driver)
    return {
        "tether Pool": acquire_release_us(
            lambda: tether.Pool(dsn, driver=driver), lambda p: p.connection(), n
        ),
        "tether ThreadLocalPool": acquire_release_us(
            lambda: tether.ThreadLocalPool(dsn, driver=driver), lambda p: p.connection(), n
        ),
        "DBUtils PersistentDB": acquire_release_us(
            lambda: PersistentDB(module, **kwargs),
            lambda p: closing_checkout(p.connection()),
            n,
        ),
        "DBUtils PooledDB": acquire_release_us(
            lambda: PooledDB(module, maxconnections=POOL_SIZE, blocking=True, **kwargs),
            lambda p: closing_checkout(p.connection()),
            n,
        ),
        "SQLAlchemy QueuePool": acquire_release_us(
            lambda: create_engine(url, pool_size=POOL_SIZE, max_overflow=0),
            lambda e: closing_checkout(e.raw_connection()),
            n,
        ),
        "SQLAlchemy QueuePool pre_ping": acquire_release_us(
            lambda: create_engine(url, pool_size=POOL_SIZE, max_overflow=0, pool_pre_ping=True),
            lambda e: closing_checkout(e.raw_connection()),
            n,
        ),
    }


def measure_connect(server: MariaDBServer, driver: str, n: int) -> dict[str, float]:
    """Milliseconds per connect + close (median of n)."""

    def timed(fn: Callable[[], None]) -> float:
        samples = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(samples)

    result = {
        "driver default (TLS preferred)": timed(lambda: raw_connect(server, driver).close()),
        "driver, TLS off": timed(lambda: raw_connect(server, driver, tls=False).close()),
    }
    # tether's own connect path: what the pool pays to open a connection (one TLS context per
    # pool, socket tuning, session set-up), measured by opening and closing through it.
    with tether.Pool(server.dsn(), driver=driver) as pool:
        with pool.connection():
            pass

        def through_tether() -> None:
            entry = pool._open(time.monotonic() + 10)
            pool.driver.close(entry.raw)

        result["tether Pool connect"] = timed(through_tether)
    return result


# ----------------------------------------------------------------------------- report


def versions() -> dict[str, str]:
    from importlib.metadata import version

    out = {"Python": platform.python_version()}
    for dist in ("tether", "PyMySQL", "mysqlclient", "DBUtils", "SQLAlchemy"):
        try:
            out[dist] = version(dist)
        except Exception:
            out[dist] = "?"
    return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def chart(cells: dict[tuple[str, str, int], Cell], thread_counts: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drivers = sorted({d for _, d, _ in cells})
    names = [v.name for v in VARIANTS if v is not Raw]
    fig, axes = plt.subplots(1, len(drivers), figsize=(7 * len(drivers), 5), squeeze=False)
    width = 0.8 / len(thread_counts)
    for ax, driver in zip(axes[0], drivers, strict=True):
        for i, threads in enumerate(thread_counts):
            raw = statistics.median(cells[("raw held connection", driver, threads)].qps)
            ratios = [statistics.median(cells[(n, driver, threads)].qps) / raw for n in names]
            xs = [j + i * width for j in range(len(names))]
            label = f"{threads} threads" + (" on 16 conns" if threads > POOL_SIZE else "")
            ax.bar(xs, ratios, width, label=label)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.axhline(0.95, color="grey", linewidth=0.8, linestyle="--")
        ax.set_xticks([j + width * (len(thread_counts) - 1) / 2 for j in range(len(names))])
        ax.set_xticklabels(names, rotation=35, ha="right", fontsize=8)
        ax.set_ylabel("queries/s relative to a raw held connection")
        ax.set_title(f"{driver}: pooled query throughput (1.0 = raw)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(
    *,
    command: str,
    quick: bool,
    cells: dict[tuple[str, str, int], Cell],
    thread_counts: list[int],
    drivers: list[str],
    acquire: dict[str, dict[str, float]],
    connect: dict[str, dict[str, float]],
    web: dict[str, Any] | None,
    web_note: str | None,
    chart_name: str,
    rounds: int,
    seconds: float,
    server_version: str,
) -> str:
    mode = "quick mode: fewer cells, short and noisy" if quick else "full run"
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        "# Benchmarks: tether beside its peers",
        "",
        f"Produced by `{command}` ({mode}) on {when}.",
        "",
        f"Machine: {os.cpu_count()} CPUs ({cpu_model()}), {platform.system()} {platform.release()}."
        f" Server: a throwaway MariaDB {server_version} on 127.0.0.1 (TCP).",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()) + ".",
        "",
        f"Each cell: {seconds:g} s of `{QUERY}` (random id of {ROWS}) per request, check out ->"
        " execute -> fetch -> give back; pools sized 16; cells interleaved over variants,"
        f" {rounds} round(s), medians. Ratio = queries/s / raw held connection (same driver,"
        " same threads). `opened` = connections the server accepted during the cell.",
        "",
    ]
    targets: list[str] = []
    for driver in drivers:
        lines += [f"## {driver}", ""]
        for threads in thread_counts:
            label = f"{threads} threads" + (
                f" on {POOL_SIZE} connections" if threads > POOL_SIZE else ""
            )
            lines += [
                f"### {label}",
                "",
                "| variant | queries/s | ratio to raw | p50 µs | p99 µs | opened | errors |",
                "|---|---:|---:|---:|---:|---:|---:|",
            ]
            raw_qps = statistics.median(cells[("raw held connection", driver, threads)].qps)
            for variant in VARIANTS:
                cell = cells[(variant.name, driver, threads)]
                qps = statistics.median(cell.qps)
                ratio = qps / raw_qps if raw_qps else 0.0
                p50, p99 = statistics.median(cell.p50), statistics.median(cell.p99)
                opened = statistics.median(cell.opened)
                lines.append(
                    f"| {variant.name} | {qps:,.0f} | {ratio:.2f} | {p50:.0f} | {p99:.0f}"
                    f" | {opened:.0f} | {cell.errors} |"
                )
                if variant.name.startswith("tether"):
                    goal = 0.90 if threads > POOL_SIZE else 0.95
                    verdict = "met" if ratio >= goal else "MISSED"
                    targets.append(
                        f"| {variant.name} | {driver} | {label} | {ratio:.2f}"
                        f" | >= {goal:.2f} | {verdict} |"
                    )
            lines.append("")
    lines += [
        "## Targets",
        "",
        "| variant | driver | threads | ratio to raw | target | |",
        "|---|---|---|---:|---:|---|",
        *targets,
        "",
        "## Check out + give back alone (µs per pair, one thread, no statement; best of 5)",
        "",
        "| pool | " + " | ".join(drivers) + " |",
        "|---|" + "---:|" * len(drivers),
    ]
    for name in acquire[drivers[0]]:
        lines.append(f"| {name} | " + " | ".join(f"{acquire[d][name]:.1f}" for d in drivers) + " |")
    lines += [
        "",
        "Target for tether: <= 5 µs with every safety on (liveness poll, status check on"
        " return, leak bookkeeping, lifetimes).",
        "",
        "## Connect cost (ms per connect + close, median)",
        "",
        "| how | " + " | ".join(drivers) + " |",
        "|---|" + "---:|" * len(drivers),
    ]
    for name in connect[drivers[0]]:
        lines.append(f"| {name} | " + " | ".join(f"{connect[d][name]:.2f}" for d in drivers) + " |")
    lines += [
        "",
        "PyMySQL >= 1.2 builds a TLS context (loading the system CA store) in every"
        " `connect()`, even when the server offers no TLS; tether builds it once per pool and"
        " hands it to later connections with the same settings, and adds its socket tuning and"
        " one `SET` for session tracking.",
        "",
        f"![ratios]({chart_name})",
        "",
    ]
    analysis = HERE / "analysis.md"
    if analysis.exists() and not quick:
        lines += [analysis.read_text().rstrip(), ""]
    if web is not None:
        lines += ["## Web: the Flask city lookup under gunicorn", ""]
        lines.append("| " + " | ".join(web["columns"]) + " |")
        lines.append("|" + "---|" * len(web["columns"]))
        for row in web["rows"]:
            lines.append("| " + " | ".join(str(x) for x in row) + " |")
        lines.append("")
        for note in web.get("notes", []):
            lines += [note, ""]
    elif web_note:
        lines += ["## Web", "", web_note, ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (CI)")
    parser.add_argument("--output", type=Path, default=HERE, help="where RESULTS.md goes")
    parser.add_argument("--drivers", default="pymysql,mysqlclient")
    args = parser.parse_args(argv)
    quick = args.quick
    drivers = [d.strip() for d in args.drivers.split(",") if d.strip()]
    thread_counts = [1, 4] if quick else [1, 4, 16, 64]
    rounds = 1 if quick else 3
    seconds = 0.3 if quick else 1.5
    output: Path = args.output
    output.mkdir(parents=True, exist_ok=True)
    command = "python bench/run.py" + (" --quick" if quick else "")
    if args.output != HERE:
        command += f" --output {args.output}"

    with MariaDBServer(options={"max_connections": 500}, name="bench") as server:
        server.execute_admin(
            f"CREATE TABLE {server.database}.city (id INT PRIMARY KEY, name VARCHAR(64))"
        )
        server.execute_admin(
            f"INSERT INTO {server.database}.city SELECT seq, CONCAT('city-', seq)"
            f" FROM {server.database}.seq_1_to_{ROWS}"
        )
        server_version = str(server.execute_admin("SELECT VERSION()")[0][0])
        cells: dict[tuple[str, str, int], Cell] = {}
        total = rounds * len(thread_counts) * len(drivers) * len(VARIANTS)
        done = 0
        for _ in range(rounds):
            for threads in thread_counts:
                for driver in drivers:
                    for variant_cls in VARIANTS:
                        key = (variant_cls.name, driver, threads)
                        cell = cells.setdefault(key, Cell(*key))
                        variant = variant_cls(server, driver, threads)
                        try:
                            run_cell(variant, seconds, cell)
                        finally:
                            variant.close()
                        done += 1
                        print(
                            f"[{done}/{total}] {driver:11} {threads:2} threads"
                            f" {variant_cls.name:32} {cell.qps[-1]:9,.0f} q/s",
                            flush=True,
                        )
        n = 2000 if quick else 20000
        acquire = {d: measure_acquire(server, d, n) for d in drivers}
        connect = {d: measure_connect(server, d, 10 if quick else 50) for d in drivers}
        web = None
        web_note = None
        if (HERE / "web.py").exists():
            try:
                sys.path.insert(0, str(HERE))
                from web import run_web_bench  # type: ignore[import-not-found]

                web = run_web_bench(quick=quick, server=server, output=output)
            except Exception as exc:  # the micro results stand on their own
                web_note = f"The web benchmark did not run: {type(exc).__name__}: {exc}"
        else:
            web_note = "The web benchmark (Flask under gunicorn) is not part of this run yet."

    chart_name = "ratios-quick.png" if quick else "ratios.png"
    chart(cells, thread_counts, output / chart_name)
    text = report(
        command=command,
        quick=quick,
        cells=cells,
        thread_counts=thread_counts,
        drivers=drivers,
        acquire=acquire,
        connect=connect,
        web=web,
        web_note=web_note,
        chart_name=chart_name,
        rounds=rounds,
        seconds=seconds,
        server_version=server_version,
    )
    results = output / "RESULTS.md"
    results.write_text(text)
    print(f"wrote {results} and {output / chart_name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
