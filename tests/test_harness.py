"""The test foundation itself: the private server and the fault proxy really produce the
failures the rest of the suite relies on, through both real drivers, and leave nothing behind."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tether.testing import (
    DISCONNECT_CODES,
    FaultProxy,
    MariaDBServer,
    connect_raw,
    error_code,
)

Factory = Callable[..., MariaDBServer]
ProxyFactory = Callable[..., FaultProxy]

# Killed sessions may hear "connection was killed" (1927) before the socket closes.
KILLED = DISCONNECT_CODES | {1927}


def query(conn: Any, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
    cur = conn.cursor()
    try:
        cur.execute(sql, args)
        return list(cur.fetchall())
    finally:
        cur.close()


def assert_disconnected(exc: BaseException, codes: frozenset[int] = DISCONNECT_CODES) -> None:
    assert error_code(exc) in codes or isinstance(exc, OSError), repr(exc)


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except (OSError, IndexError):
        return False


def wait_until(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def closing() -> Iterator[Callable[[Any], Any]]:
    """Registers driver connections to close at teardown, whatever state they are in."""
    conns: list[Any] = []

    def register(conn: Any) -> Any:
        conns.append(conn)
        return conn

    yield register
    for conn in conns:
        with contextlib.suppress(Exception):  # already broken on purpose
            conn.close()


# ----------------------------------------------------------------------------- the server


def test_private_server_answers(db: MariaDBServer, driver: str, closing: Any) -> None:
    assert db.port != 3306 and db.is_running() and db.pid
    assert db.dsn() == f"mysql://app:app-secret@127.0.0.1:{db.port}/app"
    assert "app-secret" not in repr(db)
    for conn in (
        closing(connect_raw(driver, db)),
        closing(connect_raw(driver, (db.host, db.port), "app", "app-secret", "app")),
        closing(connect_raw(driver, db.host, db.port, db.user, db.password, db.database)),
    ):
        assert query(conn, "SELECT DATABASE(), CURRENT_USER()")[0] == ("app", "app@%")


def test_root_is_reachable_only_over_the_socket(db: MariaDBServer, driver: str) -> None:
    assert db.execute_admin("SELECT CURRENT_USER()")[0][0] == "root@localhost"
    with pytest.raises(Exception) as info:
        connect_raw(driver, (db.host, db.port), "root", "")
    assert error_code(info.value) == 1045  # access denied: no root@127.0.0.1


def test_admin_views(db: MariaDBServer, driver: str, closing: Any) -> None:
    for _ in range(2):
        closing(connect_raw(driver, db))
    assert db.connections_of() == 2
    rows = db.processlist(user="app")
    assert len(rows) == 2 and {"ID", "USER", "COMMAND"} <= set(rows[0])
    assert db.threads_connected() >= 3  # the two and the admin session asking


def test_reset_restores_the_shared_server(db: MariaDBServer, driver: str, closing: Any) -> None:
    start_wait_timeout = db.execute_admin("SELECT @@GLOBAL.wait_timeout")[0][0]
    db.set_global("wait_timeout", 5)
    db.create_user("extra", "extra-pw", grants="SELECT ON app.*")
    db.execute_admin("CREATE TABLE app.t (id INT PRIMARY KEY)")
    conn = closing(connect_raw(driver, db, "extra", "extra-pw"))
    assert query(conn, "SELECT CURRENT_USER()")[0][0] == "extra@%"

    db.reset()

    assert db.execute_admin("SELECT @@GLOBAL.wait_timeout")[0][0] == start_wait_timeout
    assert db.execute_admin("SELECT COUNT(*) FROM mysql.user WHERE User = 'extra'")[0][0] == 0
    assert db.execute_admin("SHOW TABLES FROM app") == []
    with pytest.raises(Exception) as info:
        query(conn, "SELECT 1")
    assert_disconnected(info.value, KILLED)
    assert query(closing(connect_raw(driver, db)), "SELECT 1")[0][0] == 1


def test_options_reach_the_server_and_stop_leaves_nothing(mariadb_factory: Factory) -> None:
    server = mariadb_factory(options={"max_connections": 20, "net_read_timeout": 7})
    assert server.execute_admin("SELECT @@max_connections, @@net_read_timeout")[0] == (20, 7)
    # Its own tmpdir: a server starting up deletes every "#sql*" file in its tmpdir.
    assert server.execute_admin("SELECT @@tmpdir")[0][0] == str(server.tmpdir)
    pid, basedir = server.pid, server.basedir
    assert pid is not None and pid_alive(pid)
    server.stop()
    assert not server.is_running() and server.pid is None
    assert not pid_alive(pid)
    assert not basedir.exists()
    server.stop()  # twice is harmless


def test_template_is_reused_and_context_manager_stops(db: MariaDBServer) -> None:
    # `db` guarantees one server already started from the cached template.
    templates = list(Path(db.basedir).parent.glob(f"tether-mariadb-template-*-{os.getuid()}"))
    assert any((t / ".complete").exists() for t in templates)
    with MariaDBServer(name="second", database="other", user="other_app") as srv:
        assert srv.is_running()
        assert srv.execute_admin("SELECT COUNT(*) FROM mysql.user WHERE User = 'other_app'")
        pid = srv.pid
    assert pid is not None and not pid_alive(pid)


@pytest.mark.slow
def test_racing_processes_share_one_template(tmp_path: Path) -> None:
    """Three processes start servers at once with no template yet: each builds one, one wins
    the rename, all start, and no half-built directory is left."""
    script = textwrap.dedent(
        """
        from tether.testing import MariaDBServer
        with MariaDBServer(name="racer") as server:
            print(server.execute_admin("SELECT 1")[0][0])
        """
    )
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0 and out.strip() == "1", err
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len(left) == 1 and left[0].startswith("tether-mariadb-template-"), left
    assert (tmp_path / left[0] / ".complete").exists()


@pytest.mark.slow
@pytest.mark.faults
def test_restart_keeps_its_port_while_it_is_briefly_busy(mariadb_factory: Factory) -> None:
    server = mariadb_factory()
    port = server.port
    server.kill9()
    squatter = socket.socket()
    squatter.bind((server.host, port))
    squatter.listen()
    threading.Timer(1.0, squatter.close).start()  # the port comes free a moment later
    server.start()
    assert server.port == port and server.is_running()
    assert server.execute_admin("SELECT @@port")[0][0] == port


@pytest.mark.slow
@pytest.mark.faults
def test_restart_really_drops_sessions(mariadb_factory: Factory, driver: str, closing: Any) -> None:
    server = mariadb_factory()
    server.execute_admin("CREATE TABLE app.kept (id INT PRIMARY KEY)")
    server.execute_admin("INSERT INTO app.kept VALUES (1)")
    conn = closing(connect_raw(driver, server))
    assert query(conn, "SELECT 1")[0][0] == 1
    port, old_pid = server.port, server.pid
    server.restart(down=0.3)
    assert server.port == port and server.pid != old_pid
    with pytest.raises(Exception) as info:
        query(conn, "SELECT 1")
    assert_disconnected(info.value)
    fresh = closing(connect_raw(driver, server))
    assert query(fresh, "SELECT COUNT(*) FROM kept")[0][0] == 1  # data survives


@pytest.mark.faults
def test_kill9_then_start_recovers(mariadb_factory: Factory) -> None:
    server = mariadb_factory()
    server.execute_admin("CREATE TABLE app.t (id INT PRIMARY KEY)")
    server.execute_admin("INSERT INTO app.t VALUES (1)")
    pid = server.pid
    assert pid is not None
    server.kill9()
    assert not server.is_running() and not pid_alive(pid)
    server.start()
    assert server.execute_admin("SELECT COUNT(*) FROM app.t")[0][0] == 1


@pytest.mark.faults
def test_max_user_connections_yields_1226(
    mariadb_factory: Factory, driver: str, closing: Any
) -> None:
    server = mariadb_factory(max_user_connections=2)
    for _ in range(2):
        closing(connect_raw(driver, server))
    with pytest.raises(Exception) as info:
        closing(connect_raw(driver, server))
    assert error_code(info.value) == 1226


@pytest.mark.slow
@pytest.mark.faults
def test_short_wait_timeout_yields_a_disconnect(
    mariadb_factory: Factory, driver: str, closing: Any
) -> None:
    server = mariadb_factory(options={"wait_timeout": 2})
    conn = closing(connect_raw(driver, server))
    assert query(conn, "SELECT @@SESSION.wait_timeout")[0][0] == 2
    time.sleep(3)
    with pytest.raises(Exception) as info:
        query(conn, "SELECT 1")
    assert_disconnected(info.value)


@pytest.mark.faults
def test_kill_sessions_kills(db: MariaDBServer, driver: str, closing: Any) -> None:
    victim = closing(connect_raw(driver, db))
    other = closing(connect_raw(driver, db))
    (session,) = query(victim, "SELECT CONNECTION_ID()")[0]
    assert db.kill_sessions(ids=[session]) == 1
    with pytest.raises(Exception) as info:
        query(victim, "SELECT 1")
    assert_disconnected(info.value, KILLED)
    assert query(other, "SELECT 1")[0][0] == 1
    assert db.kill_sessions() == 1  # the rest of the application user's
    assert db.connections_of() == 0
    assert db.kill_sessions(ids=[session]) == 0  # gone already


@pytest.mark.slow
@pytest.mark.faults
@pytest.mark.parametrize("how", ["atexit", "sigkill"])
def test_no_server_outlives_its_process(how: str) -> None:
    """atexit stops a server its owner forgot; the watcher stops one whose owner died."""
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        from tether.testing import MariaDBServer
        server = MariaDBServer(name="orphan")
        server.start()
        print(server.pid, server.basedir, flush=True)
        if {how!r} == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert len(proc.stdout.split()) == 2, proc.stderr
    pid_text, basedir_text = proc.stdout.split()
    pid, basedir = int(pid_text), Path(basedir_text)
    try:
        assert wait_until(lambda: not pid_alive(pid), 20), "mariadbd outlived its owner"
        assert wait_until(lambda: not basedir.exists(), 5), "its files outlived it"
    finally:
        # Should the safety net fail, do not leak the server (checked to be this one).
        with contextlib.suppress(OSError):
            if str(basedir).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)


# ----------------------------------------------------------------------------- the proxy


@pytest.mark.faults
def test_blackhole_makes_a_read_time_out(
    db: MariaDBServer, fault_proxy: ProxyFactory, driver: str, closing: Any
) -> None:
    proxy = fault_proxy(db)
    conn = closing(connect_raw(driver, proxy, read_timeout=1))
    assert query(conn, "SELECT 1")[0][0] == 1
    proxy.blackhole(True)
    start = time.monotonic()
    with pytest.raises(Exception) as info:
        query(conn, "SELECT 2")
    assert time.monotonic() - start < 5
    assert_disconnected(info.value)
    # New connections are accepted but hear nothing, not even the greeting. (PyMySQL reads
    # the greeting under read_timeout; mysqlclient under connect_timeout.)
    start = time.monotonic()
    with pytest.raises(Exception):
        closing(connect_raw(driver, proxy, connect_timeout=1, read_timeout=1))
    assert time.monotonic() - start < 5
    proxy.blackhole(False)
    assert query(closing(connect_raw(driver, proxy)), "SELECT 3")[0][0] == 3


@pytest.mark.faults
def test_cut_all_breaks_connections(
    db: MariaDBServer, fault_proxy: ProxyFactory, driver: str, closing: Any
) -> None:
    proxy = fault_proxy(db)
    conn = closing(connect_raw(driver, proxy))
    assert query(conn, "SELECT 1")[0][0] == 1
    assert proxy.active_connections == 1
    proxy.cut_all()
    assert proxy.active_connections == 0
    with pytest.raises(Exception) as info:
        query(conn, "SELECT 1")
    assert_disconnected(info.value)
    assert query(closing(connect_raw(driver, proxy)), "SELECT 2")[0][0] == 2


@pytest.mark.faults
def test_refuse_new_makes_connect_fail(
    db: MariaDBServer, fault_proxy: ProxyFactory, driver: str, closing: Any
) -> None:
    proxy = fault_proxy(db)
    existing = closing(connect_raw(driver, proxy))
    proxy.refuse_new(True)
    with pytest.raises(Exception) as info:
        closing(connect_raw(driver, proxy, connect_timeout=2))
    assert error_code(info.value) in DISCONNECT_CODES | {2002, 2003} or isinstance(
        info.value, OSError
    )
    assert query(existing, "SELECT 1")[0][0] == 1  # only new ones are refused
    proxy.refuse_new(False)
    assert query(closing(connect_raw(driver, proxy)), "SELECT 2")[0][0] == 2


@pytest.mark.faults
def test_lost_reply_leaves_a_commit_in_doubt(
    db: MariaDBServer, fault_proxy: ProxyFactory, driver: str, closing: Any
) -> None:
    db.execute_admin("CREATE TABLE app.t (id INT PRIMARY KEY)")
    proxy = fault_proxy(db)
    conn = closing(connect_raw(driver, proxy))
    query(conn, "INSERT INTO t VALUES (1)")
    assert db.execute_admin("SELECT COUNT(*) FROM app.t")[0][0] == 0  # not committed yet
    proxy.lose_next_reply(b"COMMIT")
    with pytest.raises(Exception) as info:
        conn.commit()
    assert_disconnected(info.value)
    # The server committed it all the same: the client just never heard.
    assert db.execute_admin("SELECT COUNT(*) FROM app.t")[0][0] == 1


@pytest.mark.faults
def test_delay_adds_latency(
    db: MariaDBServer, fault_proxy: ProxyFactory, driver: str, closing: Any
) -> None:
    proxy = fault_proxy(db)
    conn = closing(connect_raw(driver, proxy))
    proxy.delay(0.2)
    start = time.monotonic()
    assert query(conn, "SELECT 1")[0][0] == 1
    assert time.monotonic() - start >= 0.2
    proxy.pass_through()
    assert query(conn, "SELECT 2")[0][0] == 2


def test_proxy_idles_without_cpu_and_joins_its_threads(db: MariaDBServer, closing: Any) -> None:
    with FaultProxy.in_front_of(db) as proxy:
        prefix = f"tether-proxy-{proxy.port}-"
        conns = [closing(connect_raw("pymysql", proxy)) for _ in range(3)]
        assert proxy.active_connections == 3
        proxy.blackhole(True)  # blackholed links must idle too
        cpu = time.process_time()
        time.sleep(1.0)
        # A polling or spinning pump would show here; idle threads cost next to nothing.
        assert time.process_time() - cpu < 0.3
        proxy.blackhole(False)
    assert not [t.name for t in threading.enumerate() if t.name.startswith(prefix)]
    assert proxy.active_connections == 0
    with pytest.raises(Exception) as info:
        query(conns[0], "SELECT 1")
    assert_disconnected(info.value)
