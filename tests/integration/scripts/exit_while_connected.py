"""A script that ends while tether holds, leaks or waits for connections.

Run by tests/integration/test_shutdown.py in a subprocess, which times how long the process
takes to exit after it prints ``ready``. ``DATABASE_URL`` names the server, ``TETHER_DRIVER``
the driver, ``TETHER_FLAVOUR`` the pool class ("Pool" or "ThreadLocalPool"); the first
argument names the scenario.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

import tether


def say(word: str) -> None:
    print(word, flush=True)


def one(conn: Any, sql: str) -> Any:
    cur = conn.cursor()
    cur.execute(sql)
    row = cur.fetchone()
    cur.close()
    return row[0] if row else None


def wait_for(condition: Any, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError("the scenario did not get ready")
        time.sleep(0.01)


def main(scenario: str) -> None:
    flavour = getattr(tether, os.environ.get("TETHER_FLAVOUR", "Pool"))
    pool = flavour(driver=os.environ["TETHER_DRIVER"], max_size=2, timeout=60)

    if scenario == "raise-holding":
        conn = pool.connection()
        one(conn, "SELECT 1")
        say("ready")
        raise RuntimeError("the script failed while holding a connection")

    if scenario == "raise-in-transaction":
        conn = pool.connection()
        conn.begin()
        conn.cursor().execute("INSERT INTO exits VALUES (1)")
        say("ready")
        raise RuntimeError("the script failed inside a transaction")

    if scenario == "raise-in-with":
        with pool.connection() as conn:
            one(conn, "SELECT 1")
            say("ready")
            raise RuntimeError("the script failed inside the with block")

    if scenario == "leak":
        leaked = [pool.connection(), pool.connection()]
        for conn in leaked:
            one(conn, "SELECT 1")
        say("ready")
        return  # the end of the script, the connections never given back

    if scenario == "leak-and-drop":
        conn = pool.connection()
        one(conn, "SELECT 1")
        del conn  # garbage: reclaimed by the pool, or not yet, at exit
        say("ready")
        return

    if scenario == "daemon-waits":
        held = [pool.connection(), pool.connection()]

        def waiter() -> None:
            pool.connection(timeout=60)

        threading.Thread(target=waiter, daemon=True, name="waiter").start()
        wait_for(lambda: pool.stats().waiting == 1)
        say("ready")
        del held
        sys.exit(0)

    if scenario == "daemon-waits-main-raises":
        held = [pool.connection(), pool.connection()]
        threading.Thread(target=lambda: pool.connection(timeout=60), daemon=True).start()
        wait_for(lambda: pool.stats().waiting == 1)
        say("ready")
        raise RuntimeError(f"the script failed while a thread waited ({len(held)} held)")

    if scenario == "daemon-queries":
        started = threading.Event()

        def query() -> None:
            with pool.connection() as conn:
                started.set()
                one(conn, "SELECT SLEEP(60)")

        threading.Thread(target=query, daemon=True).start()
        started.wait(10)
        time.sleep(0.2)
        say("ready")
        raise SystemExit(3)

    if scenario == "main-waits":
        # Another thread holds the only connections; the main thread waits for one until the
        # test interrupts it (SIGINT, as Ctrl-C).
        held = [pool.connection(), pool.connection()]
        say("ready")
        pool.connection(timeout=60)
        raise AssertionError(f"got a connection while {len(held)} were held")

    if scenario == "main-queries":
        conn = pool.connection()
        say("ready")
        one(conn, "SELECT SLEEP(60)")
        raise AssertionError("the query was not interrupted")

    if scenario == "idle-on-a-silent-server":
        # Idle connections (and maintenance) when the network goes silent: the test
        # blackholes the server, then ends the script by closing its stdin.
        conns = [pool.connection(), pool.connection()]
        for conn in conns:
            one(conn, "SELECT 1")
            conn.close()
        say("ready")
        sys.stdin.read()
        return

    if scenario == "holding-on-a-silent-server":
        conn = pool.connection()
        one(conn, "SELECT 1")
        say("ready")
        sys.stdin.read()
        raise RuntimeError("the script failed holding a connection to a silent server")

    if scenario == "min-size":
        closing = flavour(driver=os.environ["TETHER_DRIVER"], min_size=2, max_size=4)
        wait_for(lambda: closing.stats().idle == 2)
        say("ready")
        return

    raise SystemExit(f"unknown scenario {scenario!r}")


if __name__ == "__main__":
    main(sys.argv[1])
