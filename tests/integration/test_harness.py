"""The test foundation itself: the private server and the fault proxy really produce the
failures the rest of the suite relies on, through both real drivers."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from tether.testing import FaultProxy, MariaDBServer, connect_raw

DISCONNECT = {2006, 2013, 2055, 4031}


def connect(driver: str, server: MariaDBServer, proxy: FaultProxy | None = None, **kw: Any) -> Any:
    host, port = proxy.address if proxy else (server.host, server.port)
    return connect_raw(driver, host, port, server.user, server.password, server.database, **kw)


def query(conn: Any, sql: str) -> Any:
    cur = conn.cursor()
    cur.execute(sql)
    rows = cur.fetchall()
    cur.close()
    return rows


def errno_of(exc: BaseException) -> int:
    return int(exc.args[0]) if exc.args and isinstance(exc.args[0], int) else -1


def test_server_runs_privately_and_answers(db: MariaDBServer, driver: str) -> None:
    assert db.port != 3306 and db.is_running()
    conn = connect(driver, db)
    assert query(conn, "SELECT DATABASE(), CURRENT_USER()")[0][0] == "app"
    conn.close()


@pytest.mark.slow
@pytest.mark.faults
def test_restart_really_drops_sessions(mariadb_factory: Any, driver: str) -> None:
    server = mariadb_factory()
    conn = connect(driver, server)
    before = query(conn, "SELECT CONNECTION_ID()")
    port = server.port
    server.restart(down=0.5)
    assert server.port == port
    with pytest.raises(Exception) as info:
        query(conn, "SELECT 1")
    assert errno_of(info.value) in DISCONNECT or isinstance(info.value, OSError)
    fresh = connect(driver, server)
    assert query(fresh, "SELECT 1")[0][0] == 1
    assert before  # the old session existed
    fresh.close()


@pytest.mark.faults
def test_kill9_and_start_again(mariadb_factory: Any) -> None:
    server = mariadb_factory()
    pid = server.pid
    server.kill9()
    assert not server.is_running()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    server.start()
    assert server.threads_connected() >= 1


@pytest.mark.faults
def test_blackhole_makes_a_read_time_out(db: MariaDBServer, fault_proxy: Any, driver: str) -> None:
    proxy = fault_proxy(db)
    conn = connect(driver, db, proxy, read_timeout=1)
    assert query(conn, "SELECT 1")[0][0] == 1
    proxy.blackhole()
    start = time.monotonic()
    with pytest.raises(Exception) as info:
        query(conn, "SELECT 2")
    assert time.monotonic() - start < 5
    assert errno_of(info.value) in DISCONNECT
    proxy.pass_through()


@pytest.mark.faults
def test_max_user_connections_yields_1226(db: MariaDBServer, driver: str) -> None:
    db.create_user("capped", "capped-pw", max_user_connections=2)
    conns = [
        connect_raw(driver, db.host, db.port, "capped", "capped-pw", db.database) for _ in range(2)
    ]
    with pytest.raises(Exception) as info:
        connect_raw(driver, db.host, db.port, "capped", "capped-pw", db.database)
    assert errno_of(info.value) == 1226
    for c in conns:
        c.close()


@pytest.mark.slow
@pytest.mark.faults
def test_short_wait_timeout_yields_gone_away(db: MariaDBServer, driver: str) -> None:
    db.set_global("wait_timeout", 2)
    conn = connect(driver, db)
    time.sleep(3)
    with pytest.raises(Exception) as info:
        query(conn, "SELECT 1")
    assert errno_of(info.value) in DISCONNECT


@pytest.mark.faults
def test_kill_sessions_kills(db: MariaDBServer, driver: str) -> None:
    conn = connect(driver, db)
    (session,) = query(conn, "SELECT CONNECTION_ID()")[0]
    assert db.kill_sessions(ids=[session]) == 1
    with pytest.raises(Exception) as info:
        query(conn, "SELECT 1")
    assert errno_of(info.value) in DISCONNECT | {1927}
    assert db.connections_of() == 0


@pytest.mark.faults
def test_cut_all_breaks_connections(db: MariaDBServer, fault_proxy: Any, driver: str) -> None:
    proxy = fault_proxy(db)
    conn = connect(driver, db, proxy)
    query(conn, "SELECT 1")
    assert proxy.active_connections == 1
    proxy.cut_all()
    with pytest.raises(Exception) as info:
        query(conn, "SELECT 1")
    assert errno_of(info.value) in DISCONNECT


@pytest.mark.faults
def test_refuse_new_makes_connect_fail(db: MariaDBServer, fault_proxy: Any, driver: str) -> None:
    proxy = fault_proxy(db)
    proxy.refuse_new()
    with pytest.raises(Exception) as info:
        connect(driver, db, proxy, connect_timeout=2)
    assert errno_of(info.value) in DISCONNECT | {2002, 2003}
    proxy.refuse_new(False)
    conn = connect(driver, db, proxy)
    assert query(conn, "SELECT 1")[0][0] == 1


@pytest.mark.faults
def test_lost_reply_leaves_commit_in_doubt(
    db: MariaDBServer, fault_proxy: Any, driver: str
) -> None:
    db.execute_admin(f"CREATE TABLE {db.database}.t (id INT PRIMARY KEY)")
    proxy = fault_proxy(db)
    conn = connect(driver, db, proxy)
    conn.begin()
    cur = conn.cursor()
    cur.execute("INSERT INTO t VALUES (1)")
    proxy.lose_next_reply(b"COMMIT")
    with pytest.raises(Exception) as info:
        conn.commit()
    assert errno_of(info.value) in DISCONNECT
    # The server committed it all the same.
    assert db.execute_admin(f"SELECT COUNT(*) FROM {db.database}.t")[0][0] == 1


@pytest.mark.faults
def test_delay_adds_latency(db: MariaDBServer, fault_proxy: Any, driver: str) -> None:
    proxy = fault_proxy(db)
    conn = connect(driver, db, proxy)
    proxy.delay(0.2)
    start = time.monotonic()
    query(conn, "SELECT 1")
    assert time.monotonic() - start >= 0.2
    proxy.pass_through()


def test_stop_leaves_nothing_running(mariadb_factory: Any) -> None:
    server = mariadb_factory(options={"max_connections": 20})
    assert server.execute_admin("SELECT @@max_connections")[0][0] == 20
    pid = server.pid
    basedir = server.basedir
    server.stop()
    assert not server.is_running()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not basedir.exists()
