"""tether beside its peers on the same work, in one run, against a throwaway MariaDB.

    python bench/run.py                  # full run: bench/RESULTS.md and bench/*.png
    python bench/run.py --quick          # under a minute, for CI: proves the harness works
    python bench/run.py --output DIR     # write RESULTS.md and the charts into DIR

A quick run writes into a temporary directory unless ``--output`` says otherwise, so it never
replaces the full results in bench/. The micro benchmark is in micro.py; the web benchmark
(web.py, Flask under gunicorn) runs after it when present.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import os
import platform
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

import micro
from common import (
    DRIVERS,
    HERE,
    POOL_SIZE,
    QUERY,
    ROOT,
    ROWS,
    ConnectionCounter,
    CpuMeter,
    bench_server,
    cpu_model,
    load_average,
    median,
    table,
    versions,
)
from micro import FULL_LOCAL, FULL_POOL, RAW, Cells, Profile

TETHER = (micro.TetherPool.name, micro.TetherThreadLocal.name)
ACQUIRE_TARGET_US = 5.0
# Seconds per web cell in a full run: with the micro part, `make bench` stays near 7 minutes.
WEB_SECONDS = 3


@dataclass
class Plan:
    quick: bool
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
    ab_slices: int
    ab_slice_seconds: float

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
        return cls(
            missing_drivers=missing,
            quick=quick,
            drivers=drivers,
            thread_counts=[1, 4] if quick else [1, 4, POOL_SIZE, 4 * POOL_SIZE],
            rounds=args.rounds or (1 if quick else 5),
            seconds=args.seconds or (0.2 if quick else 0.6),
            acquire_budget=0.1 if quick else 0.5,
            connects=5 if quick else 40,
            breakdown_requests=200 if quick else 300,
            breakdown_rounds=4 if quick else 30,
            profile_requests=300 if quick else 3000,
            ab_threads=[1, 4] if quick else [1, POOL_SIZE],
            ab_slices=8 if quick else 80,
            ab_slice_seconds=0.05 if quick else 0.2,
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
    profiles: dict[str, Profile]
    ab: dict[tuple[str, int], dict[str, list[float]]]  # (driver, threads) -> q/s per slice
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
        breakdowns = {
            x: micro.breakdown(server, x, plan.breakdown_requests, plan.breakdown_rounds) for x in d
        }
        profiles = {x: micro.profile(server, x, plan.profile_requests) for x in d}
        print("interleaved A/B ...", flush=True)
        ab = {
            (x, t): micro.interleaved(server, x, t, plan.ab_slices, plan.ab_slice_seconds)
            for x in d
            for t in plan.ab_threads
        }
        web_seconds = args.web_seconds or (None if plan.quick else WEB_SECONDS)
        web, web_note = run_web(plan.quick, server, output, web_seconds, skip=args.skip_web)
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
        profiles=profiles,
        ab=ab,
        web=web,
        web_note=web_note,
    )
    ratio_chart(results, output / "ratios.png")
    cost_chart(results, output / "costs.png")
    path = output / "RESULTS.md"
    path.write_text(render(results))
    print(f"wrote {path}, {output / 'ratios.png'}, {output / 'costs.png'} in {elapsed:.0f} s")
    return 0


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


# ----------------------------------------------------------------------------- report


def label(threads: int) -> str:
    if threads > POOL_SIZE:
        return f"{threads} threads on {POOL_SIZE} connections"
    return f"{threads} thread" + ("s" if threads > 1 else "")


def ratio_text(ratio: float) -> str:
    return f"{ratio:.2f}" if ratio >= 0.1 else f"{ratio:.3f}"


def target(threads: int) -> float:
    return 0.90 if threads > POOL_SIZE else 0.95


def render(r: Results) -> str:
    p = r.plan
    mode = "quick mode: few short cells, one round, noisy" if p.quick else "full run"
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
        + ("; `make bench` runs it." if not p.quick else "."),
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
        " those of connect-per-request are the request). Cells are interleaved: every round"
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
        " pooled path; tether runs with every safety on. The raw held connection opens one"
        " connection per thread: above 16 threads it holds more than the pools.",
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


def targets_section(r: Results) -> list[str]:
    rows: list[list[Any]] = []
    for driver in r.plan.drivers:
        for threads in r.plan.thread_counts:
            for name in TETHER:
                rs = micro.ratios(r.cells, name, driver, threads)
                ratio = median(rs)
                rows.append(
                    [
                        name,
                        driver,
                        label(threads),
                        f"{ratio:.2f}",
                        f"{min(rs):.2f}-{max(rs):.2f}" if rs else "-",
                        f">= {target(threads):.2f}",
                        "met" if ratio >= target(threads) else "**MISSED**",
                    ]
                )
        for name in TETHER:
            us = r.acquire[driver][name]
            rows.append(
                [
                    name,
                    driver,
                    "check-out + give-back",
                    f"{us:.1f} µs",
                    "",
                    f"<= {ACQUIRE_TARGET_US:g} µs",
                    "met" if us <= ACQUIRE_TARGET_US else "**MISSED**",
                ]
            )
    columns = ["variant", "driver", "cell", "ratio to raw", "rounds", "target", "verdict"]
    lines = ["## Targets", "", *summary_lines(r)]
    lines += table(columns, rows, "lllrrrl")
    lines.append("")
    if r.plan.quick:
        lines += [
            "A quick run is one short round: it shows the harness works, not the figures.",
            "",
        ]
    return lines


def summary_lines(r: Results) -> list[str]:
    """Counts of targets met, and where tether stands against the best peer in each group."""
    met = total = ahead = groups = 0
    for driver in r.plan.drivers:
        for threads in r.plan.thread_counts:
            groups += 1
            best_tether = 0.0
            for name in TETHER:
                ratio = median(micro.ratios(r.cells, name, driver, threads))
                best_tether = max(best_tether, ratio)
                total += 1
                met += ratio >= target(threads)
            peers = [
                median(micro.ratios(r.cells, cls.name, driver, threads))
                for cls in micro.VARIANTS
                if cls.name not in TETHER and cls is not micro.Raw
            ]
            ahead += best_tether >= max(peers)
    acquire = [r.acquire[d][n] for d in r.plan.drivers for n in TETHER]
    return [
        f"Throughput targets met in {met} of {total} cells; check-out + give-back"
        f" {min(acquire):.1f}-{max(acquire):.1f} µs against <= {ACQUIRE_TARGET_US:g} µs"
        f" ({'met' if max(acquire) <= ACQUIRE_TARGET_US else '**MISSED**'}). tether is ahead"
        f" of (or level with) every peer in {ahead} of {groups} (driver, threads) groups."
        " Why targets are missed: *Reading the figures* below.",
        "",
    ]


def throughput_section(r: Results) -> list[str]:
    lines = ["## Throughput", "", "![ratios](ratios.png)", ""]
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
        "µs per pair, one thread, no statement (median of ~20 ms batches). SQLAlchemy's"
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
        " connect path, `Pool._open` then a close: the driver's connect with the TLS context"
        " the pool built once, socket tuning (keepalive, `TCP_USER_TIMEOUT`) and one `SET` for"
        " session tracking. It is what the pool pays each time it opens a connection.",
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
        " check-out + give-back from the table above, and the proxy's own work per query"
        " (`cursor()`, `execute()`, `fetchone()`, `close()` through tether minus the same on"
        " a stub connection, the real status read included). *In context*: client CPU per"
        " whole request on one thread (`time.thread_time`: other threads and processes do"
        f" not count), median of {r.plan.breakdown_rounds} quickly alternated rounds of"
        f" {r.plan.breakdown_requests:,} requests. The in-context figure is the larger one:"
        " there tether's code and objects compete with the driver's for the CPU caches"
        " (PyMySQL, pure Python, suffers most), and it carries a shared machine's noise.",
        "",
    ]

    def fmt(value: float | None, digits: int = 1) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    rows: list[list[Any]] = [
        ["alone: check-out + give-back, µs", *(fmt(pool_acq[x]) for x in d)],
        ["alone: proxy per query, µs", *(fmt(b[x].proxy_alone) for x in d)],
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


def ab_section(r: Results) -> list[str]:
    p = r.plan
    lines = [
        "## Interleaved A/B",
        "",
        f"The same {', '.join(str(t) for t in p.ab_threads)} worker thread(s) alternate"
        f" between the variants in {p.ab_slice_seconds:g} s slices ({p.ab_slices} slices,"
        " the order rotated every cycle), so every variant sees the same machine state."
        " **Ratio** = median queries/s over the raw held connection's. The control"
        f" *{micro.RawPlusPython.name}* adds that much CPU per request and nothing else: it"
        " shows what extra CPU alone costs at that thread count.",
        "",
    ]
    rows = []
    for (driver, threads), per_slice in r.ab.items():
        raw = median(per_slice[micro.Raw.name]) if per_slice[micro.Raw.name] else 0.0
        for name, values in per_slice.items():
            if not values:
                continue
            mid = median(values)
            rows.append(
                [
                    name,
                    driver,
                    label(threads),
                    f"{mid:,.0f}",
                    ratio_text(mid / raw) if raw else "-",
                    f"{min(values):,.0f}-{max(values):,.0f}",
                ]
            )
    columns = ["variant", "driver", "threads", "queries/s", "ratio", "slices' range"]
    return [*lines, *table(columns, rows, "lllrrr"), ""]


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
            f" CPU. tether's own work is {alone:.1f} µs per request alone (check-out +"
            f" give-back {acq:.1f}, proxy {b.proxy_alone or 0.0:.1f}) and"
            f" {b.extra(FULL_POOL):.1f} µs of CPU in context,"
            f" {b.extra(FULL_POOL) / b.wall[RAW]:.0%} of the request's time. The peers' pools"
            " add a round trip or two per request (a ping on check-out, a rollback on"
            f" return): {peer_costs(r, driver)} µs per check-out + give-back alone."
        )
    missed = []
    for driver in r.plan.drivers:
        b = r.breakdowns[driver]
        for threads in r.plan.thread_counts:
            raw = r.cells[(micro.Raw.name, driver, threads)]
            raw_cpu = median([s.cpu_us for s in raw])
            client = median([s.qps * s.cpu_us / 1e6 for s in raw])
            server = median([s.qps * s.server_cpu_us / 1e6 for s in raw])
            for name in TETHER:
                ratio = median(micro.ratios(r.cells, name, driver, threads))
                if ratio >= target(threads):
                    continue
                cpu = median([s.cpu_us for s in r.cells[(name, driver, threads)]])
                if threads == 1:
                    step = FULL_POOL if name == micro.TetherPool.name else FULL_LOCAL
                    expected = b.wall[RAW] / (b.wall[RAW] + b.extra(step))
                    why = (
                        f"one request at a time, so tether's {b.extra(step):.1f} µs of CPU"
                        f" (in context) add to a {b.wall[RAW]:.0f} µs round trip: expected"
                        f" {expected:.2f}"
                    )
                else:
                    why = (
                        f"client CPU per request {cpu:.0f} µs against raw {raw_cpu:.0f} µs"
                        f" (ceiling {raw_cpu / cpu if cpu else 0:.2f}); in the raw cell the"
                        f" client used {client:.1f} and the server {server:.1f} of"
                        f" {os.cpu_count()} cores"
                    )
                missed.append(f"{name}, {driver}, {label(threads)}: {ratio:.2f}. {why}")
    if missed:
        lines.append(
            "- **Missed targets.** With one thread, nothing overlaps: tether's CPU per request"
            " adds to every round trip. With several threads, once the client keeps a core"
            " busy it is bound by CPU and by the GIL (one thread runs Python at a time), while"
            " the server needs the same cores: throughput follows client CPU per request, and"
            " the ratio tends to the ceiling raw CPU / tether CPU per request measured in the"
            " same cell (which also counts the thread switches that waiting for a connection"
            " adds at 64 threads on 16 connections):"
        )
        lines += [f"  - {m}" for m in missed]
    else:
        lines.append("- Every throughput target was met in this run.")
    lines.append(
        "- At 64 threads the raw variant holds 64 connections (one per thread) and DBUtils"
        " PersistentDB opens 64 too: nobody waits. The bounded pools share 16, so 48 threads"
        " wait at any moment; tether hands a returned connection straight to the longest"
        " waiting thread (first come, first served: the low p99), which costs a thread"
        " switch and a GIL hand-off per request."
    )
    spreads = []
    for driver in r.plan.drivers:
        for threads in r.plan.thread_counts:
            if 1 < threads <= POOL_SIZE:
                qps = [s.qps for s in r.cells[(micro.Raw.name, driver, threads)]]
                if len(qps) > 1 and min(qps) > 0:
                    spreads.append(
                        f"{driver} {label(threads)} {min(qps):,.0f}-{max(qps):,.0f} q/s"
                        f" ({max(qps) / min(qps):.1f}x)"
                    )
    if spreads:
        lines.append(
            "- With many threads in one process the machine flips between two regimes: one"
            " where a thread coming back from the server finds the GIL free, and one where"
            " threads queue for it and every hand-off costs thread switches (client CPU per"
            " request then doubles or triples, mostly in the kernel). Even the raw held"
            " connection's own throughput moved across rounds: "
            + "; ".join(spreads)
            + ". A multi-thread ratio compares cells that may sit in different regimes: read"
            " it with its per-round range."
        )
    if r.others_cores >= 0.2:
        lines.append(
            f"- Other work on the machine used {r.others_cores:.2f} cores on average during"
            " the run: every cell lost some CPU to it, unevenly; the per-round ratio range in"
            " the targets table shows how much the same comparison moved."
        )
    return [*lines, ""]


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
        ax.axhline(0.95, color="grey", linewidth=0.8, linestyle="--")
        ax.set_xticks([j + width * (len(counts) - 1) / 2 for j in range(len(names))])
        ax.set_xticklabels(names, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("queries/s / raw held connection")
        ax.set_title(f"{driver}: the same request through each variant (1.0 = raw)")
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
