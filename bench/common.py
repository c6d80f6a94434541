"""What the benchmarks share: the throwaway server and its table, driver arguments, CPU
placement, the machine's description, CPU accounting and Markdown tables."""

from __future__ import annotations

import os
import platform
import statistics
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from tether.testing import MariaDBServer

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

ROWS = 1000
QUERY = "SELECT name FROM city WHERE id = %s"
POOL_SIZE = 16
DRIVERS = ("pymysql", "mysqlclient")
PEERS = ("PyMySQL", "mysqlclient", "DBUtils", "SQLAlchemy", "Flask", "gunicorn", "matplotlib")


# ----------------------------------------------------------------------------- drivers


def driver_module(driver: str) -> Any:
    if driver == "pymysql":
        import pymysql

        return pymysql
    import MySQLdb

    return MySQLdb


def connect_kwargs(server: MariaDBServer, driver: str, *, tls: bool = True) -> dict[str, Any]:
    """The driver's own connect arguments; ``tls=True`` leaves TLS at the driver's default."""
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
        if driver == "pymysql":
            kwargs["ssl_disabled"] = True
        else:
            kwargs["ssl_mode"] = "DISABLED"
    return kwargs


def raw_connect(server: MariaDBServer, driver: str, *, tls: bool = True) -> Any:
    return driver_module(driver).connect(**connect_kwargs(server, driver, tls=tls))


def sqlalchemy_url(server: MariaDBServer, driver: str) -> str:
    dialect = "mysql+pymysql" if driver == "pymysql" else "mysql+mysqldb"
    return (
        f"{dialect}://{server.user}:{server.password}@{server.host}:{server.port}"
        f"/{server.database}?charset=utf8mb4"
    )


# ----------------------------------------------------------------------------- the server


@contextmanager
def bench_server() -> Iterator[MariaDBServer]:
    """A throwaway MariaDB with a ``city`` table of ``ROWS`` rows, stopped on exit."""
    with MariaDBServer(options={"max_connections": 300}, name="bench") as server:
        db = server.database
        server.execute_admin(f"CREATE TABLE {db}.city (id INT PRIMARY KEY, name VARCHAR(64))")
        server.execute_admin(
            f"INSERT INTO {db}.city SELECT seq, CONCAT('city-', seq) FROM {db}.seq_1_to_{ROWS}"
        )
        yield server


class ConnectionCounter:
    """The server's ``Connections`` status counter (connects accepted so far), read over one
    admin session held for the whole run so that reading it opens nothing."""

    def __init__(self, server: MariaDBServer) -> None:
        self._conn = server.admin()

    def read(self) -> int:
        with self._conn.cursor() as cur:
            cur.execute("SHOW GLOBAL STATUS LIKE 'Connections'")
            return int(cur.fetchone()[1])

    def close(self) -> None:
        self._conn.close()


# ----------------------------------------------------------------------------- CPU placement

SEPARATE, SHARED, UNPINNED = "separate", "shared", "unpinned"
LAYOUTS = (SEPARATE, SHARED, UNPINNED)


class LayoutUnavailable(Exception):
    """The machine, or this process's rights, cannot give the CPU layout asked for."""


