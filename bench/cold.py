"""Cold-cache cost of a request: what each way of serving it touches once the CPU caches have
been emptied, counted by valgrind's cache simulator (counts that do not depend on what else
the machine does; from run to run a total still moves by a few tens of lines).

Why: alone, in a tight loop, tether's check-out + give-back takes well under a microsecond;
in the A/B, between two requests whose server work ran on the same core, it costs several
times that. Between two requests the caches have been refilled by the server and the kernel,
so what a request costs there follows how many distinct code and data cache lines it touches,
not how many instructions it runs. This counts both, per request, after an 8 MiB copy has
pushed everything out of a simulated 1 MiB last-level cache (a core's L2 here):

    python bench/cold.py --driver mysqlclient   # needs valgrind (Debian's valgrind); ~5 min

`bench/run.py` runs it for both drivers in a full run and puts the tables in RESULTS.md.

Each variant runs in its own process under valgrind twice (LOW and HIGH requests); the
difference over the extra requests, less that of a run doing only the copies, is what one
request costs. The same difference taken per function (``callgrind_annotate``, which comes
with valgrind) says where a tether variant's lines beyond raw's are: in tether's own compiled
code, in CPython's, in the C library's or the driver's.

Garbage collection is off in those processes (its passes would land in one count and not the
other), and so are tether's background threads (maintenance, watchdog) and its socket check
after 1 ms idle (valgrind runs some 50x slower; in the timed runs a connection is reused
within microseconds): what is counted is the request itself. Every process runs with the
same hash seed (PYTHONHASHSEED=0): with a random seed each, where the names a request looks
up sit in their dicts, and so the count, moves by some 30 lines.

One more thing moves a count, by up to some 60 lines: CPython's type attribute cache. A
look-up of a name on a class (a method, ``__enter__``, an instance attribute's check for a
descriptor) lands in a slot chosen from the class's version tag and the name's address, and
two of a request's look-ups that land in the same slot evict each other on every request,
each miss then walking the class's MRO. Which pairs collide changes with any change of
code, import order or memory layout: in the timed runs, from process to process. So each
variant runs under LAYOUTS different layouts (its processes first give tags to 0, 1, 2, ...
classes of their own, which moves every later tag) and the table shows the run with the
median total: the typical case, not a lucky or unlucky one.
"""

from __future__ import annotations

import os

if os.environ.get("TETHER_COLD_LAYOUT"):
    # A measured process (child()) under one of the LAYOUTS (see the docstring): before
    # anything the request uses is imported, that many classes of its own get their tags.
    for _i in range(int(os.environ["TETHER_COLD_LAYOUT"])):
        getattr(type(f"_Layout{_i}", (), {}), "tag", None)

import argparse
import gc
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import QUERY, ROWS, bench_server, connect_kwargs, driver_module

import tether
from tether import pool as pool_module

LOW, HIGH = 20, 140
LAYOUTS = 3  # type attribute cache layouts per variant (see the docstring); the median counts
EVICT_BYTES = 8 << 20
LAST_LEVEL = "--LL=1048576,16,64"
VARIANTS = (
    "caches emptied only",
    "raw held connection",
    "tether Pool",
    "tether ThreadLocalPool",
    "tether Pool, pure Python",
)


