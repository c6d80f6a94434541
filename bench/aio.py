"""The asyncio benchmark: one request (check out, SELECT a row by primary key, fetch, give back)
as a task, through a raw held async connection, the drivers' own pools, SQLAlchemy's async engine
(with and without ``pool_pre_ping``) and ``tether.AsyncPool``, at 1, 16 and 64 concurrent tasks,
with asyncmy and aiomysql.

Each cell runs its tasks on a fresh event loop for a fixed time and counts requests; the cells of
a round run in a rotated order, and a variant's figure is the median over rounds of its ratio to
the raw connection's in the same round (a slow moment of the host falls on both). Raw: at 1 and
16 tasks each task holds its own connection; at 64 too (64 connections), the pools hold 16.

``python bench/aio.py`` runs it alone; ``bench/run.py`` runs it as its asyncio section.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import POOL_SIZE, QUERY, ROWS, bench_server

import tether
from tether.testing import MariaDBServer

ASYNC_DRIVERS = ("asyncmy", "aiomysql")
TASK_COUNTS = (1, 16, 64)
TARGET = 0.90  # of raw, at 1 and 16 tasks
JUDGED = (1, 16)
MAX_REQUESTS = 1_000_000
_rng = random.Random(11)
KEYS = [_rng.randint(1, ROWS) for _ in range(4096)]


def kwargs(server: MariaDBServer, driver: str) -> dict[str, Any]:
    return {
        "host": server.host,
        "port": server.port,
        "user": server.user,
        "password": server.password,
        ("database" if driver == "asyncmy" else "db"): server.database,
        "charset": "utf8mb4",
        "autocommit": True,
    }


class Variant:
    name = "?"

    def __init__(self, server: MariaDBServer, driver: str) -> None:
        self.server = server
        self.driver = driver

    async def setup(self, tasks: int) -> None:
        pass

    def checkout(self, n: int) -> contextlib.AbstractAsyncContextManager[Any]:
        raise NotImplementedError

    async def request(self, n: int, key: int) -> None:
        async with self.checkout(n) as conn:
            cur = conn.cursor()
            await cur.execute(QUERY, (key,))
            await cur.fetchone()
            await cur.close()

    async def teardown(self) -> None:
        pass


async def _connect(server: MariaDBServer, driver: str) -> Any:
    if driver == "asyncmy":
        import asyncmy

        return await asyncmy.connect(**kwargs(server, driver))
    import aiomysql

    return await aiomysql.connect(**kwargs(server, driver))


class Raw(Variant):
    name = "raw held connection"

    async def setup(self, tasks: int) -> None:
        self.conns = [await _connect(self.server, self.driver) for _ in range(tasks)]

    async def request(self, n: int, key: int) -> None:
        conn = self.conns[n]
        cur = conn.cursor()
        if self.driver == "aiomysql":
            cur = await cur
        await cur.execute(QUERY, (key,))
        await cur.fetchone()
        await cur.close()

    async def teardown(self) -> None:
        for conn in self.conns:
            conn.close()


class DriverPool(Variant):
    name = "driver's own pool"

    async def setup(self, tasks: int) -> None:
        if self.driver == "asyncmy":
            import asyncmy

            self.pool = await asyncmy.create_pool(
                minsize=1, maxsize=POOL_SIZE, **kwargs(self.server, self.driver)
            )
        else:
            import aiomysql

            self.pool = await aiomysql.create_pool(
                minsize=1, maxsize=POOL_SIZE, **kwargs(self.server, self.driver)
            )

    async def request(self, n: int, key: int) -> None:
        async with self.pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute(QUERY, (key,))
            await cur.fetchone()

    async def teardown(self) -> None:
        self.pool.close()
        await self.pool.wait_closed()


class SQLAlchemyAsync(Variant):
    name = "SQLAlchemy async"
    pre_ping = False

    async def setup(self, tasks: int) -> None:
        from sqlalchemy import text
        from sqlalchemy.ext.asyncio import create_async_engine

        s = self.server
        url = f"mysql+{self.driver}://{s.user}:{s.password}@{s.host}:{s.port}/{s.database}"
        self.engine = create_async_engine(
            url, pool_size=POOL_SIZE, max_overflow=0, pool_pre_ping=self.pre_ping
        )
        self.query = text(QUERY.replace("%s", ":key"))

    async def request(self, n: int, key: int) -> None:
        async with self.engine.connect() as conn:
            (await conn.execute(self.query, {"key": key})).fetchone()

    async def teardown(self) -> None:
        await self.engine.dispose()


class SQLAlchemyAsyncPrePing(SQLAlchemyAsync):
    name = "SQLAlchemy async pre_ping"
    pre_ping = True


class TetherAsync(Variant):
    name = "tether AsyncPool"

    async def setup(self, tasks: int) -> None:
        s = self.server
        self.pool = tether.AsyncPool(s.dsn(), driver=self.driver, max_size=POOL_SIZE)

    def checkout(self, n: int) -> contextlib.AbstractAsyncContextManager[Any]:
        return self.pool.connection()

    async def teardown(self) -> None:
        await self.pool.close()


VARIANTS: list[type[Variant]] = [
    Raw,
    DriverPool,
    SQLAlchemyAsync,
    SQLAlchemyAsyncPrePing,
    TetherAsync,
]


async def _cell(variant: Variant, tasks: int, seconds: float) -> float:
    """Requests per second of ``tasks`` tasks for ``seconds`` (after one warm-up each)."""
    await variant.setup(tasks)
    try:
        await asyncio.gather(*(variant.request(n, KEYS[n]) for n in range(tasks)))
        done = [0] * tasks
        stop = time.monotonic() + seconds

        async def worker(n: int) -> None:
            i = n
            while time.monotonic() < stop and done[n] < MAX_REQUESTS:
                await variant.request(n, KEYS[i % len(KEYS)])
                done[n] += 1
                i += 7

        started = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*(worker(n) for n in range(tasks))), seconds + 60)
        return sum(done) / (time.monotonic() - started)
    finally:
        await variant.teardown()


@dataclass
class AsyncResults:
    seconds: float
    rounds: int
    drivers: tuple[str, ...]
    task_counts: tuple[int, ...]
    #: (driver, tasks, variant) -> queries/s of each round
    qps: dict[tuple[str, int, str], list[float]] = field(default_factory=dict)

    def ratio(self, driver: str, tasks: int, name: str) -> float:
        raw = self.qps[(driver, tasks, Raw.name)]
        mine = self.qps[(driver, tasks, name)]
        return statistics.median(m / r for m, r in zip(mine, raw, strict=True))


def run(
    server: MariaDBServer,
    *,
    drivers: tuple[str, ...] = ASYNC_DRIVERS,
    task_counts: tuple[int, ...] = TASK_COUNTS,
    rounds: int = 3,
    seconds: float = 1.0,
    progress: Callable[[str], None] = print,
) -> AsyncResults:
    results = AsyncResults(seconds, rounds, drivers, task_counts)
    for round_no in range(rounds):
        for driver in drivers:
            for tasks in task_counts:
                shift = (round_no + tasks) % len(VARIANTS)
                for cls in VARIANTS[shift:] + VARIANTS[:shift]:
                    qps = asyncio.run(_cell(cls(server, driver), tasks, seconds))
                    results.qps.setdefault((driver, tasks, cls.name), []).append(qps)
        progress(f"asyncio round {round_no + 1}/{rounds} done")
    return results


def section(r: AsyncResults, chart: str | None = None) -> str:
    """The asyncio section of RESULTS.md."""
    lines = [
        "## asyncio: `tether.AsyncPool` beside a raw held async connection and the peers",
        "",
        f"One request as a task (check out, `{QUERY}`, fetch one row, give back); queries/s"
        f" of each cell over {r.seconds:g} s, median ratio to the raw connection over"
        f" {r.rounds} round(s) in rotated order. Pools hold {POOL_SIZE} connections; raw: one"
        " per task. Target: `tether.AsyncPool` at least"
        f" {TARGET:.2f} x raw at {' and '.join(map(str, JUDGED))} tasks, and ahead of every"
        " peer.",
        "",
    ]
    names = [cls.name for cls in VARIANTS]
    for driver in r.drivers:
        lines.append(f"### {driver}")
        lines.append("")
        header = "| variant | " + " | ".join(f"{t} task(s): q/s (x raw)" for t in r.task_counts)
        lines.append(header + " |")
        lines.append("|---|" + "---:|" * len(r.task_counts))
        for name in names:
            cells = []
            for tasks in r.task_counts:
                qps = statistics.median(r.qps[(driver, tasks, name)])
                cells.append(f"{qps:,.0f} ({r.ratio(driver, tasks, name):.2f})")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
        for tasks in r.task_counts:
            mine = r.ratio(driver, tasks, TetherAsync.name)
            best_peer = max(
                r.ratio(driver, tasks, n) for n in names if n not in (Raw.name, TetherAsync.name)
            )
            ahead = mine > best_peer
            if tasks in JUDGED:
                met = mine >= TARGET and ahead
                verdict = "met" if met else "missed"
                lines.append(
                    f"- {tasks} task(s): tether {mine:.2f} x raw (target {TARGET:.2f}),"
                    f" best peer {best_peer:.2f}: **{verdict}**"
                )
            else:
                lines.append(
                    f"- {tasks} tasks: tether {mine:.2f} x raw, best peer {best_peer:.2f}"
                    f" ({'ahead' if ahead else 'behind'}; not a target)"
                )
        lines.append("")
    if chart:
        lines += [f"![asyncio ratios]({chart})", ""]
    return "\n".join(lines)


def chart(r: AsyncResults, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [cls.name for cls in VARIANTS if cls is not Raw]
    fig, axes = plt.subplots(1, len(r.drivers), figsize=(5.5 * len(r.drivers), 3.6), sharey=True)
    if len(r.drivers) == 1:
        axes = [axes]
    width = 0.8 / len(names)
    for ax, driver in zip(axes, r.drivers, strict=True):
        for i, name in enumerate(names):
            xs = [j + i * width for j in range(len(r.task_counts))]
            ys = [r.ratio(driver, t, name) for t in r.task_counts]
            ax.bar(xs, ys, width, label=name)
        ax.axhline(1.0, color="#555555", lw=0.8)
        ax.axhline(TARGET, color="#c0392b", lw=0.8, ls="--")
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(r.task_counts))])
        ax.set_xticklabels([f"{t} task(s)" for t in r.task_counts])
        ax.set_title(driver)
        ax.set_ylabel("x raw held connection")
    axes[0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="per cell")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--drivers", default=",".join(ASYNC_DRIVERS))
    parser.add_argument("--tasks", default=",".join(map(str, TASK_COUNTS)))
    parser.add_argument("--chart", type=Path, help="write the chart here")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    with bench_server() as server:
        results = run(
            server,
            drivers=tuple(args.drivers.split(",")),
            task_counts=tuple(int(t) for t in args.tasks.split(",")),
            rounds=args.rounds,
            seconds=args.seconds,
        )
    if args.chart:
        chart(results, args.chart)
    print(section(results, str(args.chart) if args.chart else None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
