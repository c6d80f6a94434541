"""How a fleet-wide budget scales: many processes on one private Redis, connects simulated.

    python bench/budget_scale.py                      # 100 processes, cap 50, 20 s
    python bench/budget_scale.py --processes 200 --cap 80 --seconds 30

Each process is a real ``tether.Pool`` with a budget on a private ``redis-server``, over the
test suite's fake driver (a connect takes 2 ms, no server: what is measured is the budget,
not MariaDB). Processes are forked from this one. The load moves: the processes are split in
four groups, and each group in turn is busy (2 threads, check-outs holding 20 ms) for a quarter
of the run while the others are idle, so leases must move from group to group. Reported:

- Redis script calls per second (``INFO commandstats``) and per process, and Redis's own
  time per call: what the budget costs Redis;
- how long after a switch of the busy group the new group holds 80% of the cap: the time for
  freed leases (idle connections closed elsewhere) to reach the waiters;
- the wait for a connection (p50, p99) of the busy processes, and that the fleet never held
  more leases than the cap.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

GROUPS = 4
HOLD = 0.020


def child(index: int, url: str, args: argparse.Namespace, start: float, out: Path) -> None:
    from tests.unit.fakedriver import FakeDriver

    import tether

    fake = FakeDriver()
    fake.connect_delay = 0.002
    pool = tether.Pool(
        "mysql://app:pw@127.0.0.1:3306/app",
        driver=fake,
        budget=url,
        budget_cap=args.cap,
        max_size=4,
        timeout=60.0,
        watchdog=None,
        maintenance_interval=args.interval,
        budget_ttl=max(10.0, 3 * args.interval),
        name=f"p{index}",
    )
    group = index % GROUPS
    window = args.seconds / GROUPS
    waits: list[float] = []
    served = [0]
    lock = threading.Lock()

    def work() -> None:
        while True:
            now = time.time() - start
            if now >= args.seconds:
                return
            if int(now // window) != group:
                time.sleep(0.05)
                continue
            asked = time.perf_counter()
            with pool.connection() as conn:
                waited = time.perf_counter() - asked
                conn.cursor().execute("SELECT 1")
                time.sleep(HOLD)
            with lock:
                waits.append(waited)
                served[0] += 1

    time.sleep(max(0.0, start - time.time()))
    threads = [threading.Thread(target=work) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    gate = pool._connector.gate
    result = {
        "index": index,
        "group": group,
        "served": served[0],
        "waits": waits,
        "connects": fake.connects,
        "refused": gate.refused if gate is not None else 0,
    }
    pool.close()
    out.write_text(json.dumps(result))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=100)
    parser.add_argument("--cap", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--interval", type=float, default=1.0, help="maintenance_interval")
    args = parser.parse_args(argv)

    import redis as redis_py

    from tether.budget import RedisStore
    from tether.testing import RedisServer

    with RedisServer() as server, tempfile.TemporaryDirectory() as tmp:
        client = redis_py.Redis.from_url(server.url)
        start = time.time() + 3.0 + args.processes * 0.02
        pids = []
        for index in range(args.processes):
            pid = os.fork()
            if pid == 0:
                try:
                    child(index, server.url, args, start, Path(tmp) / f"{index}.json")
                finally:
                    os._exit(0)
            pids.append(pid)
        store = RedisStore(server.url, "app@127.0.0.1:3306")
        time.sleep(max(0.0, start - time.time()))
        before = client.info("commandstats")
        samples: list[tuple[float, dict[int, int], int]] = []
        while time.time() < start + args.seconds:
            status = store.status()
            by_group = {g: 0 for g in range(GROUPS)}
            for holder in status.holders:
                pool = str(holder.info.get("pool", "p0"))
                by_group[int(pool[1:]) % GROUPS] += holder.held
            samples.append((time.time() - start, by_group, status.total))
            time.sleep(0.1)
        after = client.info("commandstats")
        for pid in pids:
            os.waitpid(pid, 0)
        results = [json.loads(p.read_text()) for p in sorted(Path(tmp).glob("*.json"))]
        client.close()

    def calls(stats: dict[str, Any]) -> tuple[int, float]:
        entry = stats.get("cmdstat_evalsha", {"calls": 0, "usec": 0})
        return int(entry["calls"]), float(entry["usec"])

    (c0, u0), (c1, u1) = calls(before), calls(after)
    ops = (c1 - c0) / args.seconds
    usec_per_call = (u1 - u0) / max(1, c1 - c0)
    window = args.seconds / GROUPS
    follow = []
    for switch in range(1, GROUPS):
        at = switch * window
        reached = [t for t, by, _ in samples if t >= at and by[switch] >= 0.8 * args.cap]
        if reached:
            follow.append(reached[0] - at)
    waits = sorted(w for r in results for w in r["waits"])
    summary = {
        "processes": args.processes,
        "cap": args.cap,
        "seconds": args.seconds,
        "interval": args.interval,
        "finished": len(results),
        "script_calls_per_s": round(ops),
        "per_process_per_s": round(ops / args.processes, 2),
        "redis_usec_per_call": round(usec_per_call, 1),
        "redis_cpu_share": round(ops * usec_per_call / 1e6, 4),
        "follow_s": [round(f, 2) for f in follow],
        "max_total": max(total for _, _, total in samples),
        "wait_p50_ms": round(1000 * waits[len(waits) // 2], 1) if waits else None,
        "wait_p99_ms": round(1000 * waits[int(len(waits) * 0.99)], 1) if waits else None,
        "served": sum(r["served"] for r in results),
        "connects": sum(r["connects"] for r in results),
    }
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
