"""The classic experiment: the Flask city lookup served by gunicorn, four ways.

    python bench/web.py            # ~5 minutes: 4 concurrencies, 5 s cells, 3 rounds, a chart
    python bench/web.py --quick    # under a minute: concurrency 1 and 8, 2 s cells, 1 round

One gunicorn process (gthread worker, 16 threads) per variant serves ``GET /?city=london``
from ``examples/flask_city/``: a new connection per request (the classic advice), DBUtils
``PersistentDB`` (the classic recipe), ``tether.ThreadLocalPool`` and ``tether.Pool`` through
``tether.contrib.flask``, all with PyMySQL. ``wrk`` drives the load (a small Python load
generator when wrk is missing). Cells are interleaved over the variants and repeated;
figures are medians over rounds. ``bench/run.py`` calls :func:`run_web_bench` with its own
server and puts the table in ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from examples.flask_city.schema import seed

from tether import parse_dsn

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

BASELINE = "DBUtils PersistentDB"
VARIANTS = {
    "connection per request": "examples.flask_city.per_request:app",
    BASELINE: "examples.flask_city.persistentdb_app:app",
    "tether ThreadLocalPool": "examples.flask_city.threadlocal_app:app",
    "tether Pool": "examples.flask_city.pool_app:app",
}
THREADS = 16  # gunicorn gthread threads, and the tether pools' max_size in the examples
PATH = "/?city=london"
DATABASE = "flask_city"


@dataclass
class Cell:
    rps: list[float] = field(default_factory=list)
    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    errors: int = 0
    requests: int = 0
    connects: list[int] = field(default_factory=list)


@dataclass
class Measure:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int


# ----------------------------------------------------------------------------- gunicorn


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served:
    """One variant under ``gunicorn -k gthread --threads 16 -w 1`` on a free loopback port."""

    def __init__(self, name: str, spec: str, dsn: str, log_dir: Path) -> None:
        self.name = name
        self.spec = spec
        self.dsn = dsn
        self.log = log_dir / (re.sub(r"\W+", "-", name) + ".log")
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        for _ in range(3):
            self.port = _free_port()
            env = {**os.environ, "DATABASE_URL": self.dsn}
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "gunicorn",
                        "-k",
                        "gthread",
                        "--threads",
                        str(THREADS),
                        "-w",
                        "1",
                        "-b",
                        f"127.0.0.1:{self.port}",
                        "--chdir",
                        str(ROOT),
                        "--log-level",
                        "warning",
                        "--graceful-timeout",
                        "5",
                        self.spec,
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    env=env,
                    start_new_session=True,
                )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                with contextlib.suppress(OSError, http.client.HTTPException):
                    if _get(self.port, PATH) == 200:
                        return
                time.sleep(0.1)
            self.stop()
        tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
        raise RuntimeError(f"gunicorn for {self.name} did not start:\n{tail}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _get(port: int, path: str, timeout: float = 5.0) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


# ----------------------------------------------------------------------------- load


def _ensure_wrk() -> str | None:
    """wrk's path; installs Debian's package when running as root, else None."""
    found = shutil.which("wrk")
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for args in (
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "wrk"],
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "wrk"],
    ):
        subprocess.run(args, env=env, capture_output=True, timeout=600, check=False)
        if shutil.which("wrk"):
            break
    return shutil.which("wrk")


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        return float("nan")
    return float(m.group(1)) * _UNITS[m.group(2)]


def run_wrk(wrk: str, port: int, connections: int, seconds: int, *, path: str = PATH) -> Measure:
    threads = min(connections, 2)  # the machine's two cores serve gunicorn and MariaDB too
    out = subprocess.run(
        [
            wrk,
            "-t",
            str(threads),
            "-c",
            str(connections),
            "-d",
            f"{seconds}s",
            "--timeout",
            "10s",
            "--latency",
            f"http://127.0.0.1:{port}{path}",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=False,
    ).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    if not rps or not total:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    errors = 0
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(x) for x in m.groups())
    p50 = re.search(r"\s50%\s+(\S+)", out)
    p99 = re.search(r"\s99%\s+(\S+)", out)
    return Measure(
        rps=float(rps.group(1)),
        p50_ms=_ms(p50.group(1)) if p50 else float("nan"),
        p99_ms=_ms(p99.group(1)) if p99 else float("nan"),
        requests=int(total.group(1)),
        errors=errors,
    )


def run_python_load(port: int, connections: int, seconds: int) -> Measure:
    """The fallback: ``connections`` threads, each with a keep-alive HTTP connection."""
    lock = threading.Lock()
    latencies: list[float] = []
    errors = 0
    stop = time.monotonic() + seconds

    def client() -> None:
        nonlocal errors
        mine: list[float] = []
        failed = 0
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        while time.monotonic() < stop:
            start = time.perf_counter()
            try:
                conn.request("GET", PATH)
                resp = conn.getresponse()
                resp.read()
                ok = 200 <= resp.status < 400
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            if ok:
                mine.append((time.perf_counter() - start) * 1000)
            else:
                failed += 1
        conn.close()
        with lock:
            latencies.extend(mine)
            errors += failed

    started = time.monotonic()
    workers = [threading.Thread(target=client) for _ in range(connections)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(seconds + 30)
    elapsed = time.monotonic() - started
    ordered = sorted(latencies) or [float("nan")]
    return Measure(
        rps=len(latencies) / elapsed,
        p50_ms=ordered[len(ordered) // 2],
        p99_ms=ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        requests=len(latencies) + errors,
        errors=errors,
    )


def _server_connections(dsn: str) -> int:
    """The server's ``Connections`` counter (connects accepted so far), read over one more
    connection of its own (which the caller subtracts)."""
    import pymysql

    url = parse_dsn(dsn)
    conn = pymysql.connect(
        host=url.host, port=url.port, user=url.user, password=url.password, connect_timeout=5
    )
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW GLOBAL STATUS LIKE 'Connections'")
            row = cur.fetchone()
            return int(row[1]) if row else 0
    finally:
        conn.close()


# ----------------------------------------------------------------------------- the run


def run_web_bench(
    *,
    quick: bool,
    dsn: str | None = None,
    server: Any = None,
    output: Path | None = None,
    rounds: int | None = None,
    seconds: int | None = None,
) -> dict[str, Any]:
    """Run the experiment against ``server`` (a running ``tether.testing.MariaDBServer``: a
    ``flask_city`` database is created in it) or the private server at ``dsn`` (its database
    gets the ``city`` table); with neither, a throwaway server of its own.

    Returns ``{"columns", "rows", "notes", "chart"}``; the chart (PNG) is written into
    ``output`` when given, else into ``bench/`` on a full run, else not at all.
    """
    if server is None and dsn is None:
        from tether.testing import MariaDBServer

        with MariaDBServer(options={"max_connections": 500}, name="web-bench") as own:
            return run_web_bench(
                quick=quick, server=own, output=output, rounds=rounds, seconds=seconds
            )
    if server is not None:
        server.execute_admin(f"CREATE DATABASE IF NOT EXISTS `{DATABASE}`")
        server.execute_admin(f"GRANT ALL PRIVILEGES ON `{DATABASE}`.* TO '{server.user}'@'%'")
        dsn = server.dsn(database=DATABASE)
    assert dsn is not None
    seed(dsn)

    concurrencies = [1, 8] if quick else [1, 4, 8, 16]
    seconds = seconds or (2 if quick else 5)
    rounds = rounds or (1 if quick else 3)
    notes: list[str] = []
    wrk = _ensure_wrk()
    if wrk:
        version = subprocess.run([wrk, "--version"], capture_output=True, text=True, check=False)
        tool = (version.stdout or version.stderr).split("[")[0].strip() or "wrk"
    else:
        tool = "a Python load generator (threads with keep-alive connections; wrk not found)"
        notes.append(
            "wrk was not available, so the load came from a Python load generator in the same"
            " process: it competes for the CPU and its figures are lower than wrk's."
        )

    log_dir = Path(tempfile.mkdtemp(prefix="tether-web-bench-"))
    served = {name: Served(name, spec, dsn, log_dir) for name, spec in VARIANTS.items()}
    cells: dict[tuple[str, int], Cell] = {}
    try:
        for app in served.values():
            app.start()
        for app in served.values():  # warm up: imports, first connections, JIT-free but cold
            _load(wrk, app.port, 4, 1)
        total = rounds * len(concurrencies) * len(served)
        done = 0
        names = list(served)
        for round_no in range(rounds):
            for concurrency in concurrencies:
                # Rotate the order every round so no variant always runs first or last.
                shift = (round_no + concurrency) % len(names)
                for name in names[shift:] + names[:shift]:
                    before = _server_connections(dsn)
                    measure = _load(wrk, served[name].port, concurrency, seconds)
                    connects = _server_connections(dsn) - before - 1
                    cell = cells.setdefault((name, concurrency), Cell())
                    cell.rps.append(measure.rps)
                    cell.p50.append(measure.p50_ms)
                    cell.p99.append(measure.p99_ms)
                    cell.errors += measure.errors
                    cell.requests += measure.requests
                    cell.connects.append(connects)
                    done += 1
                    print(
                        f"[{done}/{total}] c={concurrency:2} {name:24} {measure.rps:9,.0f} req/s"
                        f"  errors {measure.errors}",
                        flush=True,
                    )
    finally:
        for app in served.values():
            app.stop()
        shutil.rmtree(log_dir, ignore_errors=True)

    columns = [
        "variant",
        "concurrency",
        "requests/s",
        f"ratio to {BASELINE}",
        "p50 ms",
        "p99 ms",
        "errors",
        "server connects",
    ]
    rows: list[list[Any]] = []
    verdicts: list[str] = []
    missed: list[str] = []
    for concurrency in concurrencies:
        base = statistics.median(cells[(BASELINE, concurrency)].rps)
        for name in served:
            cell = cells[(name, concurrency)]
            rps = statistics.median(cell.rps)
            ratio = rps / base if base else 0.0
            rows.append(
                [
                    name,
                    concurrency,
                    f"{rps:,.0f}",
                    f"{ratio:.2f}",
                    f"{statistics.median(cell.p50):.2f}",
                    f"{statistics.median(cell.p99):.2f}",
                    f"{cell.errors} of {cell.requests:,}",
                    f"{statistics.median(cell.connects):,.0f}",
                ]
            )
            if name.startswith("tether"):
                verdicts.append(f"{name} at {concurrency}: {ratio:.2f}")
                if ratio < 1.0:
                    missed.append(
                        f"{name} at concurrency {concurrency} ({ratio:.2f}"
                        + _spread(cell, cells[(BASELINE, concurrency)], quick)
                        + ")"
                    )

    mode = "quick mode: short, single-round, noisy" if quick else "full run"
    notes += [
        f"`python bench/web.py{' --quick' if quick else ''}` ({mode}): `GET {PATH}` served by"
        f" gunicorn (1 process, gthread, {THREADS} threads) from `examples/flask_city/`, PyMySQL"
        f" for every variant, load from {tool} with as many keep-alive connections as the"
        f" concurrency, {seconds} s per cell, {rounds} round(s) interleaved over the variants,"
        " medians. Errors = non-2xx responses + socket errors. Server connects = connections"
        " the server accepted during the cell. The load generator, gunicorn and MariaDB share"
        f" this machine's {os.cpu_count()} CPUs.",
        "DBUtils `PersistentDB` (one connection per thread, the classic recipe) pings its"
        " connection on every `connection()` call: one round trip per request before the"
        " query. tether checks a connection with one `poll()` of its socket and pings only"
        " after 1 s idle, so a request costs the query alone. A new connection per request"
        " pays a TCP connect, the handshake and the login every time; with PyMySQL >= 1.2"
        " most of a connect is building a TLS context (loading the system CA store), even"
        " with TLS off (see the connect cost table of `bench/run.py`).",
        "Target: tether >= 1.00 x PersistentDB at every concurrency. "
        + (
            "Met: " + "; ".join(verdicts) + "."
            if not missed
            else "Missed for " + "; ".join(missed) + ". All ratios: " + "; ".join(verdicts) + "."
        )
        + (
            " A quick run has one short round per cell; on a shared machine the same cell"
            " moves by tens of percent between runs, so only a full run can judge the target."
            if quick
            else ""
        ),
    ]

    chart_path: Path | None = None
    if output is not None or not quick:
        out_dir = output or HERE
        chart_path = out_dir / ("web-quick.png" if quick else "web.png")
        try:
            _chart(cells, concurrencies, list(served), chart_path)
            notes.append(f"![web]({chart_path.name})")
        except Exception as exc:  # a missing matplotlib must not lose the numbers
            notes.append(f"(no chart: {type(exc).__name__}: {exc})")
            chart_path = None
    return {
        "columns": columns,
        "rows": rows,
        "notes": notes,
        "chart": str(chart_path) if chart_path else None,
    }


def _spread(tether_cell: Cell, base_cell: Cell, quick: bool) -> str:
    """Whether a miss is within the round-to-round noise, from the rounds themselves."""
    if quick or len(tether_cell.rps) < 2:
        return ""
    if max(tether_cell.rps) >= min(base_cell.rps):
        return (
            f": within the spread of the rounds, {min(tether_cell.rps):,.0f}-"
            f"{max(tether_cell.rps):,.0f} req/s against {min(base_cell.rps):,.0f}-"
            f"{max(base_cell.rps):,.0f}"
        )
    return (
        f": slower in every round, best {max(tether_cell.rps):,.0f} req/s against a worst of"
        f" {min(base_cell.rps):,.0f}"
    )


def _load(wrk: str | None, port: int, concurrency: int, seconds: int) -> Measure:
    if wrk:
        return run_wrk(wrk, port, concurrency, seconds)
    return run_python_load(port, concurrency, seconds)


def _chart(
    cells: dict[tuple[str, int], Cell], concurrencies: list[int], names: list[str], path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name in names:
        ax.plot(
            concurrencies,
            [statistics.median(cells[(name, c)].rps) for c in concurrencies],
            marker="o",
            label=name,
        )
    ax.set_xlabel("concurrent HTTP connections (wrk)")
    ax.set_ylabel("requests/s")
    ax.set_xticks(concurrencies)
    ax.set_ylim(bottom=0)
    ax.set_title("Flask city lookup, gunicorn gthread x16, 1 process")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run")
    parser.add_argument("--output", type=Path, default=None, help="where the chart goes")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (quick 1, full 3)")
    parser.add_argument("--seconds", type=int, default=None, help="per cell (quick 2, full 5)")
    args = parser.parse_args(argv)
    result = run_web_bench(
        quick=args.quick, output=args.output, rounds=args.rounds, seconds=args.seconds
    )
    widths = [
        max(len(str(col)), *(len(str(row[i])) for row in result["rows"]))
        for i, col in enumerate(result["columns"])
    ]
    print()
    print("  ".join(str(c).ljust(w) for c, w in zip(result["columns"], widths, strict=True)))
    for row in result["rows"]:
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)))
    print()
    for note in result["notes"]:
        print(note)
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
