"""SQLAlchemy on tether under faults, on a private MariaDB (``wait_timeout=2``) behind the fault
proxy, with both drivers: Core and the ORM in process, and the Flask-SQLAlchemy city app served
by gunicorn. Sessions idle past ``wait_timeout``, are killed, every connection is cut, the
server restarts under load: no read fails (a retry was safe), and a write lost inside a
transaction is ``TransactionLost`` (or, when the COMMIT may have run, ``OutcomeUnknown``) as
SQLAlchemy's ``OperationalError`` with the connection invalidated."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from examples.flask_city.schema import seed
from examples.flask_sqlalchemy_city.app import City
from sqlalchemy import exc as sa_exc
from sqlalchemy import select, text
from sqlalchemy.orm import Session

import tether
from tether.contrib.sqlalchemy import create_engine
from tether.testing import FaultProxy, MariaDBServer

from ..integration.flaskapps.serve import Gunicorn, load

pytestmark = [pytest.mark.faults, pytest.mark.slow]

SCHEMES = {"pymysql": "mysql+pymysql", "mysqlclient": "mysql+mysqldb"}


def url_of(dsn: str, driver: str) -> str:
    return dsn.replace("mysql://", SCHEMES[driver] + "://", 1)


@pytest.fixture
def setup(
    mariadb_factory: Callable[..., MariaDBServer],
    fault_proxy: Callable[..., FaultProxy],
    driver: str,
) -> Iterator[tuple[MariaDBServer, FaultProxy, sa.Engine]]:
    server = mariadb_factory(options={"wait_timeout": 2})
    seed(server.dsn())
    proxy = fault_proxy(server)
    engine = create_engine(url_of(proxy.dsn_for(), driver), pool_options={"max_size": 6})
    yield server, proxy, engine
    engine.dispose()


def read_core(engine: sa.Engine) -> None:
    with engine.connect() as conn:
        assert conn.execute(text("SELECT id FROM city WHERE name = 'paris'")).scalar() == 2


def read_orm(engine: sa.Engine) -> None:
    with Session(engine) as session:
        assert session.scalars(select(City.id).where(City.name == "rome")).one() == 5


def hammer(engine: sa.Engine, seconds: float, threads: int = 6) -> tuple[int, list[str]]:
    """Core and ORM reads from ``threads`` threads for ``seconds``: (done, failures)."""
    failures: list[str] = []
    done = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def work(n: int) -> None:
        while time.monotonic() < deadline:
            try:
                (read_core if n % 2 else read_orm)(engine)
                time.sleep(0.005)
            except Exception as exc:
                with lock:
                    failures.append(f"{type(exc).__name__}: {exc}"[:300])
            else:
                with lock:
                    done[0] += 1

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(seconds + 60)
    return done[0], failures


def test_core_and_orm_reads_never_fail_under_faults(
    setup: tuple[MariaDBServer, FaultProxy, sa.Engine],
) -> None:
    server, proxy, engine = setup
    results: list[tuple[int, list[str]]] = []

    def during(seconds: float) -> threading.Thread:
        t = threading.Thread(target=lambda: results.append(hammer(engine, seconds)))
        t.start()
        return t

    # Warm several connections, then idle past wait_timeout.
    results.append(hammer(engine, 0.5))
    time.sleep(3)
    results.append(hammer(engine, 0.5))
    # Every session killed, every connection cut, between bursts. (Under load, a KILL sent
    # one session at a time, or a cut the proxy carries out link by link, can land on the
    # very connection a lost read was just replayed on; tether replays a read once.)
    for fault in (server.kill_sessions, proxy.cut_all, server.kill_sessions, proxy.cut_all):
        fault()
        results.append(hammer(engine, 0.5))
    # The server restarts under load.
    load_thread = during(4.0)
    time.sleep(0.5)
    server.restart(down=1)
    load_thread.join()
    failures = [f for _, fs in results for f in fs]
    assert failures == [], failures[:5]
    assert all(done > 0 for done, _ in results)
    stats = engine.pool.tether_pool.stats()
    assert stats.in_use == 0 and stats.size <= 6
    assert stats["opened"] > 1  # dead connections were replaced


def test_a_write_lost_inside_a_transaction(
    setup: tuple[MariaDBServer, FaultProxy, sa.Engine],
) -> None:
    server, proxy, engine = setup
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE ledger (id INT PRIMARY KEY)"))
    for fault in ("cut", "kill", "restart"):
        with Session(engine) as session:
            session.execute(text("INSERT INTO ledger VALUES (1)"))
            if fault == "cut":
                proxy.cut_all()
            elif fault == "kill":
                server.kill_sessions()
            else:
                server.restart(down=0.5)
            time.sleep(0.1)
            with pytest.raises(sa_exc.OperationalError) as caught:
                session.execute(text("INSERT INTO ledger VALUES (2)"))
                session.commit()
            assert isinstance(caught.value.orig, tether.TransactionLost), fault
            assert caught.value.connection_invalidated
            session.rollback()
        count = int(server.execute_admin(f"SELECT COUNT(*) FROM {server.database}.ledger")[0][0])
        assert count == 0, fault  # the server rolled it back; nothing half-committed
    # The lost reply of a COMMIT: it may have run.
    with pytest.raises(sa_exc.OperationalError) as caught, Session(engine) as session:
        session.execute(text("INSERT INTO ledger VALUES (3)"))
        proxy.lose_next_reply(b"COMMIT")
        session.commit()
    assert isinstance(caught.value.orig, tether.OutcomeUnknown)
    assert caught.value.connection_invalidated
    read_core(engine)  # and the engine goes on


# ----------------------------------------------------------------------------- Flask-SQLAlchemy


@pytest.fixture
def served() -> Iterator[Callable[..., Gunicorn]]:
    apps: list[Gunicorn] = []

    def start(url: str, **options: Any) -> Gunicorn:
        app = Gunicorn(
            "examples.flask_sqlalchemy_city.app:create_app()",
            env={"DATABASE_URL": url, "CITY_POOL_OPTIONS": json.dumps(options)},
            threads=16,
        )
        apps.append(app)
        return app.start()

    yield start
    for app in apps:
        app.stop()
        app.log_path.unlink(missing_ok=True)


def test_flask_sqlalchemy_app_under_faults(
    mariadb_factory: Callable[..., MariaDBServer],
    fault_proxy: Callable[..., FaultProxy],
    served: Callable[..., Gunicorn],
    driver: str,
) -> None:
    server = mariadb_factory(options={"wait_timeout": 2})
    seed(server.dsn())
    proxy = fault_proxy(server)
    app = served(url_of(proxy.dsn_for(), driver), max_size=8)
    results: list[Any] = []

    def burst(seconds: float, stop: threading.Event | None = None) -> threading.Thread:
        t = threading.Thread(
            target=lambda: results.append(
                load(app, "/?city=berlin", threads=8, requests=50_000, seconds=seconds, stop=stop)
            )
        )
        t.start()
        return t

    burst(1.0).join()
    time.sleep(3)  # every idle connection is past wait_timeout
    burst(1.0).join()
    # Every session killed, every connection cut, between bursts (see above); a restart
    # under load.
    server.kill_sessions()
    burst(1.0).join()
    proxy.cut_all()
    burst(1.0).join()
    t = burst(3.0)
    time.sleep(0.7)
    server.restart(down=1)
    t.join()
    phases = ["warm", "idle", "kill", "cut", "restart"]
    failures = [
        f"{phase}: {f}" for phase, r in zip(phases, results, strict=True) for f in r.failures
    ]
    assert failures == [], f"{failures[:5]}\n--- gunicorn log ---\n{app.log_tail()}"
    assert all(r.ok > 0 for r in results)
    assert all(json.loads(body) == {"id": 3} for r in results for body in r.bodies[:50])
    stats = app.get_json("/stats")
    assert stats["in_use"] == 0 and stats["size"] <= 8
    assert stats["counters"]["opened"] > 1