def child(variant: str, driver: str, requests: int) -> None:
    """The measured process: ``requests`` times, empty the caches, then serve one request."""
    gc.disable()
    target = json.loads(os.environ["TETHER_COLD_TARGET"])  # not on the command line
    kwargs, url = target["kwargs"], target["url"]
    buffer = bytearray(EVICT_BYTES)
    keys = [1 + (i * 7919) % ROWS for i in range(requests + 50)]

    def query(conn: object, key: int) -> None:
        cur = conn.cursor()  # type: ignore[attr-defined]
        cur.execute(QUERY, (key,))
        cur.fetchone()
        cur.close()

    if variant == "caches emptied only":

        def request(key: int) -> None:
            bytes(buffer)

    elif variant == "raw held connection":
        raw = driver_module(driver).connect(**kwargs)

        def request(key: int) -> None:
            bytes(buffer)
            query(raw, key)

    else:
        # A connection idle 1 ms or longer gets its socket polled before reuse; under
        # valgrind every one would be. The timed runs reuse connections within microseconds.
        pool_module._TRUSTED = float("inf")
        pool_module._COMPILED.update(pool_module._bind_speedups())
        pool_module.use_speedups("pure Python" not in variant)
        cls = tether.ThreadLocalPool if "ThreadLocalPool" in variant else tether.Pool
        pool = cls(
            url,
            driver=driver,
            max_size=4,
            maintenance_interval=3600,
            watchdog=None,
            ping_after=3600,
            connect_args={"charset": "utf8mb4"},
        )
        checkout = pool.connection

        def request(key: int) -> None:
            bytes(buffer)
            with checkout() as conn:
                query(conn, key)

    for key in keys[:50]:  # warm: connects, imports, first-call caches
        request(key)
    for key in keys[50 : 50 + requests]:
        request(key)


def measure(
    variant: str, driver: str, requests: int, target: str, layout: int = 0
) -> tuple[dict[str, int], dict[str, list[int]]]:
    """One process under callgrind with the cache simulator, in type cache layout
    ``layout``: its event totals, and its counts per function."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        cmd = [
            "valgrind",
            "--tool=callgrind",
            "--cache-sim=yes",
            LAST_LEVEL,
            f"--callgrind-out-file={out}",
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            variant,
            driver,
            str(requests),
        ]
        # One hash seed for every process: with a random one each, the layout of the dicts
        # a request looks names up in moves a count by some 30 lines from run to run.
        env = dict(
            os.environ,
            TETHER_COLD_TARGET=target,
            PYTHONHASHSEED="0",
            TETHER_COLD_LAYOUT=str(layout),
        )
        done = subprocess.run(
            cmd, check=False, capture_output=True, text=True, timeout=900, env=env
        )
        if done.returncode != 0:
            raise RuntimeError(f"{variant}: valgrind failed:\n{done.stderr[-2000:]}")
        events: list[str] = []
        totals: dict[str, int] | None = None
        for line in out.read_text().splitlines():
            if line.startswith("events:"):
                events = line.split()[1:]
            elif line.startswith(("summary:", "totals:")):
                totals = dict(zip(events, map(int, line.split()[1:]), strict=False))
                break
        if totals is None:
            raise RuntimeError(f"{variant}: no totals in callgrind's output")
        return totals, per_function(out)


# callgrind_annotate's function table: four counts ("1,234 (0.5%)", "0" or "."), then
# "file:function [object]"; code inlined from a header comes without its object.
_COUNT = r"(?:([\d,]+)(?: \([^)]*\))?|(\.))"
_ROW = re.compile(r"^\s*" + r"\s+".join([_COUNT] * 4) + r"\s+(\S.*?)\s*$")


def parse_functions(text: str) -> dict[str, list[int]]:
    """``callgrind_annotate --show=Ir,ILmr,DLmr,DLmw --inclusive=no`` output as
    ``"function (object)"`` -> [Ir, ILmr, DLmr, DLmw]. Rows of the same function from
    several source files (headers inlined into it) are added up; a row without its object
    takes the one its function's other rows name."""
    rows: list[tuple[str, str | None, list[int]]] = []
    started = False
    for line in text.splitlines():
        if line.rstrip().endswith("file:function"):
            started = True
            continue
        m = _ROW.match(line) if started else None
        if m is None:
            continue
        groups = m.groups()
        counts = [int(groups[i].replace(",", "")) if groups[i] else 0 for i in range(0, 8, 2)]
        where = groups[8]
        obj = None
        if where.endswith("]") and " [" in where:
            where, obj = where[:-1].rsplit(" [", 1)
            obj = Path(obj).name.split(".")[0]  # libpython3, _speedups, libc, ...
        name = re.sub(r"'\d+$", "", where.rsplit(":", 1)[-1])  # 'N: a recursion level
        rows.append((name, obj, counts))
    objects: dict[str, set[str]] = defaultdict(set)
    for name, obj, _ in rows:
        if obj:
            objects[name].add(obj)
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for name, named, counts in rows:
        seen = objects.get(name, set())
        obj = named or (next(iter(seen)) if len(seen) == 1 else "?")
        key = f"{name} ({obj})"
        out[key] = [a + b for a, b in zip(out[key], counts, strict=True)]
    return dict(out)


