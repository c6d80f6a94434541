"""tether beside its peers on the same work, in one run, against a throwaway MariaDB.

    python bench/run.py                  # full run: bench/RESULTS.md and bench/*.png
    python bench/run.py --quick          # under a minute, for CI: proves the harness works
    python bench/run.py --output DIR     # write RESULTS.md and the charts into DIR

A quick run writes into a temporary directory unless ``--output`` says otherwise, so it never
replaces the full results in bench/. The micro benchmark is in micro.py; the web benchmark
(web.py, Flask under gunicorn) runs after it when present, then the Flask-SQLAlchemy one
(orm_sqla.py).
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import os
import platform
import random
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import aio
import micro
import orm_sqla
from common import (
    DRIVERS,
    HERE,
    POOL_SIZE,
    QUERY,
    ROOT,
    ROWS,
    SEPARATE,
    SHARED,
    UNPINNED,
    ConnectionCounter,
    CpuMeter,
    LayoutUnavailable,
    bench_server,
    cpu_model,
    load_average,
    median,
    pinned,
    table,
    versions,
)
from micro import FULL_LOCAL, FULL_POOL, RAW, Cells, Profile

TETHER = (micro.TetherPool.name, micro.TetherThreadLocal.name)
# ThreadLocalPool(dsn) with no option at all: judged at 16 threads.
DEFAULTS = micro.TetherThreadLocalDefaults.name
WIDE = 4 * POOL_SIZE  # 64 threads on the pools' 16 connections
AB_THREADS = (1, POOL_SIZE, WIDE)  # the interleaved A/B's thread counts: those with targets
ACQUIRE_TARGET_US = 4.0
# Seconds per web cell in a full run.
WEB_SECONDS = 3
PINNED = (SEPARATE, SHARED)  # the A/B's layouts that judge the throughput targets
CELLS = "cells"  # a target judged on the throughput cells (unpinned)
MEASURED_IN = {
    SEPARATE: "A/B, separate cores",
    SHARED: "A/B, shared core",
    UNPINNED: "A/B, unpinned",
    CELLS: "cells, unpinned",
}
LAYOUT_NAMES = {SEPARATE: "separate cores", SHARED: "shared core", UNPINNED: "unpinned"}
AB = dict[tuple[str, str, int], dict[str, list[float]]]  # (layout, driver, threads) -> q/s
# (layout, driver, threads) -> tether variant -> what its pool counted during the A/B
Events = dict[tuple[str, str, int], dict[str, dict[str, int]]]


def target(threads: int) -> float:
    """The lowest ratio to raw a tether variant may show: one thread 0.90, up to 16 threads
    0.85, and 64 threads sharing 16 connections 0.90 of raw with a connection per thread."""
    if threads == 1:
        return 0.90
    return 0.85 if threads <= POOL_SIZE else 0.90


def judged(threads: int) -> tuple[str, ...]:
    """The variants whose ratio to raw has a target at ``threads``: both flavours, and at
    16 threads ThreadLocalPool with its defaults too."""
    return (*TETHER, DEFAULTS) if threads == POOL_SIZE else TETHER


@dataclass
class Plan:
    quick: bool
    shortened: bool  # rounds, seconds or the A/B's slices or layouts other than a full run's
    missing_drivers: list[str]  # asked for but not installed: skipped
    drivers: list[str]
    thread_counts: list[int]
    rounds: int
    seconds: float
    acquire_budget: float  # seconds of batches per pool and driver
    connects: int
    breakdown_requests: int
    breakdown_rounds: int
    profile_requests: int
    ab_threads: list[int]  # the interleaved A/B's thread counts
    ab_slices: dict[int, int]  # threads -> slices of each variant in the A/B
    ab_slice_seconds: float
    ab_layouts: list[str]  # CPU layouts of the A/B; a quick run takes the first pinned one it can
    ab_first_only: bool  # stop after the first pinned layout that ran

    @classmethod
    def make(cls, args: argparse.Namespace) -> Plan:
        quick = bool(args.quick)
        drivers = [d.strip() for d in args.drivers.split(",") if d.strip()]
        unknown = set(drivers) - set(DRIVERS)
        if unknown:
            raise SystemExit(f"unknown driver(s): {', '.join(sorted(unknown))}")
        modules = {"pymysql": "pymysql", "mysqlclient": "MySQLdb"}
        missing = [d for d in drivers if importlib.util.find_spec(modules[d]) is None]
        drivers = [d for d in drivers if d not in missing]
        if not drivers:
            raise SystemExit(f"no driver installed among {args.drivers}")
        layouts = [x.strip() for x in (args.ab_layouts or "").split(",") if x.strip()]
        if set(layouts) - set(LAYOUT_NAMES):
            raise SystemExit(f"--ab-layouts: one or more of {', '.join(LAYOUT_NAMES)}")
        # Slices of each variant: a full run takes 300 at 1 thread and 600 at 16 and 64,
        # where a slice's queries/s scatter some 3x wider (the threads contend for the GIL
        # and the host's short stalls land on all of them): the interval narrows by about
        # 1/sqrt(2). With 6 variants at 1 and 16 threads and 5 at 64, 36 + 72 + 60 s of
        # slices per (layout, driver).
        slices = {1: 10, POOL_SIZE: 10, WIDE: 10} if quick else {1: 300, POOL_SIZE: 600, WIDE: 600}
        if args.ab_slices:
            slices = {t: args.ab_slices for t in AB_THREADS}
        return cls(
            missing_drivers=missing,
            quick=quick,
            shortened=bool(args.rounds or args.seconds or args.ab_slices or layouts),
            drivers=drivers,
            thread_counts=[1, 4] if quick else [1, 4, POOL_SIZE, 4 * POOL_SIZE],
            rounds=args.rounds or (1 if quick else 5),
            seconds=args.seconds or (0.2 if quick else 0.6),
            acquire_budget=0.1 if quick else 0.5,
            connects=5 if quick else 40,
            breakdown_requests=200 if quick else 300,
            breakdown_rounds=4 if quick else 30,
            profile_requests=300 if quick else 3000,
            ab_threads=list(AB_THREADS),
            ab_slices=slices,
            ab_slice_seconds=0.01 if quick else 0.02,
            ab_layouts=layouts or ([SEPARATE, SHARED] if quick else [SEPARATE, SHARED, UNPINNED]),
            ab_first_only=quick and not layouts,
        )


@dataclass
class Results:
    plan: Plan
    command: str
    server_version: str
    server_tls: str
    load_before: str
    load_after: str
    others_cores: float
    elapsed: float
    cells: Cells
    acquire: dict[str, dict[str, float]]
    connect: dict[str, dict[str, float]]
    breakdowns: dict[str, micro.Breakdown]
    breakdown_where: str  # where client and server ran for the breakdown and profile
    profiles: dict[str, Profile]
    ab: AB  # q/s per slice
    ab_events: Events
    ab_where: dict[str, str]  # layout -> where client and server ran
    ab_skipped: dict[str, str]  # layout -> why it did not run
    web: dict[str, Any] | None
    web_note: str | None


# ----------------------------------------------------------------------------- the run


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (CI)")
    parser.add_argument("--output", type=Path, help="directory for RESULTS.md and the charts")
    parser.add_argument("--drivers", default=",".join(DRIVERS), help="comma-separated")
    parser.add_argument("--rounds", type=int, help="rounds of cells (quick 1, full 5)")
    parser.add_argument("--seconds", type=float, help="per cell (quick 0.2, full 0.6)")
    parser.add_argument(
        "--web-seconds", type=int, help="per web cell (full 3, quick: web.py's own)"
    )
    parser.add_argument("--skip-web", action="store_true", help="only the micro benchmark")
    parser.add_argument(
        "--skip-async", action="store_true", help="leave out the asyncio section (bench/aio.py)"
    )
    parser.add_argument("--async-seconds", type=float, help="per asyncio cell (quick 0.2, full 2)")
    parser.add_argument(
        "--skip-budget", action="store_true", help="leave out the fleet budget (bench/budget.py)"
    )
    parser.add_argument(
        "--ab-slices", type=int, help="A/B slices of each variant (quick 10, full 300 to 600)"
    )
    parser.add_argument(
        "--ab-layouts",
        help="comma-separated CPU layouts of the A/B (separate, shared, unpinned; quick: the"
        " first pinned one that can be had, full: all three)",
    )
    args = parser.parse_args(argv)
    plan = Plan.make(args)
    output: Path = args.output or (
        Path(tempfile.gettempdir()) / "tether-bench-quick" if plan.quick else HERE
    )
    output.mkdir(parents=True, exist_ok=True)
    python = Path(sys.executable)
    with_python = str(python.relative_to(ROOT)) if python.is_relative_to(ROOT) else "python"
    command = shlex.join([with_python, "bench/run.py", *argv])

    started = time.monotonic()
    load_before = load_average()
    with bench_server() as server:
        counter = ConnectionCounter(server)
        meter = CpuMeter(server.pid)
        server_version = str(server.execute_admin("SELECT VERSION()")[0][0])
        tls_rows = server.execute_admin("SHOW GLOBAL VARIABLES LIKE 'have_ssl'")
        server_tls = str(tls_rows[0][1]) if tls_rows else "unknown"
        try:
            cells = micro.run_cells(
                server,
                counter,
                drivers=plan.drivers,
                thread_counts=plan.thread_counts,
                rounds=plan.rounds,
                seconds=plan.seconds,
            )
        finally:
            counter.close()
        print("check-out + give-back, connect cost, CPU breakdown, profile ...", flush=True)
        d = plan.drivers
        acquire = {x: micro.acquire_release(server, x, plan.acquire_budget) for x in d}
        connect = {x: micro.connect_cost(server, x, plan.connects) for x in d}
        breakdowns, profiles, breakdown_where = run_breakdown(server, plan)
        ab, ab_events, ab_where, ab_skipped = run_ab(server, plan)
        asyncio_results = None
        if not args.skip_async:
            print("asyncio: AsyncPool beside a raw async connection and the peers ...", flush=True)
            asyncio_results = aio.run(
                server,
                task_counts=(1, 16) if plan.quick else aio.TASK_COUNTS,
                rounds=1 if plan.quick else 5,
                seconds=args.async_seconds or (0.2 if plan.quick else 2.0),
            )
        web_seconds = args.web_seconds or (None if plan.quick else WEB_SECONDS)
        web, web_note = run_web(plan.quick, server, output, web_seconds, skip=args.skip_web)
        django_section = None
        if not plan.quick and not args.skip_web and importlib.util.find_spec("django"):
            import orm_django  # the Django city lookup (bench/orm_django.py)

            print("Django: the city lookup under gunicorn ...", flush=True)
            # A database of its own: Django's migration makes its tables, which the other
            # benchmarks' seeding has made under the same names in the server's database.
            server.execute_admin("CREATE DATABASE IF NOT EXISTS django_city")
            server.execute_admin(f"GRANT ALL PRIVILEGES ON django_city.* TO '{server.user}'@'%'")
            dsn = server.dsn(database="django_city")
            django_section = orm_django.section(orm_django.run(dsn), command)
        orm = None if args.skip_web else run_orm(plan.quick, server)
        elapsed = time.monotonic() - started
        others = meter.others(elapsed)

    results = Results(
        plan=plan,
        command=command,
        server_version=server_version,
        server_tls=server_tls,
        load_before=load_before,
        load_after=load_average(),
        others_cores=others,
        elapsed=elapsed,
        cells=cells,
        acquire=acquire,
        connect=connect,
        breakdowns=breakdowns,
        breakdown_where=breakdown_where,
        profiles=profiles,
        ab=ab,
        ab_events=ab_events,
        ab_where=ab_where,
        ab_skipped=ab_skipped,
        web=web,
        web_note=web_note,
    )
    ratio_chart(results, output / "ratios.png")
    cost_chart(results, output / "costs.png")
    path = output / "RESULTS.md"
    text = render(results)
    if asyncio_results is not None:
        aio.chart(asyncio_results, output / "async.png")
        text = text.rstrip("\n") + "\n\n" + aio.section(asyncio_results, "async.png")
    if django_section is not None:
        text = text.rstrip("\n") + "\n\n" + django_section
    if orm is not None:
        text = text.rstrip("\n") + "\n\n" + orm_sqla.section(orm)
    path.write_text(text)
    if not (plan.quick or args.skip_budget):
        import budget  # its own servers (an account capped at 16, a Redis); appends a section

        budget.main(["--write", "--results", str(path)])
    print(f"wrote {path}, {output / 'ratios.png'}, {output / 'costs.png'} in {elapsed:.0f} s")
    return 0


def run_breakdown(
    server: Any, plan: Plan
) -> tuple[dict[str, micro.Breakdown], dict[str, Profile], str]:
    """The CPU breakdown and the profile, on one thread, with client and server pinned to one
    shared core when the machine allows it: unpinned, a request's CPU cost flips with where
    the scheduler puts the server's thread (see *Interleaved A/B*), which swamps the few µs
    measured here."""
    d = plan.drivers

    def measure() -> tuple[dict[str, micro.Breakdown], dict[str, Profile]]:
        breakdowns = {
            x: micro.breakdown(server, x, plan.breakdown_requests, plan.breakdown_rounds) for x in d
        }
        return breakdowns, {x: micro.profile(server, x, plan.profile_requests) for x in d}

    try:
        with pinned(server, SHARED) as placed:
            breakdowns, profiles = measure()
            return breakdowns, profiles, placed
    except LayoutUnavailable as exc:
        breakdowns, profiles = measure()
        return breakdowns, profiles, f"not pinned ({exc})"


def run_ab(server: Any, plan: Plan) -> tuple[AB, Events, dict[str, str], dict[str, str]]:
    """The interleaved A/B under each CPU layout; a layout this machine cannot give is
    skipped with the reason. A quick run stops after the first pinned layout that ran."""
    ab: AB = {}
    events: Events = {}
    where: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for layout in plan.ab_layouts:
        try:
            with pinned(server, layout) as placed:
                print(f"interleaved A/B, {LAYOUT_NAMES[layout]} ({placed}) ...", flush=True)
                for x in plan.drivers:
                    for t in plan.ab_threads:
                        counted = events[(layout, x, t)] = {}
                        ab[(layout, x, t)] = micro.interleaved(
                            server, x, t, plan.ab_slices[t], plan.ab_slice_seconds, counted
                        )
                where[layout] = placed
        except LayoutUnavailable as exc:
            print(f"interleaved A/B, {LAYOUT_NAMES[layout]}: not run, {exc}", flush=True)
            skipped[layout] = str(exc)
            continue
        if plan.ab_first_only and layout in PINNED:
            break
    return ab, events, where, skipped


def run_web(
    quick: bool, server: Any, output: Path, seconds: int | None, *, skip: bool
) -> tuple[dict[str, Any] | None, str | None]:
    """The web benchmark's table, or why there is none; its failure never loses the micro
    results."""
    if skip:
        return None, "Not run (`--skip-web`)."
    if not (HERE / "web.py").exists():
        return None, "Not run: bench/web.py is not there."
    print("web benchmark ...", flush=True)
    try:
        import web

        kwargs: dict[str, Any] = {"quick": quick, "dsn": None, "server": server}
        accepts = inspect.signature(web.run_web_bench).parameters
        if "output" in accepts:
            kwargs["output"] = output
        if seconds is not None and "seconds" in accepts:
            kwargs["seconds"] = seconds
        result = web.run_web_bench(**kwargs)
        if not isinstance(result, dict) or "columns" not in result or "rows" not in result:
            raise TypeError("run_web_bench returned no columns/rows")
    except Exception as exc:
        traceback.print_exc()
        message = f"{type(exc).__name__}: {exc}".replace(server.password, "***")
        return None, f"The web benchmark did not run: {message}"
    chart = result.get("chart")
    if chart and Path(chart).exists() and Path(chart).parent.resolve() != output.resolve():
        shutil.copy(chart, output / Path(chart).name)
    return result, None


def run_orm(quick: bool, server: Any) -> dict[str, Any] | None:
    """The Flask-SQLAlchemy benchmark (bench/orm_sqla.py); its failure loses nothing else."""
    print("Flask-SQLAlchemy: tether's engine beside QueuePool ...", flush=True)
    try:
        return orm_sqla.run(quick=quick, server=server)
    except Exception:
        traceback.print_exc()
        return None


# ----------------------------------------------------------------------------- report


def label(threads: int) -> str:
    if threads > POOL_SIZE:
        return f"{threads} threads on {POOL_SIZE} connections"
    return f"{threads} thread" + ("s" if threads > 1 else "")


def ratio_text(ratio: float) -> str:
    return f"{ratio:.2f}" if ratio >= 0.1 else f"{ratio:.3f}"


def render(r: Results) -> str:
    p = r.plan
    mode = "quick mode: few short cells, one round, noisy" if p.quick else "full run"
    if p.shortened and not p.quick:
        mode = "a shortened run: see the command for what it changed"
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    shared = (
        f"Other work used {r.others_cores:.2f} of the {os.cpu_count()} cores on average during"
        f" the run (load average {r.load_before} before, {r.load_after} after)"
    )
    if r.others_cores >= 0.2:
        shared += ": figures were taken on a shared, busy machine; compare ratios within this run."
    else:
        shared += "."
    lines = [
        "# Benchmarks: tether beside its peers",
        "",
        f"Produced by `{r.command}` ({mode}) on {when}, in {r.elapsed:.0f} s"
        + ("; `make bench` runs it." if not (p.quick or p.shortened) else "."),
        "",
        f"- Machine: nproc {os.cpu_count()}, {cpu_model()}, {platform.system()}"
        f" {platform.release()}. Client threads, the server (and the web benchmark's gunicorn"
        " and load generator) share these cores.",
        f"- {shared}",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in versions(r.server_version).items()),
        *(
            [f"- Not installed, so not measured: {', '.join(p.missing_drivers)}."]
            if p.missing_drivers
            else []
        ),
        f"- Server: a throwaway MariaDB (`tether.testing.MariaDBServer`, max_connections=300)"
        f' on 127.0.0.1 over TCP; `have_ssl` = {r.server_tls} (so "TLS default" costs only'
        " the client's own set-up).",
        "",
        "## Method",
        "",
        f"A request: check out, `{QUERY}` (a random id of {ROWS} rows), `fetchone()`, give back."
        " Each cell runs it on one thread count"
        f" ({', '.join(str(t) for t in p.thread_counts)}) for {p.seconds:g} s after"
        " a warm-up request per thread (connects made in the warm-up are outside the clock,"
        " those of connect-per-request are the request). Cells run unpinned (the scheduler"
        " places client and server threads) and are interleaved: every round"
        " runs the variants of one (driver, threads) group back to back in a rotated order;"
        f" {p.rounds} round(s); figures are medians over rounds. **Ratio** = queries/s over the"
        " raw held connection's of the same round, driver and threads (median of the rounds'"
        " ratios). **Client / server CPU µs/q**: CPU time per request of this process (all"
        " its threads) and of the server."
        " **Opened**: connects the server counted (`Connections` status) during the cell,"
        f" warm-up included. Pools are sized {POOL_SIZE} (`max_size`, `pool_size` +"
        " `max_overflow=0`, `maxconnections` + `blocking=True`); otherwise every pool runs"
        " with its defaults: DBUtils pings on every check-out (`ping=1`) and PooledDB rolls"
        " back on every return (`reset=True`); SQLAlchemy rolls back on return"
        " (`reset_on_return`) and is used through `engine.raw_connection()`, its leanest"
        f" pooled path; tether runs with every safety on. *{DEFAULTS}* is"
        " `ThreadLocalPool(dsn)` as a DBUtils PersistentDB user writes it, no option at all:"
        " at most 10 connections. The raw held connection opens one connection per thread:"
        " above 16 threads it holds more than the pools.",
        "",
    ]
    lines += targets_section(r)
    lines += throughput_section(r)
    lines += costs_section(r)
    lines += profile_section(r)
    lines += ab_section(r)
    lines += why_section(r)
    lines += web_section(r)
    return "\n".join(lines) + "\n"


@dataclass
class Verdict:
    """One throughput target row: a tether flavour's ratio to raw in one comparison."""

    name: str
    driver: str
    threads: int
    measured_in: str  # a pinned layout of the A/B, or CELLS
    ratio: float
    low: float  # the A/B's 95% interval, or the cells' rounds
    high: float

    @property
    def met(self) -> bool:
        return self.ratio >= target(self.threads)

    @property
    def shown(self) -> str:
        return shown(self.ratio, target(self.threads), 2)


