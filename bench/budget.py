"""A fleet-wide budget beside a static split: 8 processes under skewed load, one cap.

    python bench/budget.py                   # private MariaDB (account capped at 16) + Redis
    python bench/budget.py --seconds 6       # per variant (two phases of half each)
    python bench/budget.py --write           # also put the section into bench/RESULTS.md

Each process runs check-outs that hold their connection 10 ms (a query, then the
application's own work). The load is skewed and moves: for the first half, processes 0-1 are
busy (8 threads, no pause) and the other six light (1 thread, 50 ms between requests); for the
second half, processes 4-5 are the busy ones. Two ways to keep 8 processes under a cap of 16:

- static split: ``max_size=2`` in every process (16 in all);
- budget: ``budget="redis://..."`` in every process (cap read from the server: 16).

Reported: requests/s of the fleet, the p99 wait for a connection, the most sessions the
account had open (sampled every 20 ms), connects the server refused for its cap, and the
Redis script calls per second the budget cost (``INFO commandstats``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))

CAP = 16
PROCESSES = 8
HOLD = 0.010
LIGHT_PAUSE = 0.050
MARK = "<!-- budget benchmark -->"


def worker(spec: dict[str, Any]) -> None:
    """One process of the fleet; prints its figures as one JSON line."""
    import tether

    options: dict[str, Any] = {"max_size": spec["max_size"], "timeout": 30.0, "watchdog": None}
    if spec.get("budget"):
        options.update(budget=spec["budget"], maintenance_interval=0.25, budget_ttl=3.0)
    pool = tether.Pool(spec["dsn"], driver="pymysql", **options)
    start, half = spec["start"], spec["seconds"] / 2
    busy_phases = [phase for phase in (0, 1) if spec["index"] in spec["busy"][phase]]
    waits: list[float] = []
    served = [0]
    errors: dict[str, int] = {}
    lock = threading.Lock()

    def run(thread: int) -> None:
        while True:
            now = time.time() - start
            if now >= 2 * half:
                return
            phase = 0 if now < half else 1
            busy = phase in busy_phases
            if not busy and thread > 0:
                time.sleep(min(0.05, max(0.0, half - now if phase == 0 else 0.05)))
                continue
            asked = time.perf_counter()
            try:
                with pool.connection() as conn:
                    waited = time.perf_counter() - asked
                    cur = conn.cursor()
                    cur.execute("SELECT 1")
                    cur.fetchall()
                    cur.close()
                    time.sleep(HOLD)
            except Exception as exc:
                code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
                with lock:
                    errors[str(code)] = errors.get(str(code), 0) + 1
                continue
            with lock:
                waits.append(waited)
                served[0] += 1
            if not busy:
                time.sleep(LIGHT_PAUSE)

    time.sleep(max(0.0, start - time.time()))
    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = pool.stats()
    gate = pool._connector.gate
    refused = gate.refused if gate is not None else 0
    pool.close()
    print(
        json.dumps(
            {
                "served": served[0],
                "waits": waits,
                "errors": errors,
                "server_refusals": stats.counters.capacity_errors - refused,
            }
        ),
        flush=True,
    )


def run_variant(server: Any, redis: Any, name: str, seconds: float) -> dict[str, Any]:
    start = time.time() + 4.0  # the processes start and import meanwhile
    busy = [[0, 1], [4, 5]]
    procs = []
    for index in range(PROCESSES):
        spec = {
            "dsn": server.dsn(),
            "index": index,
            "busy": busy,
            "start": start,
            "seconds": seconds,
            "max_size": 2 if name == "static" else CAP,
            "budget": redis.url if name == "budget" else None,
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, __file__, "--worker", json.dumps(spec)],
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    peak, samples = 0, 0
    admin = server.admin()
    calls_before = _script_calls(redis)
    try:
        while any(p.poll() is None for p in procs) and time.time() < start + seconds + 60:
            with admin.cursor() as cur:
                cur.execute(
                    "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = %s",
                    (server.user,),
                )
                if time.time() >= start:
                    peak = max(peak, int(cur.fetchone()[0]))
                    samples += 1
            time.sleep(0.02)
    finally:
        admin.close()
    calls = _script_calls(redis) - calls_before
    results = [json.loads(p.communicate(timeout=60)[0].strip().splitlines()[-1]) for p in procs]
    waits = sorted(w for r in results for w in r["waits"])
    served = sum(r["served"] for r in results)
    return {
        "variant": name,
        "rps": served / seconds,
        "p99_ms": 1000 * waits[int(len(waits) * 0.99)] if waits else 0.0,
        "peak": peak,
        "samples": samples,
        "server_refusals": sum(r["server_refusals"] for r in results),
        "errors": sum(sum(r["errors"].values()) for r in results),
        "script_calls_per_s": calls / seconds if name == "budget" else 0.0,
        "per_process": [r["served"] for r in results],
    }


def _script_calls(redis: Any) -> int:
    import redis as redis_py

    client = redis_py.Redis.from_url(redis.url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return sum(
        int(v["calls"]) for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval")
    )


def section(rows: list[dict[str, Any]], seconds: float, command: str) -> str:
    lines = [
        MARK,
        "## A fleet-wide budget beside a static split",
        "",
        f"Produced by `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}."
        f" {PROCESSES} processes (8 threads each) share one account capped at {CAP}"
        " (`MAX_USER_CONNECTIONS`) on a private MariaDB; a check-out holds its connection"
        f" {HOLD * 1000:.0f} ms. Skewed load that moves: two processes busy, six light (one"
        f" request per {LIGHT_PAUSE * 1000:.0f} ms), the busy pair changing half-way through"
        f" {seconds:g} s. Static split: `max_size=2` everywhere; budget: `budget=` a private"
        " Redis, cap read from the server.",
        "",
        "| variant | requests/s | p99 wait (ms) | most sessions open (cap 16) | refused by the"
        " server | errors | Redis script calls/s | requests per process |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['rps']:.0f} | {r['p99_ms']:.1f} | {r['peak']} |"
            f" {r['server_refusals']} | {r['errors']} | {r['script_calls_per_s']:.0f} |"
            f" {' '.join(str(n) for n in r['per_process'])} |"
        )
    static, budget = rows
    lines += [
        "",
        f"The budget served {budget['rps'] / max(1.0, static['rps']):.2f}x the static split's"
        f" requests with the same cap, and the account never had more than {budget['peak']}"
        f" sessions open ({budget['samples']} samples). The Redis work is per connect and"
        " close and per renewal (4 per second per process here), never per check-out.",
        "",
        f"p99 wait: {budget['p99_ms']:.0f} ms with the budget, {static['p99_ms']:.0f} ms with the"
        " static split. A check-out that needs a lease from another process waits for it to"
        " come free (a give-back over the share, an idle connection closed at the holder's next"
        " maintenance round) and for its own pool's next connect attempt (a backoff step of 50"
        " ms, doubling): the budget lets a busy process grow, but a growth is not immediate. A"
        " static split's waiters wait only for their own process's give-backs, with at most 2"
        " connections each.",
        "",
    ]
    return "\n".join(lines)


def write_section(text: str, path: Path) -> None:
    """Put the section at the end of RESULTS.md, replacing an earlier one."""
    content = path.read_text() if path.exists() else ""
    if MARK in content:
        content = content[: content.index(MARK)].rstrip() + "\n\n"
    path.write_text(content + text)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per variant")
    parser.add_argument("--write", action="store_true", help="add the section to RESULTS.md")
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return ""
    from tether.testing import MariaDBServer, RedisServer

    with (
        MariaDBServer(name="tether-bench-budget", max_user_connections=CAP) as server,
        RedisServer() as redis,
    ):
        rows = [run_variant(server, redis, name, args.seconds) for name in ("static", "budget")]
    command = "python bench/budget.py" + (
        f" --seconds {args.seconds:g}" if args.seconds != 10 else ""
    )
    text = section(rows, args.seconds, command)
    print(text)
    if args.write:
        write_section(text, args.results)
    return text


if __name__ == "__main__":
    main()
