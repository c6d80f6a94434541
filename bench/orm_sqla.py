"""The city lookup as a Flask-SQLAlchemy view under gunicorn: tether's engine beside SQLAlchemy's
own QueuePool, with and without ``pool_pre_ping``.

    python bench/orm_sqla.py            # ~2 minutes: concurrency 1 and 16, 5 s cells, 3 rounds
    python bench/orm_sqla.py --quick    # under a minute: concurrency 16, 2 s cells, 1 round

One gunicorn process (gthread worker, 16 threads) per engine serves ``GET /?city=london`` from
``examples/flask_sqlalchemy_city/`` (an ORM query through ``db.session``) with PyMySQL: the
``tether`` engine plugin (``tether.Pool``, max_size 16), ``QueuePool`` (pool_size 16, no
overflow) and ``QueuePool`` with ``pool_pre_ping=True``. ``wrk`` drives the load (a Python
load generator when wrk is missing), cells interleaved over the engines and repeated; figures
are medians over rounds. The target: tether at least 1.1x the best of the two QueuePools at
16 concurrent clients. ``bench/run.py`` appends :func:`section` to ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import web
from examples.flask_city.schema import seed

APP = "examples.flask_sqlalchemy_city.app:create_app(engine={!r})"
TETHER = "Flask-SQLAlchemy on tether"
VARIANTS = {
    TETHER: "tether",
    "QueuePool": "queuepool",
    "QueuePool pre_ping": "queuepool_pre_ping",
}
DATABASE = "orm_city"
TARGET = 1.1
JUDGED = 16  # the concurrency the target is judged at


def run(
    *,
    quick: bool,
    server: Any = None,
    rounds: int | None = None,
    seconds: int | None = None,
) -> dict[str, Any]:
    """Serve each engine under gunicorn and load it; ``server`` is a running
    ``tether.testing.MariaDBServer`` (an ``orm_city`` database is made in it), else a
    throwaway one. Returns ``{"columns", "rows", "ratios", "notes"}``."""
    if server is None:
        from tether.testing import MariaDBServer

        with MariaDBServer(options={"max_connections": 500}, name="orm-bench") as own:
            return run(quick=quick, server=own, rounds=rounds, seconds=seconds)
    server.execute_admin(f"CREATE DATABASE IF NOT EXISTS `{DATABASE}`")
    server.execute_admin(f"GRANT ALL PRIVILEGES ON `{DATABASE}`.* TO '{server.user}'@'%'")
    dsn = server.dsn(database=DATABASE)
    seed(dsn)
    url = dsn.replace("mysql://", "mysql+pymysql://", 1)

    concurrencies = [JUDGED] if quick else [1, JUDGED]
    seconds = seconds or (2 if quick else 5)
    rounds = rounds or (1 if quick else 3)
    wrk = web._ensure_wrk()
    notes = [
        f"Load: {'wrk' if wrk else 'a Python load generator (wrk not found)'}; {seconds} s"
        f" cells, {rounds} round(s), medians; gunicorn gthread, 16 threads, one worker;"
        " PyMySQL. The ratios, taken from cells run side by side, mean more than the"
        " absolute figures (the host's load moves those)."
    ]
    log_dir = Path(tempfile.mkdtemp(prefix="tether-orm-bench-"))
    served = {
        name: web.Served(name, APP.format(engine), url, log_dir)
        for name, engine in VARIANTS.items()
    }
    rps: dict[tuple[str, int], list[float]] = {}
    errors: dict[tuple[str, int], int] = {}
    try:
        for app in served.values():
            app.start()
        for app in served.values():  # warm up: imports, first connections
            web._load(wrk, app.port, 4, 1)
        names = list(served)
        for round_no in range(rounds):
            for concurrency in concurrencies:
                shift = (round_no + concurrency) % len(names)
                for name in names[shift:] + names[:shift]:
                    measure = web._load(wrk, served[name].port, concurrency, seconds)
                    rps.setdefault((name, concurrency), []).append(measure.rps)
                    errors[(name, concurrency)] = (
                        errors.get((name, concurrency), 0) + measure.errors
                    )
                    print(
                        f"c={concurrency:2} {name:28} {measure.rps:9,.0f} req/s"
                        f"  errors {measure.errors}",
                        flush=True,
                    )
    finally:
        for app in served.values():
            app.stop()
        shutil.rmtree(log_dir, ignore_errors=True)

    rows: list[list[Any]] = []
    ratios: dict[int, float] = {}
    for concurrency in concurrencies:
        medians = {name: statistics.median(rps[(name, concurrency)]) for name in served}
        best_peer = max(v for k, v in medians.items() if k != TETHER)
        ratios[concurrency] = medians[TETHER] / best_peer if best_peer else 0.0
        for name in served:
            rows.append(
                [
                    name,
                    concurrency,
                    f"{medians[name]:,.0f}",
                    f"{medians[name] / best_peer:.2f}" if best_peer else "-",
                    errors[(name, concurrency)],
                ]
            )
    columns = ["engine", "concurrency", "requests/s", "ratio to the best QueuePool", "errors"]
    return {"columns": columns, "rows": rows, "ratios": ratios, "notes": notes}


def section(result: dict[str, Any], command: str = "python bench/orm_sqla.py") -> str:
    """The RESULTS.md section."""
    lines = [
        "## Flask-SQLAlchemy under gunicorn: tether's engine beside QueuePool",
        "",
        f"`{command}` (also run by `bench/run.py`). One gunicorn process (gthread worker, 16"
        " threads) per engine serves `GET /?city=london` from `examples/flask_sqlalchemy_city/`"
        " (an ORM query through `db.session`) with PyMySQL: the `tether` engine plugin"
        " (`tether.Pool`, max_size 16), `QueuePool` (pool_size 16, no overflow) and `QueuePool`"
        " with `pool_pre_ping=True`. A read on tether costs one round trip (no ping, no"
        " ROLLBACK at the give-back); on QueuePool it is followed by a ROLLBACK, and pre_ping"
        " adds a ping before it. Ratios are to the faster QueuePool in the same run.",
        "",
        "| " + " | ".join(result["columns"]) + " |",
        "|" + "---|" * len(result["columns"]),
    ]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in result["rows"]]
    lines.append("")
    judged = result["ratios"].get(JUDGED)
    if judged is not None:
        verdict = "met" if judged >= TARGET else "missed"
        lines += [
            f"Target: tether >= {TARGET:.1f}x the best QueuePool at {JUDGED} clients:"
            f" {judged:.2f}x, {verdict}.",
            "",
        ]
    lines += [*result["notes"], ""]
    return "\n".join(line.replace("\n", " ") for line in lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--seconds", type=int)
    args = parser.parse_args(argv)
    result = run(quick=args.quick, rounds=args.rounds, seconds=args.seconds)
    command = "python bench/orm_sqla.py" + (" --quick" if args.quick else "")
    print(section(result, command))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
