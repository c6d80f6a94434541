"""What each statement means for the transaction SQLAlchemy believes is open on tether: the
table the lazy BEGIN is decided on (no I/O)."""

from __future__ import annotations

import pytest

pytest.importorskip("sqlalchemy")

from tether.contrib.sqlalchemy.dbapi import (
    _ENDS,
    _NEVER,
    _OPENS,
    _READ,
    _WRITE,
    statement_kind,
)

CASES = [
    ("SELECT id FROM city WHERE name = %s", _READ),
    ("  /* c */ select 1", _READ),
    ("SHOW VARIABLES LIKE 'sql_mode'", _READ),
    ("WITH t AS (SELECT 1) SELECT * FROM t", _READ),
    ("SELECT id FROM t WHERE id = 1 FOR UPDATE", _WRITE),
    ("SELECT id FROM t FOR SHARE", _WRITE),
    ("SELECT id FROM t LOCK IN SHARE MODE", _WRITE),
    ("SELECT 1 INTO OUTFILE '/tmp/x'", _WRITE),
    ("INSERT INTO t VALUES (%s)", _WRITE),
    (b"UPDATE t SET n = n + 1", _WRITE),
    ("DELETE FROM t", _WRITE),
    ("WITH t AS (SELECT 1) UPDATE u SET n = 1", _WRITE),
    ("SAVEPOINT sa_savepoint_1", _WRITE),
    ("RELEASE SAVEPOINT sa_savepoint_1", _WRITE),
    ("ROLLBACK TO SAVEPOINT sa_savepoint_1", _WRITE),
    ("BEGIN", _OPENS),
    ("START TRANSACTION", _OPENS),
    ("COMMIT", _ENDS),
    ("ROLLBACK", _ENDS),
    ("SET NAMES utf8mb4", _NEVER),
    ("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED", _NEVER),
    ("CREATE TABLE t (id INT)", _NEVER),
    ("DROP TABLE t", _NEVER),
    ("SELECT 1; DELETE FROM t", _WRITE),
]


@pytest.mark.parametrize(("query", "kind"), CASES)
def test_statement_kind(query: str | bytes, kind: int) -> None:
    assert statement_kind(query) == kind
    assert statement_kind(query) == kind  # the remembered answer is the same