def shown(value: float, limit: float, places: int) -> str:
    """``value`` to ``places`` places, or more where those would round it onto ``limit`` and
    hide which side of it a verdict was taken on (0.848 missed, 0.853 met against 0.85)."""
    text = f"{value:.{places}f}"
    while float(text) == limit and value != limit and places < 6:
        places += 1
        text = f"{value:.{places}f}"
    return text


RESAMPLES = 400  # bootstrap resamples for an A/B ratio's interval


def ab_ratios(
    per_slice: dict[str, list[float]], name: str, threads: int
) -> tuple[float, float, float] | None:
    """``name``'s queries/s over that of its raw variant (``micro.base_of``: raw on the same
    connections up to 16 threads, raw with a connection per thread above), both summed over
    the A/B's slices (their slices last the same: the ratio of their requests), with a 95%
    interval from resampling the A/B's cycles. The k-th slice of every variant ran in the
    k-th cycle, so each resample keeps raw and ``name`` paired, and a slow stretch of the
    host weighs on both as it did."""
    base = per_slice.get(micro.base_of(name, threads), [])
    values = per_slice.get(name, [])
    n = min(len(base), len(values))
    if not n or sum(base[:n]) <= 0:
        return None
    ours, raw = values[:n], base[:n]
    rng = random.Random(n)  # the same interval for the same data
    estimates = []
    for _ in range(RESAMPLES):
        picks = [rng.randrange(n) for _ in range(n)]
        total = sum(raw[i] for i in picks)
        if total > 0:
            estimates.append(sum(ours[i] for i in picks) / total)
    estimates.sort()
    low = estimates[int(0.025 * len(estimates))]
    high = estimates[max(0, int(0.975 * len(estimates)) - 1)]
    return sum(ours) / sum(raw), low, high


