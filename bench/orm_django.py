"""The city lookup as a Django view under gunicorn (gthread, 16 threads), four ways:

    python bench/orm_django.py                 # ~2 minutes; prints the table
    python bench/orm_django.py --write         # and puts it in bench/RESULTS.md

``GET /city?name=london`` from ``examples/django_city/`` (the ORM, mysqlclient) on a throwaway
MariaDB, served by tether's backend (``tether.contrib.django``, ``CONN_MAX_AGE=0``: a check-out
and a give-back per request) beside Django's own MySQL backend with ``CONN_MAX_AGE=0`` (a new
connection per request), Django's own backend with persistent connections
(``CONN_MAX_AGE=60``) and ``CONN_HEALTH_CHECKS=True``, and django-db-connection-pool
(SQLAlchemy's ``QueuePool`` under Django) when it is installed; tether's backend with
``CONN_MAX_AGE=60`` too, for comparison. ``wrk`` with 16 connections
drives each for a few seconds, interleaved over the variants, repeated; figures are medians.
``bench/run.py`` runs it after its web benchmark (:func:`section`).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib.util
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SITE = ROOT / "examples" / "django_city"
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(HERE))

import web  # noqa: E402 - bench/web.py: wrk and its parsing

THREADS = 16
PATH = "/city?name=london"
TETHER = "tether.contrib.django (CONN_MAX_AGE=0)"
TETHER_HELD = "tether.contrib.django (CONN_MAX_AGE=60)"
VARIANTS: dict[str, dict[str, str]] = {
    TETHER: {"CITY_ENGINE": "tether", "CITY_CONN_MAX_AGE": "0"},
    # Not the recommended setting (each thread keeps its check-out, so the bound counts
    # threads): shown for what holding costs without Django's health-check round trip.
    TETHER_HELD: {"CITY_ENGINE": "tether", "CITY_CONN_MAX_AGE": "60"},
    "Django mysql, CONN_MAX_AGE=0": {"CITY_ENGINE": "django", "CITY_CONN_MAX_AGE": "0"},
    "Django mysql, CONN_MAX_AGE=60 + CONN_HEALTH_CHECKS": {
        "CITY_ENGINE": "django",
        "CITY_CONN_MAX_AGE": "60",
        "CITY_HEALTH_CHECKS": "1",
    },
    "django-db-connection-pool (QueuePool)": {
        "CITY_ENGINE": "dj_db_conn_pool",
        "CITY_CONN_MAX_AGE": "0",
    },
}
START = "<!-- django-bench -->"
END = "<!-- /django-bench -->"


class Served:
    """One variant under ``gunicorn -k gthread --threads 16 -w 1``."""

    def __init__(self, env: dict[str, str], dsn: str, log: Path) -> None:
        self.env = {**os.environ, **env, "DATABASE_URL": dsn, "PYTHONPATH": str(SITE)}
        self.env["CITY_POOL_SIZE"] = str(THREADS)
        self.log = log
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        self.port = web._free_port()
        args = [sys.executable, "-m", "gunicorn", "-k", "gthread", "--threads", str(THREADS)]
        args += ["-w", "1", "-b", f"127.0.0.1:{self.port}", "--chdir", str(SITE)]
        args += ["--log-level", "warning", "citysite.wsgi:application"]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                args, stdout=log, stderr=log, env=self.env, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            with contextlib.suppress(OSError, http.client.HTTPException):
                if web._get(self.port, PATH) == 200:
                    return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"gunicorn did not start:\n{self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def run(dsn: str, *, seconds: int = 5, rounds: int = 3) -> dict[str, Any]:
    """Serve and load every variant; returns the table (columns, rows) and notes."""
    wrk = web._ensure_wrk()
    if wrk is None:
        raise RuntimeError("wrk is needed (apt-get install wrk)")
    env = {**os.environ, "DATABASE_URL": dsn, "CITY_ENGINE": "tether"}
    subprocess.run(
        [sys.executable, str(SITE / "manage.py"), "migrate", "--noinput", "-v", "0"],
        env=env,
        check=True,
        timeout=300,
    )
    variants = dict(VARIANTS)
    notes = []
    if importlib.util.find_spec("dj_db_conn_pool") is None:
        variants.pop("django-db-connection-pool (QueuePool)")
        notes.append("django-db-connection-pool is not installed: left out.")
    logs = Path(tempfile.mkdtemp(prefix="tether-django-bench-"))
    served = {
        name: Served(v, dsn, logs / (re.sub(r"\W+", "-", name) + ".log"))
        for name, v in variants.items()
    }
    rps: dict[str, list[float]] = {name: [] for name in served}
    p99: dict[str, list[float]] = {name: [] for name in served}
    errors: dict[str, int] = dict.fromkeys(served, 0)
    try:
        for s in served.values():
            s.start()
            web.run_wrk(wrk, s.port, THREADS, 1, path=PATH)  # warm up
        for _ in range(rounds):
            for name, s in served.items():
                m = web.run_wrk(wrk, s.port, THREADS, seconds, path=PATH)
                rps[name].append(m.rps)
                p99[name].append(m.p99_ms)
                errors[name] += m.errors
                print(f"{name}: {m.rps:.0f} requests/s", file=sys.stderr, flush=True)
    finally:
        for s in served.values():
            s.stop()
    medians = {name: statistics.median(values) for name, values in rps.items()}
    best_peer = max(v for name, v in medians.items() if name not in (TETHER, TETHER_HELD))
    rows = []
    for name in served:
        rows.append(
            [
                name,
                f"{medians[name]:.0f}",
                f"{statistics.median(p99[name]):.1f}",
                str(errors[name]),
                f"{medians[name] / best_peer:.2f}",
            ]
        )
    ratio = medians[TETHER] / best_peer
    met = "met" if ratio >= 1.1 else "not met"
    notes.append(f"tether (CONN_MAX_AGE=0) / best peer: {ratio:.2f}x (target >= 1.1x: {met})")
    notes.append(
        "Per request, tether's backend with CONN_MAX_AGE=0 runs Django's connect() and close()"
        " (a check-out and a give-back, no round trip); Django's persistent connections skip"
        " both and pay a ping for the health check, which other threads' work overlaps."
    )
    held = medians[TETHER_HELD] / best_peer
    notes.append(
        f"tether (CONN_MAX_AGE=60) / best peer: {held:.2f}x (threads keep their check-out"
        " between requests; no health-check round trip)"
    )
    return {
        "columns": ["variant", "requests/s", "p99 ms", "errors", "vs best peer"],
        "rows": rows,
        "notes": notes,
        "ratio": ratio,
        "seconds": seconds,
        "rounds": rounds,
    }


def section(result: dict[str, Any], command: str) -> str:
    """The markdown section for bench/RESULTS.md."""
    lines = [
        START,
        "## Django: the city lookup under gunicorn (16 threads)",
        "",
        f"`{command}`: `GET {PATH}` through Django's ORM (mysqlclient) from"
        " `examples/django_city/`, one gunicorn gthread worker with 16 threads, wrk with 16"
        f" connections, {result['seconds']} s per cell, {result['rounds']} interleaved rounds,"
        " medians; a throwaway MariaDB on the same 2-core machine (loaded by other work).",
        "",
        "| " + " | ".join(result["columns"]) + " |",
        "|" + "---|" * len(result["columns"]),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in result["rows"]]
    lines += ["", *[f"- {note}" for note in result["notes"]], END]
    return "\n".join(lines) + "\n"


def write_section(path: Path, text: str) -> None:
    old = path.read_text() if path.exists() else ""
    if START in old and END in old:
        head, rest = old.split(START, 1)
        new = head + text.rstrip("\n") + rest.split(END, 1)[1]
    else:
        new = old.rstrip("\n") + "\n\n" + text
    path.write_text(new)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="put the table in RESULTS.md")
    args = parser.parse_args(argv)
    from tether.testing import MariaDBServer

    with MariaDBServer(name="tether-bench-django") as server:
        result = run(server.dsn(), seconds=args.seconds, rounds=args.rounds)
    command = "python bench/orm_django.py --write"
    text = section(result, command)
    print(text)
    if args.write:
        write_section(HERE / "RESULTS.md", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