def per_function(path: Path) -> dict[str, list[int]]:
    """A callgrind output's counts per function (``parse_functions``); empty when
    callgrind_annotate is missing or fails (the totals do not need it)."""
    if shutil.which("callgrind_annotate") is None:
        return {}
    done = subprocess.run(
        [
            "callgrind_annotate",
            "--show=Ir,ILmr,DLmr,DLmw",
            "--threshold=100",
            "--inclusive=no",
            "--auto=no",
            str(path),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return parse_functions(done.stdout) if done.returncode == 0 else {}


def available() -> str | None:
    """Why the cold-cache counts cannot be taken here, or None."""
    if shutil.which("valgrind") is None:
        return "valgrind is not installed (Debian package valgrind)"
    return None


@dataclass
class Cold:
    """One driver's counts per request: ``rows`` per variant (instructions ``ir``, lines of
    ``code`` and ``data``, less those of emptying the caches alone, of the run with the
    median total; ``low`` and ``high``: the least and most total lines over the LAYOUTS,
    when measured); ``functions`` per
    tether variant, the lines it touches beyond raw's, per function, most first:
    (function, code, data)."""

    rows: dict[str, dict[str, float]]
    functions: dict[str, list[tuple[str, float, float]]] = field(default_factory=dict)


def median_layout(totals: dict[int, float]) -> int:
    """The layout whose total is the median of ``totals`` (layout -> lines per request)."""
    ranked = sorted(totals, key=lambda k: (totals[k], k))
    return ranked[(len(ranked) - 1) // 2]


def run_cold(server: Any, driver: str) -> Cold:
    """The counts per request of every variant: of its run with the median total over the
    LAYOUTS (the emptying alone under one: it looks nothing up). The processes run two at a
    time (valgrind runs one thread at a time; the counts do not depend on what else runs)."""
    target = json.dumps({"kwargs": connect_kwargs(server, driver), "url": server.dsn()})
    empty = VARIANTS[0]
    jobs = [
        (v, n, k)
        for v in VARIANTS
        for k in (range(LAYOUTS) if v != empty else [0])
        for n in (LOW, HIGH)
    ]
    with ThreadPoolExecutor(max_workers=max(1, min(2, os.cpu_count() or 1))) as ex:
        futures = {job: ex.submit(measure, job[0], driver, job[1], target, job[2]) for job in jobs}
        got = {job: f.result() for job, f in futures.items()}

    def per(variant: str, k: int, event: str) -> float:
        high, low = got[(variant, HIGH, k)][0], got[(variant, LOW, k)][0]
        return (high[event] - low[event]) / (HIGH - LOW)

    def counts(variant: str, k: int) -> dict[str, float]:
        return {
            "ir": per(variant, k, "Ir") - per(empty, 0, "Ir"),
            "code": per(variant, k, "ILmr") - per(empty, 0, "ILmr"),
            "data": sum(per(variant, k, e) - per(empty, 0, e) for e in ("DLmr", "DLmw")),
        }

    rows: dict[str, dict[str, float]] = {}
    picked: dict[tuple[str, int], tuple[dict[str, int], dict[str, list[int]]]] = {}
    for variant in VARIANTS[1:]:
        each = {k: counts(variant, k) for k in range(LAYOUTS)}
        totals = {k: c["code"] + c["data"] for k, c in each.items()}
        k = median_layout(totals)
        rows[variant] = {**each[k], "low": min(totals.values()), "high": max(totals.values())}
        for n in (LOW, HIGH):
            picked[(variant, n)] = got[(variant, n, k)]
    return Cold(rows, {v: over_raw(picked, v) for v in VARIANTS if v.startswith("tether")})


def over_raw(
    got: dict[tuple[str, int], tuple[dict[str, int], dict[str, list[int]]]], variant: str
) -> list[tuple[str, float, float]]:
    """Per function, the lines of code and data one request of ``variant`` touches beyond
    one of the raw held connection (each per request: HIGH less LOW), most first; empty
    without per-function counts."""

    def per_request(v: str) -> dict[str, list[float]]:
        low, high = got[(v, LOW)][1], got[(v, HIGH)][1]
        return {
            k: [
                (high.get(k, [0] * 4)[i] - low.get(k, [0] * 4)[i]) / (HIGH - LOW) for i in (1, 2, 3)
            ]
            for k in low.keys() | high.keys()
        }

    ours, raw = per_request(variant), per_request("raw held connection")
    if not ours or not raw:
        return []
    out = []
    for k in ours.keys() | raw.keys():
        a, b = ours.get(k, [0.0] * 3), raw.get(k, [0.0] * 3)
        out.append((k, a[0] - b[0], a[1] + a[2] - b[1] - b[2]))
    out.sort(key=lambda r: -(r[1] + r[2]))
    return out


def table_lines(driver: str, rows: dict[str, dict[str, float]]) -> list[str]:
    """A Markdown table of ``run_cold``'s rows, with each variant's lines over raw's."""
    raw = rows.get("raw held connection")
    out = [
        f"**{driver}**",
        "",
        "| variant | instructions | cache lines: code | data | total | over raw"
        " | total, least-most over the layouts |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for variant, row in rows.items():
        total = row["code"] + row["data"]
        over = ""
        if raw is not None and variant != "raw held connection":
            more = total - raw["code"] - raw["data"]
            over = f"{more:+,.0f} ({more / (raw['code'] + raw['data']):+.0%})"
        spread = f"{row['low']:,.0f}-{row['high']:,.0f}" if "low" in row else ""
        out.append(
            f"| {variant} | {row['ir']:,.0f} | {row['code']:,.0f} | {row['data']:,.0f}"
            f" | {total:,.0f} | {over} | {spread} |"
        )
    return [*out, ""]


def functions_lines(
    driver: str, cold: Cold, variant: str = "tether Pool", top: int = 12
) -> list[str]:
    """Where ``variant``'s lines beyond raw's are: the functions with the most, and the sum
    per object (tether's compiled module, CPython, the C library, the driver). A function's
    lines are those it is the first to touch after the caches were emptied, so code that
    raw and tether share is counted where it first runs."""
    rows = cold.functions.get(variant, [])
    if not rows:
        return []
    by_object: dict[str, float] = defaultdict(float)
    for name, code, data in rows:
        by_object[name.rsplit(" (", 1)[-1].rstrip(")")] += code + data
    total = sum(code + data for _, code, data in rows)
    shares = ", ".join(
        f"{obj} {lines:+,.0f}"
        for obj, lines in sorted(by_object.items(), key=lambda x: -x[1])
        if abs(lines) >= 1
    )
    out = [
        f"*{variant}, {driver}: where its {total:+,.0f} lines are.* By object: {shares}.",
        "",
        "| function (object) | code lines | data lines | over raw |",
        "|---|---:|---:|---:|",
    ]
    for name, code, data in rows[:top]:
        out.append(f"| `{name}` | {code:+,.1f} | {data:+,.1f} | {code + data:+,.1f} |")
    return [*out, ""]


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--driver", choices=("pymysql", "mysqlclient"), default="mysqlclient")
    parser.add_argument("--child", nargs=3, metavar="ARG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        variant, driver, requests = args.child
        child(variant, driver, int(requests))
        return 0
    why = available()
    if why is not None:
        print(f"cold.py: {why}", file=sys.stderr)
        return 2
    os.environ.pop("TETHER_NO_SPEEDUPS", None)
    with bench_server() as server:
        counts = run_cold(server, args.driver)
    print("\n".join(table_lines(args.driver, counts.rows)))
    for variant in counts.functions:
        print("\n".join(functions_lines(args.driver, counts, variant)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