def verdicts(r: Results) -> list[Verdict]:
    """The throughput targets (1, 16, and 64 threads on 16 connections) are judged on the A/B
    under each pinned layout that ran, where raw and tether share the same threads and CPUs;
    on the cells (unpinned) only when no pinned layout could be had. 4 threads have no
    target: the cells show them beside the peers."""
    layouts = [x for x in PINNED if x in r.ab_where]
    out: list[Verdict] = []
    for driver in r.plan.drivers:
        for threads in r.plan.ab_threads:
            if layouts:
                for layout in layouts:
                    per_slice = r.ab.get((layout, driver, threads), {})
                    for name in judged(threads):
                        got = ab_ratios(per_slice, name, threads)
                        if got:
                            out.append(Verdict(name, driver, threads, layout, *got))
            elif threads in r.plan.thread_counts:
                for name in judged(threads):
                    rs = micro.ratios(r.cells, name, driver, threads)
                    if rs:
                        low, high = min(rs), max(rs)
                        out.append(Verdict(name, driver, threads, CELLS, median(rs), low, high))
    return out


def acquire_met(us: float) -> bool:
    return us <= ACQUIRE_TARGET_US


def targets_section(r: Results) -> list[str]:
    rows: list[list[Any]] = []
    all_verdicts = verdicts(r)
    for driver in r.plan.drivers:
        for v in all_verdicts:
            if v.driver != driver:
                continue
            rows.append(
                [
                    v.name,
                    driver,
                    label(v.threads),
                    MEASURED_IN[v.measured_in],
                    v.shown,
                    f"{v.low:.2f}-{v.high:.2f}",
                    f">= {target(v.threads):.2f}",
                    "met" if v.met else "**MISSED**",
                ]
            )
        for name in TETHER:
            us = r.acquire[driver].get(name)
            if us is None:
                continue
            rows.append(
                [
                    name,
                    driver,
                    "check-out + give-back",
                    "alone, one thread",
                    f"{shown(us, ACQUIRE_TARGET_US, 1)} µs",
                    "",
                    f"<= {ACQUIRE_TARGET_US:g} µs",
                    "met" if acquire_met(us) else "**MISSED**",
                ]
            )
    columns = [
        "variant",
        "driver",
        "threads",
        "measured in",
        "ratio to raw",
        "range",
        "target",
        "verdict",
    ]
    lines = ["## Targets", "", *summary_lines(r, all_verdicts)]
    lines += [
        "A request through the pool against the same request on a raw held connection:"
        " at least 0.90 of raw's queries/s on one thread and 0.85 at 16 threads, for"
        f" `tether.Pool` and `tether.ThreadLocalPool` (sized {POOL_SIZE}), and for"
        " `ThreadLocalPool(dsn)` with its defaults (no option at all, so at most 10"
        " connections for the 16 threads) at 16 threads; 64 threads sharing a pool of"
        f" {POOL_SIZE} at least 0.90 of raw with 64 threads each holding its own connection;"
        f" a check-out + give-back alone at most {ACQUIRE_TARGET_US:g} µs.",
        "",
    ]
    pinned_ran = [LAYOUT_NAMES[x] for x in PINNED if x in r.ab_where]
    on_cells = sorted({v.threads for v in all_verdicts if v.measured_in == CELLS})
    if pinned_ran:
        lines += [
            "The throughput targets are judged on the interleaved A/B run pinned"
            f" ({', '.join(pinned_ran)}; *Interleaved A/B* below): raw and tether take turns"
            " on the same threads and CPUs (up to 16 threads on the same connections), so"
            " the ratio compares like with like. Its range is a 95% interval (the A/B's"
            " cycles resampled). The cells run unpinned: their ratios move with where the"
            " scheduler puts the server's threads beside the client's, not only with the"
            " pool's cost.",
            "",
        ]
    else:
        lines += [
            "No pinned layout could be had on this machine, so the throughput targets are"
            " judged on the cells"
            + (f" ({', '.join(label(t) for t in on_cells)})" if on_cells else "")
            + ", which run unpinned: their ratios move with where the scheduler puts the"
            " server's threads beside the client's (range: the rounds' ratios).",
            "",
        ]
    lines += skipped_lines(r)
    lines += table(columns, rows, "llllrrrl")
    lines.append("")
    if r.plan.quick:
        lines += [
            "A quick run is short and takes one pinned layout: it shows the harness works, not"
            " the figures.",
            "",
        ]
    return lines


