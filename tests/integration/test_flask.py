"""tether's Flask extension: in-process with Flask's test client, then served by a real gunicorn
(gthread, 16 threads) in front of a private MariaDB that times sessions out, restarts, has its
sessions killed, and sees views raise."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("flask")
pytest.importorskip("gunicorn")

from examples.flask_city.schema import seed
from flask import Flask

import tether
from tether.contrib.flask import Tether, get_db
from tether.testing import MariaDBServer

from .flaskapps.app import Boom, create_app
from .flaskapps.serve import Gunicorn, load, sample_while

KINDS = ["pool", "threadlocal"]


def ext_of(app: Flask) -> Tether:
    ext = app.extensions["tether"]
    assert isinstance(ext, Tether)
    return ext


@pytest.fixture
def make_app(db: MariaDBServer) -> Iterator[Callable[..., Flask]]:
    apps: list[Flask] = []

    def make(**config: Any) -> Flask:
        config.setdefault("TETHER_DSN", db.dsn())
        app = create_app(config)
        apps.append(app)
        return app

    yield make
    for app in apps:
        ext_of(app).close()


# ----------------------------------------------------------------------------- in process


def test_no_checkout_for_a_view_that_does_not_use_the_database(
    make_app: Callable[..., Flask], db: MariaDBServer, driver: str
) -> None:
    app = make_app(TETHER_DRIVER=driver)
    client = app.test_client()
    for _ in range(3):
        assert client.get("/health").status_code == 200
    ext = ext_of(app)
    assert ext.stats()["checkouts"] == 0
    assert db.connections_of() == 0

    seed(db.dsn())
    assert client.get("/?city=london").get_json() == {"id": 1}
    assert client.get("/?city=atlantis").status_code == 404
    stats = ext.stats()
    assert stats["checkouts"] == 2 and stats.in_use == 0
    assert ext.pool.driver.name == driver


def test_one_connection_for_the_whole_request(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    ext = ext_of(app)
    seen: list[Any] = []

    @app.get("/twice")
    def twice() -> str:
        first = ext.connection()
        seen.append(first)
        assert get_db() is first and ext.connection() is first
        cur = first.cursor()
        cur.execute("SELECT CONNECTION_ID()")
        session = cur.fetchone()[0]
        cur = get_db().cursor()
        cur.execute("SELECT CONNECTION_ID()")
        return "same" if cur.fetchone()[0] == session else "different"

    client = app.test_client()
    assert client.get("/twice").text == "same"
    assert client.get("/session").get_json()["same"] is True
    assert seen[0].closed  # given back when the request ended
    stats = ext.stats()
    assert stats["checkouts"] == 2 and stats.in_use == 0


@pytest.mark.parametrize("kind", KINDS)
def test_returned_and_rolled_back_when_the_view_raises(
    make_app: Callable[..., Flask], db: MariaDBServer, kind: str
) -> None:
    db.execute_admin(f"CREATE TABLE {db.database}.t (id INT PRIMARY KEY)")
    app = make_app(TETHER_POOL=kind)
    ext = ext_of(app)

    @app.get("/insert-then-raise")
    def insert_then_raise() -> str:
        conn = ext.connection()
        conn.begin()
        conn.cursor().execute("INSERT INTO t VALUES (1)")
        raise Boom("after an uncommitted insert")

    client = app.test_client()
    assert client.get("/insert-then-raise").status_code == 500
    assert client.get("/boom").status_code == 500
    assert ext.stats().in_use == 0
    # The view's transaction was rolled back, not left open on a pooled session.
    assert db.execute_admin(f"SELECT COUNT(*) FROM {db.database}.t")[0][0] == 0

    app.testing = True  # exceptions now propagate out of the test client
    with pytest.raises(Boom):
        client.get("/insert-then-raise")
    assert ext.stats().in_use == 0
    assert db.execute_admin(f"SELECT COUNT(*) FROM {db.database}.t")[0][0] == 0


def test_app_context_without_a_request(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    ext = ext_of(app)
    with app.app_context():
        conn = get_db()
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
        # Given back early: the next call checks out another one instead of a dead proxy.
        conn.close()
        again = ext.connection()
        assert again is not conn and not again.closed
        assert ext.stats().in_use == 1
    assert again.closed and ext.stats().in_use == 0
    with pytest.raises(RuntimeError, match="application context"):
        ext.connection()
    with pytest.raises(RuntimeError, match="application context"):
        get_db()


def test_configuration(db: MariaDBServer, monkeypatch: pytest.MonkeyPatch) -> None:
    app = Flask("configured")
    app.config.update(
        DATABASE_URL=db.dsn(),  # the fallback when TETHER_DSN is not set
        TETHER_POOL="threadlocal",
        TETHER_OPTIONS={"max_size": 3, "timeout": 7},
    )
    ext = Tether(app, max_size=9, leak_timeout=60)
    try:
        assert app.extensions["tether"] is ext
        pool = ext.pool
        assert type(pool) is tether.ThreadLocalPool
        assert pool.config.max_size == 3 and pool.config.timeout == 7  # the config wins
        assert pool.config.leak_timeout == 60
        assert pool.name == "flask:configured"
        assert pool.dsn.port == db.port
        assert ext.pool is pool  # one pool per process
        assert "password" not in repr(ext) and db.password not in repr(ext)
    finally:
        ext.close()

    def app_with(**config: Any) -> Flask:
        bad = Flask("bad")
        bad.config.update({"TETHER_DSN": db.dsn(), **config})
        return bad

    with pytest.raises(ValueError, match="TETHER_POOL"):
        Tether(app_with(TETHER_POOL="bounded"))
    with pytest.raises(ValueError, match="'maxsize'"):
        Tether(app_with(TETHER_OPTIONS={"maxsize": 3}))
    with pytest.raises(ValueError, match="TETHER_DSN"):
        Tether(app_with(TETHER_OPTIONS={"dsn": db.dsn()}))
    with pytest.raises(ValueError, match="unknown pool option 'pool_size'"):
        Tether(pool_size=3)
    with pytest.raises(tether.DSNError):
        Tether(app_with(TETHER_DSN="postgres://x@y/z"))
    # Impossible values and arguments the driver does not take fail at start-up, before any
    # request (and before the pool exists).
    with pytest.raises(ValueError, match="max_size"):
        Tether(app_with(TETHER_OPTIONS={"max_size": 0}))
    with pytest.raises(ValueError, match="replay_reads"):
        Tether(app_with(TETHER_OPTIONS={"replay_reads": "no"}))
    with pytest.raises(ValueError, match=r"connect_args.*'colour'"):
        Tether(app_with(TETHER_OPTIONS={"connect_args": {"colour": "blue"}}))

    # Neither TETHER_DSN nor DATABASE_URL in the config: the environment's DATABASE_URL.
    monkeypatch.setenv("DATABASE_URL", db.dsn())
    env_app = Flask("from-env")
    env_ext = Tether(env_app)
    try:
        with env_app.app_context(), env_ext.connection().cursor() as cur:
            cur.execute("SELECT DATABASE()")
            assert cur.fetchone()[0] == db.database
    finally:
        env_ext.close()


def test_one_extension_for_several_apps(db: MariaDBServer) -> None:
    ext = Tether(max_size=2)
    apps = []
    for name in ("first", "second"):
        app = Flask(name)
        app.config["TETHER_DSN"] = db.dsn()
        ext.init_app(app)
        apps.append(app)
    try:
        pools = []
        for app in apps:
            with app.app_context():
                pools.append(ext.pool)
                ext.connection().cursor().execute("SELECT 1")
        assert pools[0] is not pools[1]
        assert [p.name for p in pools] == ["flask:first", "flask:second"]
        with pytest.raises(RuntimeError, match="several apps"):
            ext.pool  # noqa: B018
        assert all(p.stats().in_use == 0 for p in pools)
        other = Tether()
        with pytest.raises(RuntimeError, match="already has a tether extension"):
            other.init_app(apps[0])
    finally:
        ext.close()


def test_pool_used_before_a_fork_that_skips_python_fork_hooks(
    make_app: Callable[..., Flask],
) -> None:
    # uWSGI (without lazy-apps) imports the app in its master and forks its workers from C,
    # so os.register_at_fork hooks never run; libc's fork() called directly does the same.
    app = make_app()
    ext = ext_of(app)

    def session_id() -> int:
        with app.app_context(), ext.connection().cursor() as cur:
            cur.execute("SELECT CONNECTION_ID()")
            return int(cur.fetchone()[0])

    parent = session_id()
    read_end, write_end = os.pipe()
    pid = ctypes.PyDLL(None).fork()  # PyDLL: the GIL stays held across the call
    if pid == 0:
        code = 1
        try:
            os.close(read_end)
            os.write(write_end, json.dumps({"session": session_id()}).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    deadline = time.monotonic() + 30
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    if done[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung")
    with os.fdopen(read_end, "rb") as pipe:
        report = pipe.read()
    assert os.waitstatus_to_exitcode(done[1]) == 0
    child = json.loads(report)["session"]
    assert child != parent  # the child opened its own connection
    assert session_id() == parent  # and left the parent's session alone


def test_importing_tether_does_not_import_flask() -> None:
    code = "import sys, tether, tether.contrib; sys.exit('flask' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr


# ----------------------------------------------------------------------------- under gunicorn


@pytest.fixture
def serve() -> Iterator[Callable[..., Gunicorn]]:
    servers: list[Gunicorn] = []

    def start(
        server: MariaDBServer,
        kind: str = "pool",
        options: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> Gunicorn:
        seed(server.dsn())
        environment = {
            "APP_TETHER_DSN": server.dsn(),
            "APP_TETHER_POOL": kind,
            "APP_TETHER_OPTIONS": json.dumps({"max_size": 16, **(options or {})}),
            **(env or {}),
        }
        app = Gunicorn(env=environment, **kwargs)
        servers.append(app)
        return app.start()

    yield start
    for app in servers:
        app.stop()
        app.log_path.unlink(missing_ok=True)


def assert_no_failures(result: Any, app: Gunicorn) -> None:
    assert result.failures == [], (
        f"{len(result.failures)} failed of {result.ok + len(result.failures)}:"
        f" {result.failures[:5]}\n--- gunicorn log ---\n{app.log_tail()}"
    )


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_requests_after_idling_past_wait_timeout(
    mariadb_factory: Callable[..., MariaDBServer], serve: Callable[..., Gunicorn], kind: str
) -> None:
    server = mariadb_factory(options={"wait_timeout": 2})
    app = serve(server, kind)
    # Concurrent slow requests leave several connections idle in the pool.
    first = load(app, "/slow?s=0.02", threads=8, requests=80)
    assert_no_failures(first, app)
    opened = app.get_json("/stats")["counters"]["opened"]
    assert opened >= 2
    time.sleep(3)  # every one of them is now past the server's wait_timeout
    second = load(app, "/?city=london", threads=8, requests=80)
    assert_no_failures(second, app)
    stats = app.get_json("/stats")
    assert stats["counters"]["opened"] > opened  # the stale ones were not used
    assert stats["in_use"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_server_restart_under_load(
    mariadb_factory: Callable[..., MariaDBServer], serve: Callable[..., Gunicorn], kind: str
) -> None:
    server = mariadb_factory()
    app = serve(server, kind)
    stop = threading.Event()
    results: list[Any] = []
    clients = threading.Thread(
        target=lambda: results.append(
            load(app, "/?city=paris", threads=4, requests=20_000, seconds=45, stop=stop)
        )
    )
    clients.start()
    try:
        time.sleep(0.5)  # the load is running
        server.restart(down=1)
        time.sleep(1.0)  # and keeps running after the server is back
    finally:
        stop.set()
        clients.join(90)
    result = results[0]
    assert_no_failures(result, app)
    assert result.ok > 0
    stats = app.get_json("/stats")
    assert stats["in_use"] == 0
    assert stats["counters"]["opened"] > 1  # connections were replaced after the restart


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_killed_sessions_between_bursts(
    db: MariaDBServer, serve: Callable[..., Gunicorn], kind: str
) -> None:
    app = serve(db, kind)
    killed = 0
    for _ in range(3):
        result = load(app, "/slow?s=0.01", threads=6, requests=60)
        assert_no_failures(result, app)
        killed += db.kill_sessions()
    assert killed >= 3  # every burst left idle sessions that were killed
    result = load(app, "/?city=rome", threads=6, requests=60)
    assert_no_failures(result, app)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_a_raising_view_always_gives_its_connection_back(
    db: MariaDBServer, serve: Callable[..., Gunicorn], kind: str
) -> None:
    app = serve(db, kind, options={"max_size": 4})
    result = load(app, "/boom", threads=8, requests=1000, expect=500)
    assert_no_failures(result, app)
    assert result.ok == 1000
    stats = app.get_json("/stats")
    assert stats["in_use"] == 0
    assert stats["counters"]["checkouts"] >= 1000
    assert stats["size"] <= 4
    # Still serving, on the same bounded set of connections.
    assert app.get_json("/?city=london") == {"id": 1}


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_never_more_server_connections_than_max_size(
    db: MariaDBServer, serve: Callable[..., Gunicorn], kind: str
) -> None:
    app = serve(db, kind, options={"max_size": 4})
    results: list[Any] = []
    clients = threading.Thread(
        target=lambda: results.append(load(app, "/slow?s=0.02", threads=16, requests=300))
    )
    clients.start()
    samples = sample_while(clients.is_alive, db.connections_of, interval=0.02)
    clients.join()
    assert_no_failures(results[0], app)
    assert samples and max(samples) <= 4
    assert max(samples) >= 2  # the load did need several connections at once
    assert app.get_json("/stats")["size"] <= 4


@pytest.mark.slow
def test_preload_pool_used_in_master_before_fork(
    db: MariaDBServer, serve: Callable[..., Gunicorn], tmp_path: Path
) -> None:
    report = tmp_path / "master.json"
    app = serve(db, env={"APP_USE_AT_IMPORT": str(report)}, workers=2, preload=True)
    master = json.loads(report.read_text())
    assert master["pid"] == app.pid  # the pool was used in the master, before the fork

    def sessions() -> dict[int, str]:
        return {int(row["ID"]): str(row["COMMAND"]) for row in db.processlist(user=db.user)}

    result = load(app, "/session", threads=8, requests=200)
    assert_no_failures(result, app)
    served = result.json()
    workers = {r["pid"] for r in served}
    assert master["pid"] not in workers
    assert master["session"] not in {r["session"] for r in served}
    assert all(r["same"] for r in served)
    assert master["session"] in sessions()  # the workers left the master's session alone

    # A worker that exits does not close the master's session either.
    victim = next(iter(workers))
    os.kill(victim, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        again = load(app, "/session", threads=4, requests=40)
        assert_no_failures(again, app)
        if victim not in {r["pid"] for r in again.json()} and _gone(victim):
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"worker {victim} did not go away")
    assert sessions().get(master["session"]) == "Sleep"


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False
