"""One process of a fleet sharing a budget: ``python -m tests.budget.worker '<json>'``.

Its threads run short check-outs (a ``SELECT 1`` and a hold) during the phases it is busy in
(seconds from a common start time), and print one JSON line at the end: check-outs served per
phase, errors by error number, the pool's stats. Bounded in time: it stops at ``end``.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from typing import Any

import tether


def main(spec: dict[str, Any]) -> None:
    logging.basicConfig(
        level=logging.WARNING, format="%(created).3f %(process)d %(message)s", stream=sys.stderr
    )
    pool_class = tether.ThreadLocalPool if spec.get("thread_local") else tether.Pool
    pool = pool_class(
        spec["dsn"],
        driver=spec.get("driver", "pymysql"),
        budget=spec["budget"],
        max_size=spec.get("max_size", 10),
        timeout=spec.get("timeout", 30.0),
        budget_ttl=spec.get("ttl", 3.0),
        maintenance_interval=spec.get("interval", 0.25),
        watchdog=None,
        name=spec.get("name"),
        **({"budget_cap": spec["cap"]} if spec.get("cap") else {}),
    )
    start = spec["start"]  # wall clock, shared by the fleet
    phases = spec["phases"]  # [[from, to], ...] seconds after start
    end = start + spec["end"]
    served = [0] * len(phases)
    errors: dict[str, int] = {}
    waits: list[float] = []
    lock = threading.Lock()

    def phase_now() -> int | None:
        t = time.time() - start
        for i, (begin, finish) in enumerate(phases):
            if begin <= t < finish:
                return i
        return None

    def work() -> None:
        while time.time() < end:
            phase = phase_now()
            if phase is None:
                time.sleep(0.02)
                continue
            asked = time.monotonic()
            try:
                with pool.connection() as conn:
                    waited = time.monotonic() - asked
                    cur = conn.cursor()
                    cur.execute("SELECT 1")
                    cur.fetchall()
                    cur.close()
                    time.sleep(spec.get("hold", 0.01))
                with lock:
                    served[phase] += 1
                    waits.append(waited)
            except Exception as exc:
                code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
                name = f"{type(exc).__name__}:{code}"
                with lock:
                    errors[name] = errors.get(name, 0) + 1
                time.sleep(0.05)

    time.sleep(max(0.0, start - time.time()))
    threads = [threading.Thread(target=work) for _ in range(spec.get("threads", 4))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats = pool.stats()
    gate = pool._connector.gate
    refused = gate.refused if gate is not None else 0
    pool.close()
    waits.sort()
    p99 = waits[int(len(waits) * 0.99)] if waits else 0.0
    print(
        json.dumps(
            {
                "served": served,
                "errors": errors,
                "p99_wait": p99,
                # Connects the server itself refused for its cap (1226, 1040).
                "server_refusals": stats.counters.capacity_errors - refused,
                "budget_refusals": refused,
                "closed_by": stats.closed_by_reason,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