def skipped_lines(r: Results) -> list[str]:
    if not r.ab_skipped:
        return []
    reasons = "; ".join(f"{LAYOUT_NAMES[x]}: {why}" for x, why in r.ab_skipped.items())
    return [f"Layouts not run on this machine: {reasons}.", ""]


def summary_lines(r: Results, all_verdicts: list[Verdict]) -> list[str]:
    """Counts of targets met, and where tether stands against the best peer in the cells."""
    met = sum(v.met for v in all_verdicts)
    ahead = groups = 0
    for driver in r.plan.drivers:
        for threads in r.plan.thread_counts:
            groups += 1
            best_tether = max(
                median(micro.ratios(r.cells, name, driver, threads)) for name in TETHER
            )
            peers = [
                median(micro.ratios(r.cells, cls.name, driver, threads))
                for cls in micro.VARIANTS
                if not cls.name.startswith("tether") and cls is not micro.Raw
            ]
            ahead += best_tether >= max(peers)
    acquire = [r.acquire[d][n] for d in r.plan.drivers for n in TETHER]
    low, high = f"{min(acquire):.1f}", f"{max(acquire):.1f}"
    acquire_ok = all(acquire_met(us) for us in acquire)
    all_met = met == len(all_verdicts) and acquire_ok
    return [
        f"Throughput targets met in {met} of {len(all_verdicts)} rows; check-out + give-back"
        f" {low if low == high else f'{low}-{high}'} µs against <= {ACQUIRE_TARGET_US:g} µs"
        f" ({'met' if acquire_ok else '**MISSED**'}). In the cells,"
        f" tether is ahead of (or level with) every peer in {ahead} of {groups} (driver,"
        " threads) groups."
        + ("" if all_met else " Why targets are missed: *Reading the figures* below."),
        "",
    ]


