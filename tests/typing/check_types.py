"""What type checkers see of tether's public API: checked with ``mypy --strict`` (by
tests/integration/test_dropin.py), never run. Every ``assert_type`` states a type a caller
relies on."""

from __future__ import annotations

from typing import assert_type

import MySQLdb.cursors
import pymysql.cursors

import tether


def checkout(pool: tether.Pool) -> None:
    with pool.connection() as conn:
        assert_type(conn, tether.PooledConnection)
        cur = conn.cursor()
        assert_type(cur, tether.DBAPICursor)
        assert_type(cur.execute("SELECT %s", (1,)), int)
        assert_type(cur.execute("SELECT 1", timeout=2.5, idempotent=True), int)
        assert_type(cur.rowcount, int)
        assert_type(cur.lastrowid, int | None)
        with conn.cursor() as managed:
            assert_type(managed, tether.DBAPICursor)
        # The driver's own cursor classes, as each driver takes them.
        assert_type(conn.cursor(pymysql.cursors.DictCursor), pymysql.cursors.DictCursor)
        assert_type(conn.cursor(cursor=pymysql.cursors.SSCursor), pymysql.cursors.SSCursor)
        assert_type(conn.cursor(cursorclass=MySQLdb.cursors.DictCursor), MySQLdb.cursors.DictCursor)
        conn.ping(reconnect=True)
        conn.begin()
        conn.commit()
        conn.rollback()
        assert_type(conn.open, bool)
        assert_type(conn.closed, bool)
    assert_type(pool.connection(timeout=1.5), tether.PooledConnection)


def transactions(pool: tether.Pool, mapped: tether.ThreadLocalPool) -> None:
    def names(conn: tether.PooledConnection) -> list[str]:
        cur = conn.cursor()
        cur.execute("SELECT name FROM city")
        return [str(row[0]) for row in cur.fetchall()]

    def count(conn: tether.PooledConnection) -> int:
        return 3

    assert_type(pool.run_transaction(names), list[str])
    assert_type(pool.run_transaction(count, attempts=5, timeout=2.0), int)
    assert_type(mapped.run_transaction(names), list[str])
    assert_type(pool.run_transaction(lambda conn: (1, "a")), tuple[int, str])
    with pool.transaction() as conn:
        assert_type(conn, tether.PooledConnection)


def construction() -> None:
    pool = tether.Pool("mysql://app:pw@db/app", driver="pymysql", max_size=4, timeout=2.5)
    assert_type(pool, tether.Pool)
    mapped = tether.ThreadLocalPool(tether.parse_dsn("mysql://app:pw@db/app"), min_size=1)
    assert_type(mapped, tether.ThreadLocalPool)
    assert_type(pool.stats(), tether.PoolStats)
    assert_type(pool.stats().counters, tether.Counters)
    assert_type(pool.config, tether.PoolConfig)
    with tether.Pool(error_kinds={1146: tether.ErrorKind.DISCONNECT}) as scoped:
        assert_type(scoped, tether.Pool)


def errors(pool: tether.Pool) -> None:
    try:
        pool.connection()
    except tether.PoolTimeout as exc:
        assert_type(exc.errno, int)
    except tether.TransactionLost as lost:
        assert_type(lost.errno, int)