def _tids(pid: int) -> list[int]:
    """The process's threads now; none when it is gone."""
    try:
        return [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def _pin(pid: int, cpus: set[int], saved: dict[int, set[int]]) -> None:
    """Every thread of ``pid`` onto ``cpus``, each one's previous mask kept in ``saved``.
    Lists the threads again until no new one shows up: one started meanwhile by a thread
    not yet pinned would keep its creator's mask."""
    for _ in range(5):
        new = [tid for tid in _tids(pid) if tid not in saved]
        if not new:
            return
        for tid in new:
            try:
                saved[tid] = os.sched_getaffinity(tid)
                os.sched_setaffinity(tid, cpus)
            except ProcessLookupError:  # the thread ended meanwhile
                saved.pop(tid, None)


def _restore(saved: dict[int, dict[int, set[int]]]) -> None:
    """Previous masks back; a thread started while pinned gets its process's previous mask.
    Best effort: a thread that has ended, or refuses, is skipped."""
    for pid, masks in saved.items():
        default = masks.get(pid)
        for tid in _tids(pid):
            mask = masks.get(tid, default)
            if mask is not None:
                with suppress(OSError):
                    os.sched_setaffinity(tid, mask)


@contextmanager
def pinned(server: MariaDBServer, layout: str) -> Iterator[str]:
    """Puts every thread of this process and of the server on fixed CPUs for the block and
    yields where they run. ``separate``: this process on the first CPU it may use, the server
    on the second; ``shared``: both on the first; ``unpinned``: no change, the scheduler
    places them. Where the scheduler puts the server's thread beside the client's changes a
    request's time (on a 2-vCPU machine one thread on one connection alternated between two
    speeds about 3x apart), which swamps a few µs of pool work; pinned, it does not move.

    Threads started inside the block inherit their creator's CPUs (the client's workers must
    start inside it). On exit every thread gets its previous mask back. Raises
    :class:`LayoutUnavailable`, with nothing changed, when the layout cannot be had."""
    if layout == UNPINNED:
        yield "not pinned: the scheduler places client and server threads"
        return
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; one of {', '.join(LAYOUTS)}")
    allowed = sorted(os.sched_getaffinity(0))
    if layout == SEPARATE and len(allowed) < 2:
        raise LayoutUnavailable(f"this process may use {len(allowed)} CPU, separate cores need 2")
    client_cpu = allowed[0]
    server_cpu = allowed[1] if layout == SEPARATE else client_cpu
    server_pid = server.pid
    if server_pid is None:
        raise LayoutUnavailable("the server is not running")
    saved: dict[int, dict[int, set[int]]] = {}  # pid -> thread id -> previous mask
    try:
        _pin(server_pid, {server_cpu}, saved.setdefault(server_pid, {}))
        _pin(os.getpid(), {client_cpu}, saved.setdefault(os.getpid(), {}))
    except OSError as exc:
        _restore(saved)
        raise LayoutUnavailable(f"setting CPU affinity failed: {exc}") from exc
    try:
        if layout == SEPARATE:
            yield f"client on CPU {client_cpu}, server on CPU {server_cpu}"
        else:
            yield f"client and server on CPU {client_cpu}"
    finally:
        _restore(saved)


# ----------------------------------------------------------------------------- the machine


def versions(server_version: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"Python": platform.python_version()}
    for dist in ("tether", *PEERS):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "not installed"
    out["MariaDB"] = server_version
    return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) another process has used so far; 0 when unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


class CpuMeter:
    """CPU time the rest of the machine used while the benchmark ran: all busy time in
    ``/proc/stat`` minus this process, its reaped children (gunicorn, wrk) and the server.
    Tells whether figures were taken on a quiet machine."""

    def __init__(self, server_pid: int | None) -> None:
        self.server_pid = server_pid
        self.tick = os.sysconf("SC_CLK_TCK")
        self.start = self._snapshot()

    def _snapshot(self) -> tuple[float, float, float]:
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
            idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
            busy = (sum(fields[:8]) - idle) / self.tick
        except OSError:
            busy = 0.0
        times = os.times()
        ours = times.user + times.system + times.children_user + times.children_system
        server = process_cpu(self.server_pid) if self.server_pid is not None else 0.0
        return busy, ours, server

    def others(self, elapsed: float) -> float:
        """Average number of cores busy with other work since the meter started."""
        busy0, ours0, server0 = self.start
        busy1, ours1, server1 = self._snapshot()
        other = (busy1 - busy0) - (ours1 - ours0) - (server1 - server0)
        return max(0.0, other / elapsed) if elapsed > 0 else 0.0


# ----------------------------------------------------------------------------- numbers


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]], align: str = "") -> list[str]:
    """A Markdown table; ``align`` has one letter per column, ``r`` for right-aligned."""
    align = align or "l" + "r" * (len(columns) - 1)
    rule = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
    lines = ["| " + " | ".join(columns) + " |", rule]
    lines += ["| " + " | ".join(str(x) for x in row) + " |" for row in rows]
    return lines