def throughput_section(r: Results) -> list[str]:
    lines = [
        "## Throughput",
        "",
        "Cells run unpinned: where the scheduler puts the server's threads beside the client's"
        " changes a request's time and the client's CPU per request, from one moment to the"
        " next, so a cell's ratio carries that luck besides the pool's cost (*Interleaved A/B*"
        " shows how much). Read it with its rounds' range.",
        "",
        "![ratios](ratios.png)",
        "",
    ]
    columns = [
        "variant",
        "queries/s",
        "ratio",
        "p50 µs",
        "p99 µs",
        "client CPU µs/q",
        "server CPU µs/q",
        "opened",
        "errors",
    ]
    errors: list[str] = []
    for driver in r.plan.drivers:
        lines += [f"### {driver}", ""]
        for threads in r.plan.thread_counts:
            rows = []
            for cls in micro.VARIANTS:
                samples = r.cells[(cls.name, driver, threads)]
                n_errors = sum(s.errors for s in samples)
                rows.append(
                    [
                        cls.name,
                        f"{median([s.qps for s in samples]):,.0f}",
                        ratio_text(median(micro.ratios(r.cells, cls.name, driver, threads))),
                        f"{median([s.p50_us for s in samples]):,.0f}",
                        f"{median([s.p99_us for s in samples]):,.0f}",
                        f"{median([s.cpu_us for s in samples]):,.0f}",
                        f"{median([s.server_cpu_us for s in samples]):,.0f}",
                        f"{median([s.opened for s in samples]):,.0f}",
                        n_errors,
                    ]
                )
                first = next((s.first_error for s in samples if s.first_error), None)
                if first:
                    errors.append(f"- {cls.name}, {driver}, {label(threads)}: {first}")
            lines += [f"**{label(threads)}**", "", *table(columns, rows), ""]
    if errors:
        lines += ["First error of each cell with errors:", "", *errors, ""]
    return lines


def costs_section(r: Results) -> list[str]:
    d = r.plan.drivers
    lines = [
        "## Check-out + give-back alone",
        "",
        "µs per pair, one thread, no statement (the pools take turns in 5 rounds; each its"
        " fastest round, a round the median of its ~20 ms batches). SQLAlchemy's"
        " `engine.connect()` (Core) is shown for reference; the throughput cells use"
        " `raw_connection()`.",
        "",
        "![costs](costs.png)",
        "",
    ]
    names = list(r.acquire[d[0]])
    rows = [[n, *(f"{r.acquire[x][n]:.1f}" for x in d)] for n in names]
    lines += table(["pool", *d], rows)
    lines += [
        "",
        "## Connect cost",
        "",
        "ms per connect + close (median; the ways interleaved). tether's row is its own"
        " connect path, the pool's connector opening a connection and then closing it: the"
        " driver's connect (PyMySQL's with the TLS context the pool built once), socket"
        " tuning (keepalive, `TCP_USER_TIMEOUT`) and one `SET` for session tracking. It is"
        " what the pool pays each time it opens a connection.",
        "",
    ]
    names = list(r.connect[d[0]])
    rows = [[n, *(f"{r.connect[x][n]:.2f}" for x in d)] for n in names]
    lines += table(["how", *d], rows)
    return [*lines, ""]


