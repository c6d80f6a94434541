"""examples/django_city served by gunicorn (gthread, 16 threads; and with --preload, the
master using the pool before it forks) and by uvicorn (ASGI, the async view), on tether's
Django backend, against a private MariaDB through the fault proxy: sessions idle past
wait_timeout, all sessions killed under load, a restart, a per-user cap below the thread
count, a kill inside atomic(). No request fails where tether's rules allow a retry; a
transaction lost mid-way is a 503 carrying Django's OperationalError caused by
TransactionLost; the app never holds more sessions than the pool's bound."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("django")
pytest.importorskip("gunicorn")
pytest.importorskip("uvicorn")

from tether.testing import MariaDBServer

from ..integration.flaskapps.serve import Gunicorn, free_port, load, sample_while

pytestmark = [pytest.mark.slow, pytest.mark.faults]

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "examples" / "django_city"
CAP = 8  # max_user_connections: below the 16 threads
BOUND = 12  # the pool's max_size per process

SCHEMA = (
    "CREATE TABLE city (id INT PRIMARY KEY, name VARCHAR(64) UNIQUE)",
    "CREATE TABLE city_visit (city_id INT PRIMARY KEY, n INT NOT NULL,"
    " FOREIGN KEY (city_id) REFERENCES city (id))",
    "INSERT INTO city VALUES (1, 'london'), (2, 'paris'), (3, 'berlin')",
)


class Uvicorn(Gunicorn):
    """``uvicorn citysite.asgi:application`` (one process), with Gunicorn's HTTP helpers."""

    def start(self, timeout: float = 30.0) -> Uvicorn:
        self.port = free_port()
        args = [sys.executable, "-m", "uvicorn", "--app-dir", str(SITE), "--port"]
        args += [str(self.port), "--log-level", "warning", self.app]
        env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
        env.update(self.env)
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                args, stdout=log, stderr=log, env=env, cwd=ROOT, start_new_session=True
            )
        if not self._wait_ready(timeout):
            self.stop()
            raise RuntimeError(f"uvicorn did not start:\n{self.log_tail()}")
        return self


def serve(kind: str, dsn: str, driver: str) -> Gunicorn:
    env = {
        "DATABASE_URL": dsn,
        "CITY_DRIVER": driver,
        "CITY_POOL_SIZE": str(BOUND // 2 if kind == "preload" else BOUND),
        "CITY_POOL_TIMEOUT": "20",
        "PYTHONPATH": str(SITE),
    }
    if kind == "uvicorn":
        return Uvicorn("citysite.asgi:application", env=env)
    if kind == "preload":
        env["CITY_WARM"] = "1"
    return Gunicorn(
        "citysite.wsgi:application",
        env=env,
        workers=2 if kind == "preload" else 1,
        threads=16,
        preload=kind == "preload",
        extra_args=["--chdir", str(SITE)],
    )


def sessions(server: MariaDBServer) -> int:
    """The app user's sessions now (0 while the server is down for its restart)."""
    try:
        return server.connections_of()
    except Exception:
        return 0


def open_transactions(server: MariaDBServer) -> int:
    return int(server.execute_admin("SELECT COUNT(*) FROM information_schema.INNODB_TRX")[0][0])


def visit(server: Gunicorn, city: str, pause: float) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        conn.request("GET", f"/visit?name={city}&pause={pause}")
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("kind", "driver"),
    [("gthread", "mysqlclient"), ("preload", "pymysql"), ("uvicorn", "mysqlclient")],
)
def test_django_app_under_faults(
    mariadb_factory: Any, fault_proxy: Any, kind: str, driver: str
) -> None:
    server: MariaDBServer = mariadb_factory(options={"wait_timeout": 4}, max_user_connections=CAP)
    with contextlib.closing(server.admin()) as admin, admin.cursor() as cur:
        cur.execute(f"USE `{server.database}`")
        for statement in SCHEMA:
            cur.execute(statement)
    proxy = fault_proxy(server)
    path = "/acity?name=london" if kind == "uvicorn" else "/city?name=london"
    running = threading.Event()
    running.set()
    peaks: list[int] = []
    sampler = threading.Thread(
        target=lambda: peaks.extend(sample_while(running.is_set, lambda: sessions(server), 0.1))
    )
    app = serve(kind, server.dsn(host=proxy.host, port=proxy.port), driver)
    with app:
        sampler.start()
        try:
            failures: list[str] = []

            def phase(name: str, requests: int = 160, stop: threading.Event | None = None) -> None:
                before = proxy.accepted
                result = load(app, path, threads=16, requests=requests, seconds=60, stop=stop)
                failures.extend(f"{name}: {f}" for f in result.failures)
                if stop is None:
                    assert result.ok + len(result.failures) == requests, name
                if name != "warm":  # the fault cost the app its sessions: it opened new ones
                    assert proxy.accepted > before, name

            phase("warm")
            time.sleep(5)  # every pooled session is past wait_timeout
            phase("idle past wait_timeout")
            # All at once (one statement, the server's own loop): a replay must not land on a
            # session a slower, one-by-one KILL has yet to reach (a second loss is not
            # replayed, by tether's rules).
            # The load goes on until a second after the KILL, however slow the machine.
            killed = threading.Event()

            def kill_under_load() -> None:
                time.sleep(0.3)
                server.execute_admin(f"KILL CONNECTION USER {server.user}")
                time.sleep(1.0)
                killed.set()

            killer = threading.Thread(target=kill_under_load)
            killer.start()
            phase("KILL under load", 5000, stop=killed)
            killer.join()
            server.restart()
            phase("after a restart")
            # A kill inside atomic(): the transaction is lost, said so, nothing committed.
            results: list[tuple[int, Any]] = []
            cities = ("london", "paris", "berlin")
            visitors = [
                threading.Thread(target=lambda c=c: results.append(visit(app, c, 3.0)))
                for c in cities
            ]
            for t in visitors:
                t.start()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and open_transactions(server) < len(cities):
                time.sleep(0.05)
            server.kill_sessions()
            for t in visitors:
                t.join(60)
            assert len(results) == 3
            for status, body in results:
                assert status == 503, body
                assert body["error"] == "OperationalError" and body["cause"] == "TransactionLost"
            for city in cities:  # none of the lost ones committed
                assert visit(app, city, 0) == (200, {"n": 1})
            assert app.get("/admin/login/").status == 200
            assert failures == [], (failures[:3], app.log_tail(6000))
        finally:
            running.clear()
            sampler.join(10)
    assert peaks and max(peaks) <= min(CAP, BOUND)