def profile_section(r: Results) -> list[str]:
    d = r.plan.drivers
    b = r.breakdowns
    pool_acq = {x: r.acquire[x][micro.TetherPool.name] for x in d}
    lines = [
        "## Where the time goes",
        "",
        "What tether adds to a request, alone and in context. *Alone*: exact, no I/O; the"
        " check-out + give-back from the table above, and tether's own work per query"
        " (`cursor()`, `execute()`, `fetchone()`, `close()` through tether minus the same on"
        " a stub connection, the real status read included). *In context*: client CPU per"
        " whole request on one thread (`time.thread_time`: other threads and processes do"
        f" not count), median of {r.plan.breakdown_rounds} quickly alternated rounds of"
        f" {r.plan.breakdown_requests:,} requests, {r.breakdown_where} (the profile too)."
        " The in-context figure is the larger one: there tether's code and objects compete"
        " with the driver's (and, on a shared core, the server's) for the CPU caches, and"
        " a line of them fetched from further away costs the same whether one instruction"
        " or fifty use it.",
        "",
    ]

    def fmt(value: float | None, digits: int = 1) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    rows: list[list[Any]] = [
        ["alone: check-out + give-back, µs", *(fmt(pool_acq[x]) for x in d)],
        ["alone: cursor and statement per query, µs", *(fmt(b[x].proxy_alone) for x in d)],
        ["- of which the status read after the statement", *(fmt(b[x].status_read, 2) for x in d)],
        [
            "**alone: tether Pool per request, µs**",
            *(fmt(pool_acq[x] + (b[x].proxy_alone or 0.0)) for x in d),
        ],
        ["in context: raw held connection, wall µs", *(fmt(b[x].wall[RAW]) for x in d)],
        ["in context: raw held connection, CPU µs", *(fmt(b[x].cpu[RAW]) for x in d)],
        ["in context: tether Pool, CPU µs", *(fmt(b[x].cpu[FULL_POOL]) for x in d)],
        ["in context: tether ThreadLocalPool, CPU µs", *(fmt(b[x].cpu[FULL_LOCAL]) for x in d)],
        ["**in context: tether Pool extra, CPU µs**", *(fmt(b[x].extra(FULL_POOL)) for x in d)],
        [
            "in context: tether ThreadLocalPool extra, CPU µs",
            *(fmt(b[x].extra(FULL_LOCAL)) for x in d),
        ],
    ]
    lines += table(["", *d], rows)
    lines += [
        "",
        f"cProfile of {r.plan.profile_requests:,} requests through tether Pool on one thread,"
        " by own time (wall clock; the profiler inflates small Python functions: read the"
        " shares, not the µs):",
        "",
    ]
    for driver in d:
        prof = r.profiles[driver]
        rows = [
            [f"`{x.function}`", f"{x.calls:.1f}", f"{x.own_us:.1f}", f"{x.share:.0%}"]
            for x in prof.tether
        ]
        others = ", ".join(f"`{x.function}` {x.share:.0%}" for x in prof.others)
        lines += [
            f"**{driver}**: tether's own functions take {prof.tether_share:.0%} of the profiled"
            f" request; the largest other parts: {others}.",
            "",
            *table(["tether function", "calls/request", "own µs/request", "share of tether"], rows),
            "",
        ]
    return lines


def slices_text(p: Plan) -> str:
    """How many slices of each variant the A/B ran: "300 at 1 thread, 600 at 16 threads"."""
    counts = [(t, p.ab_slices[t]) for t in p.ab_threads]
    if len({n for _, n in counts}) == 1:
        return f"{counts[0][1]} slices of each variant"
    return "slices of each variant: " + ", ".join(f"{n} at {label(t)}" for t, n in counts)


def ab_section(r: Results) -> list[str]:
    p = r.plan

    def where(layout: str) -> str:
        if layout in r.ab_where:
            return r.ab_where[layout]
        if layout in r.ab_skipped:
            return f"not run: {r.ab_skipped[layout]}"
        return "not run in this run"

    lines = [
        "## Interleaved A/B",
        "",
        f"The same worker threads ({', '.join(label(t) for t in p.ab_threads)}) alternate"
        f" between the variants in {p.ab_slice_seconds:g} s slices ({slices_text(p)};"
        " every cycle one slice of each variant, in a new random order), so every variant"
        " sees the same machine state. A slice begins with the threads finishing what they"
        " started in the slice before, so the order is shuffled: in a fixed cyclic order each"
        " variant always followed the same one, and at 16 threads two raw variants on like"
        " connections ran 2-4% apart for that alone.",
        "",
        f"Up to {POOL_SIZE} threads the variants are `tether.Pool` and"
        f" `tether.ThreadLocalPool` (sized {POOL_SIZE}), *{DEFAULTS}* (`ThreadLocalPool(dsn)`,"
        " no option at all: at most 10 connections, maintenance and watchdog on), and raw"
        " on the very driver connections of the pool it is compared with (each thread checks"
        " one out once, then uses its driver connection directly): two connections' requests"
        " can run several percent apart for as long as both are open, which is more than"
        " what is measured. *raw held connection* runs on tether ThreadLocalPool's"
        " connections (the base of ThreadLocalPool's ratios, and of the defaults pool's,"
        " which has fewer connections than threads at 16), *raw held connection, again* on"
        " tether Pool's (the base of Pool's). Those two pools run without background"
        " maintenance, whose once-a-second poll of idle sockets would take a raw reply on an"
        ' "idle" connection for a server-side close. A Pool connection goes to another thread'
        " only when that thread's own is busy, so before the warm-up every thread holds one"
        " of the Pool's at the same time: from then on each gets its own back, and raw never"
        " shares one with another thread (checked: the run fails if a pool raw runs on opened"
        " or closed a connection meanwhile, or a request failed).",
        "",
        f"At {label(WIDE)}: `tether.Pool` and `tether.ThreadLocalPool` of {POOL_SIZE}"
        f" (their defaults otherwise), shared by the {WIDE} threads, against raw with {WIDE}"
        f" connections, one held by each thread (opened by tether's connect path, in a pool"
        f" of {WIDE} that raw uses the same way, so the sessions are set up alike); *raw held"
        " connection, again* on a second such set.",
        "",
        "**queries/s** = the mean over the variant's slices; **ratio** = that over its raw"
        " variant's (the ratio of their requests: slices last the same); **ratio range** = a"
        " 95% interval, from resampling the A/B's cycles (each cycle ran one slice of every"
        " variant, so raw and the variant stay paired). Short slices, many of them: the host"
        " drifts between speeds within a second, and only slices much shorter than that let"
        " every variant see the same mix of them. Controls: *raw held connection, again*"
        " against *raw held connection* shows how far two sets of connections land apart (the"
        f" precision of the other ratios); *{micro.RawPlusPython.name}* adds that much CPU per"
        " request and nothing else: what extra CPU alone costs at that thread count.",
        "",
        "Where the scheduler places the server's thread relative to the client's matters more"
        " than a few µs of pool work: on a 2-vCPU VM the same held connection on one thread"
        " (PyMySQL) alternated between about 42 and 120 µs per request from one 300-request"
        " batch to the next, and the client's CPU per request changed about 2x with it."
        " Unpinned, the A/B's slices ranged 0.4x-1.2x of raw; pinned, within about 5%. So the"
        " A/B runs once per CPU layout (every thread of the server process and of this one"
        " pinned, CPUs taken from those this process may use):",
        "",
        f"- **separate cores** ({where(SEPARATE)}): like an application whose database has its"
        " own CPU, the usual deployment (here it still shares the machine).",
        f"- **shared core** ({where(SHARED)}): the harshest case, where every µs of client CPU"
        " adds to every request.",
        f"- **unpinned** ({where(UNPINNED)}): as the cells run, kept so that the effect stays"
        " visible.",
        "",
    ]
    rows = []
    for (layout, driver, threads), per_slice in r.ab.items():
        for name, values in per_slice.items():
            got = ab_ratios(per_slice, name, threads)
            if not values:
                continue
            rows.append(
                [
                    LAYOUT_NAMES[layout],
                    driver,
                    label(threads),
                    name,
                    f"{sum(values) / len(values):,.0f}",
                    f"{min(values):,.0f}-{max(values):,.0f}",
                    ratio_text(got[0]) if got else "-",
                    f"{got[1]:.2f}-{got[2]:.2f}" if got else "-",
                ]
            )
    columns = [
        "layout",
        "driver",
        "threads",
        "variant",
        "queries/s",
        "slices' range",
        "ratio",
        "ratio range",
    ]
    return [*lines, *table(columns, rows, "llllrrrr"), ""]


def why_section(r: Results) -> list[str]:
    """The reading of this run's figures, with its own numbers."""
    lines = ["## Reading the figures", ""]
    for driver in r.plan.drivers:
        b = r.breakdowns[driver]
        acq = r.acquire[driver][micro.TetherPool.name]
        alone = acq + (b.proxy_alone or 0.0)
        lines.append(
            f"- **{driver}, one thread**: a request on a held connection takes"
            f" {b.wall[RAW]:.0f} µs, of which the client spends {b.cpu[RAW]:.0f} µs on the"
            f" CPU ({r.breakdown_where}). tether's own work is {alone:.1f} µs per request alone"
            f" (check-out + give-back {acq:.1f}, cursor and statement"
            f" {b.proxy_alone or 0.0:.1f}) and"
            f" {b.extra(FULL_POOL):.1f} µs of CPU in context,"
            f" {b.extra(FULL_POOL) / b.wall[RAW]:.0%} of the request's time. The peers' pools"
            " add a round trip or two per request (a ping on check-out, a rollback on"
            f" return): {peer_costs(r, driver)} µs per check-out + give-back alone."
            + held_request_us(r, driver)
        )
    missed = [missed_text(r, v) for v in verdicts(r) if not v.met]
    if missed:
        lines.append(
            "- **Missed targets.** With one thread, nothing overlaps: tether's CPU per request"
            " adds to every round trip. With several threads, once the client keeps a core"
            " busy it is bound by CPU and by the GIL (one thread runs Python at a time), while"
            " the server needs the same cores: throughput follows client CPU per request. In"
            " the A/B the control (raw + plain Python) shows what extra CPU alone costs in the"
            " same layout; for a cell the ratio tends to the ceiling raw CPU / tether CPU per"
            " request measured in the same cell (which also counts the thread switches that"
            " waiting for a connection adds at 64 threads on 16 connections):"
        )
        lines += [f"  - {m}" for m in missed]
    else:
        lines.append("- Every throughput target was met in this run.")
    if WIDE in r.plan.thread_counts or WIDE in r.plan.ab_threads:
        lines.append(
            f"- At {WIDE} threads the raw variant holds {WIDE} connections (one per thread) and"
            f" DBUtils PersistentDB opens {WIDE} too: nobody waits. The bounded pools share"
            f" {POOL_SIZE} ({DEFAULTS}: 10), so most threads wait at any moment; tether hands a"
            " returned connection straight to the longest waiting thread (first come, first"
            " served: the low p99), which costs a thread switch and a GIL hand-off per"
            " request."
        )
    spreads = []
    for driver in r.plan.drivers:
        for threads in r.plan.thread_counts:
            if threads <= POOL_SIZE:
                qps = [s.qps for s in r.cells[(micro.Raw.name, driver, threads)]]
                if len(qps) > 1 and min(qps) > 0:
                    spreads.append(
                        f"{driver} {label(threads)} {min(qps):,.0f}-{max(qps):,.0f} q/s"
                        f" ({max(qps) / min(qps):.1f}x)"
                    )
    ab_spreads = []
    for (layout, driver, threads), per_slice in r.ab.items():
        raw = per_slice.get(micro.Raw.name, [])
        if raw and min(raw) > 0:
            ab_spreads.append(
                f"{driver}, {label(threads)}, {LAYOUT_NAMES[layout]}: {max(raw) / min(raw):.2f}x"
            )
    if spreads or ab_spreads:
        text = (
            "- The cells run unpinned, and where the scheduler places the server's threads"
            " beside the client's changes a request's time and the client's CPU per request"
            " (on one thread, two stable speeds about 3x apart)."
        )
        if spreads:
            text += (
                " Even the raw held connection's own throughput moved across rounds: "
                + "; ".join(spreads)
                + ". A cell's ratio mixes that luck with the pool's cost: read it with its"
                " per-round range."
            )
        if ab_spreads:
            text += (
                " In the A/B, raw's highest slice over its lowest: " + "; ".join(ab_spreads) + "."
            )
        lines.append(text)
    if r.others_cores >= 0.2:
        lines.append(
            f"- Other work on the machine used {r.others_cores:.2f} cores on average during"
            " the run: every measurement lost some CPU to it, unevenly; the range column of"
            " the targets table shows how much the same comparison moved."
        )
    return [*lines, ""]


def held_request_us(r: Results, driver: str) -> str:
    """The held connection's time per request on one thread in the A/B, per layout."""
    parts = []
    for (layout, d, threads), per_slice in r.ab.items():
        qps = median(per_slice.get(micro.Raw.name, []))
        if d == driver and threads == 1 and qps:
            parts.append(f"{1e6 / qps:.0f} µs ({LAYOUT_NAMES[layout]})")
    return f" In the A/B the held connection took {', '.join(parts)}." if parts else ""


def missed_text(r: Results, v: Verdict) -> str:
    """A missed throughput target with what explains it, from the same measurement."""
    head = f"{v.name}, {v.driver}, {label(v.threads)}, {MEASURED_IN[v.measured_in]}:"
    head += f" {v.shown} ({v.low:.2f}-{v.high:.2f})."
    if v.measured_in != CELLS:
        key = (v.measured_in, v.driver, v.threads)
        per_slice = r.ab[key]
        control = ab_ratios(per_slice, micro.RawPlusPython.name, v.threads)
        again = ab_ratios(per_slice, micro.RawAgain.name, v.threads)
        said = f" The control got {control[0]:.2f} in the same A/B." if control else ""
        if again:
            said += f" The raw variant against itself: {again[0]:.2f}."
        said += events_text(r.ab_events.get(key, {}).get(v.name))
        b = r.breakdowns[v.driver]
        step = FULL_POOL if v.name == micro.TetherPool.name else FULL_LOCAL
        if v.threads == 1 and b.extra(step) > 0:  # the breakdown runs unpinned: it can be < 0
            wall = 1e6 / median(per_slice[micro.base_of(v.name, v.threads)])
            expected = wall / (wall + b.extra(step))
            return (
                f"{head} One request at a time: tether's {b.extra(step):.1f} µs of CPU (in"
                f" context) add to a {wall:.0f} µs request, expected {expected:.2f}.{said}"
            )
        return head + said
    b = r.breakdowns[v.driver]
    raw = r.cells[(micro.Raw.name, v.driver, v.threads)]
    raw_cpu = median([s.cpu_us for s in raw])
    cpu = median([s.cpu_us for s in r.cells[(v.name, v.driver, v.threads)]])
    if v.threads == 1:
        step = FULL_POOL if v.name == micro.TetherPool.name else FULL_LOCAL
        expected = b.wall[RAW] / (b.wall[RAW] + b.extra(step))
        return (
            f"{head} One request at a time, so tether's {b.extra(step):.1f} µs of CPU (in"
            f" context) add to a {b.wall[RAW]:.0f} µs round trip: expected {expected:.2f}"
        )
    client = median([s.qps * s.cpu_us / 1e6 for s in raw])
    server = median([s.qps * s.server_cpu_us / 1e6 for s in raw])
    return (
        f"{head} Client CPU per request {cpu:.0f} µs against raw {raw_cpu:.0f} µs (ceiling"
        f" {raw_cpu / cpu if cpu else 0:.2f}); in the raw cell the client used {client:.1f}"
        f" and the server {server:.1f} of {os.cpu_count()} cores"
    )


def events_text(events: dict[str, int] | None) -> str:
    """What a tether variant's pool did during the A/B's slices, where it did more than hand
    out its idle connections."""
    if not events or not events.get("checkouts"):
        return ""
    n = events["checkouts"]
    parts = [
        f"{events[k]:,} {what}"
        for k, what in (
            ("waits", "waited for a connection"),
            ("takeovers", "took over another thread's connection"),
            ("resets", "reset a session"),
            ("pings", "pinged"),
            ("opened", "opened a connection"),
        )
        if events.get(k)
    ]
    if not parts:
        return ""
    return f" Of its pool's {n:,} check-outs in the slices: {', '.join(parts)}."


def peer_costs(r: Results, driver: str) -> str:
    peers = [n for n in r.acquire[driver] if not n.startswith("tether")]
    values = sorted(r.acquire[driver][n] for n in peers)
    return f"{values[0]:.0f}-{values[-1]:.0f}" if values else "-"


def web_section(r: Results) -> list[str]:
    lines = ["## Web: the Flask city lookup under gunicorn", ""]
    if r.web is None:
        return [*lines, r.web_note or "Not run.", ""]
    lines += table([str(c) for c in r.web["columns"]], r.web["rows"], "l" * len(r.web["columns"]))
    lines.append("")
    notes = [str(n) for n in r.web.get("notes", [])]
    for note in notes:
        lines += [note, ""]
    chart = r.web.get("chart")
    if chart and not any(Path(chart).name in n for n in notes):
        lines += [f"![web]({Path(chart).name})", ""]
    return lines


# ----------------------------------------------------------------------------- charts


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def ratio_chart(r: Results, path: Path) -> None:
    plt = _pyplot()
    names = [v.name for v in micro.VARIANTS if v is not micro.Raw]
    counts = r.plan.thread_counts
    drivers = r.plan.drivers
    fig, axes = plt.subplots(len(drivers), 1, figsize=(11, 4.2 * len(drivers)), squeeze=False)
    width = 0.8 / len(counts)
    for ax, driver in zip(axes[:, 0], drivers, strict=True):
        for i, threads in enumerate(counts):
            values = [median(micro.ratios(r.cells, n, driver, threads)) for n in names]
            xs = [j + i * width for j in range(len(names))]
            ax.bar(xs, values, width, label=label(threads))
        ax.axhline(1.0, color="black", linewidth=0.8)
        for level in sorted({target(t) for t in AB_THREADS}):
            ax.axhline(level, color="grey", linewidth=0.8, linestyle="--")
        ax.set_xticks([j + width * (len(counts) - 1) / 2 for j in range(len(names))])
        ax.set_xticklabels(names, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("queries/s / raw held connection")
        ax.set_title(
            f"{driver}: the same request through each variant (1.0 = raw; cells, unpinned)"
        )
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def cost_chart(r: Results, path: Path) -> None:
    plt = _pyplot()
    drivers = r.plan.drivers
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, data, unit, title in (
        (left, r.acquire, "µs", "check-out + give-back, no statement"),
        (right, r.connect, "ms", "connect + close"),
    ):
        names = list(data[drivers[0]])
        height = 0.8 / len(drivers)
        for i, driver in enumerate(drivers):
            ys = [j + i * height for j in range(len(names))]
            ax.barh(ys, [data[driver][n] for n in names], height, label=driver)
        ax.set_yticks([j + height * (len(drivers) - 1) / 2 for j in range(len(names))])
        ax.set_yticklabels(names, fontsize=8)
        ax.invert_yaxis()
        ax.set_xscale("log")
        if unit == "µs":
            ax.axvline(ACQUIRE_TARGET_US, color="grey", linewidth=0.8, linestyle="--")
        ax.set_xlabel(f"{unit} (log scale)")
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
