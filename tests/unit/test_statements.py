"""tether.statements as tables: a statement's first word, whether it only reads (a replay
changes nothing), whether it may leave session state the server's tracking does not flag, and
a statement bounded by a server-side timeout."""

from __future__ import annotations

import re

import pytest

from tether.statements import (
    first_word,
    is_read_only,
    leaves_session_state,
    with_statement_timeout,
)

FIRST_WORDS = [
    ("SELECT 1", "SELECT"),
    ("select 1", "SELECT"),
    ("  \n\tSELECT 1", "SELECT"),
    ("/* a hint */ SELECT 1", "SELECT"),
    ("/* one */ /* two */insert into t values (1)", "INSERT"),
    ("-- a comment\nUPDATE t SET a = 1", "UPDATE"),
    ("# a comment\nDELETE FROM t", "DELETE"),
    ("((SELECT 1)) UNION (SELECT 2)", "SELECT"),
    ("SET_VAR", "SET_VAR"),
    ("BEGIN;", "BEGIN"),
    (b"  replace INTO t VALUES (1)", "REPLACE"),
    ("", ""),
    ("   ", ""),
    ("-- only a comment", ""),
    ("123", ""),
]


@pytest.mark.parametrize(("query", "word"), FIRST_WORDS)
def test_first_word(query: str | bytes, word: str) -> None:
    assert first_word(query) == word


READ_ONLY = [
    # Reads.
    ("SELECT * FROM t", True),
    ("select 1", True),
    ("SHOW TABLES", True),
    ("SHOW SESSION VARIABLES LIKE 'x'", True),
    ("DESCRIBE t", True),
    ("DESC t", True),
    ("EXPLAIN SELECT 1", True),
    ("HELP 'SELECT'", True),
    ("VALUES (1), (2)", True),
    ("TABLE t", True),
    ("(SELECT 1) UNION ALL (SELECT 2)", True),
    ("/* x */ -- y\nSELECT 1", True),
    ("WITH x AS (SELECT 1) SELECT * FROM x", True),
    ("WITH RECURSIVE r AS (SELECT 1 UNION SELECT n + 1 FROM r) SELECT * FROM r", True),
    (b"SELECT 1", True),
    ("SELECT 'INSERT INTO t' AS text", True),
    # Writes, or anything that is not provably a read.
    ("INSERT INTO t VALUES (1)", False),
    ("UPDATE t SET a = 1", False),
    ("DELETE FROM t", False),
    ("REPLACE INTO t VALUES (1)", False),
    ("CREATE TABLE t (a INT)", False),
    ("DROP TABLE t", False),
    ("CALL p()", False),
    ("DO SLEEP(1)", False),
    ("SET @x = 1", False),
    ("BEGIN", False),
    ("COMMIT", False),
    ("LOCK TABLES t READ", False),
    ("LOAD DATA INFILE 'x' INTO TABLE t", False),
    ("SELECT * FROM t INTO OUTFILE '/tmp/x'", False),
    ("select * from t into dumpfile '/tmp/x'", False),
    ("WITH x AS (SELECT 1) DELETE FROM t", False),
    ("WITH x AS (SELECT 1) UPDATE t SET a = 1", False),
    ("WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x", False),
    ("WITH x AS (SELECT 1) SELECT * FROM x INTO OUTFILE '/tmp/x'", False),
    (b"DELETE FROM t", False),
    ("", False),
    ("-- nothing", False),
    # Several statements in one call (CLIENT.MULTI_STATEMENTS): a write after a read is
    # still a write; a replay would run it twice.
    ("SELECT 1; INSERT INTO t VALUES (1)", False),
    ("SELECT 1;DELETE FROM t", False),
    ("SHOW TABLES; UPDATE t SET a = a + 1", False),
]


@pytest.mark.parametrize(("query", "read_only"), READ_ONLY)
def test_is_read_only(query: str | bytes, read_only: bool) -> None:
    assert is_read_only(query) is read_only


SESSION_STATE = [
    # What the server's session tracking does not flag: tether must see it in the text.
    ("SELECT @n := 1", True),
    ("SELECT @n:=COUNT(*) FROM t", True),
    ("select @n := @n + 1 from t", True),
    ("SELECT 1 INTO @n", True),
    ("SELECT a, b FROM t LIMIT 1 INTO @a, @b", True),
    ("SELECT GET_LOCK('job', 0)", True),
    ("select get_lock('job', 10)", True),
    ("DO GET_LOCK('job', 0)", True),
    ("SET @x := 1", True),
    (b"SELECT @n := 1", True),
    (b"SELECT GET_LOCK('x', 0)", True),
    (b"SELECT 1 INTO @n", True),
    # Not flagged by the server, unlike the plain CREATE TEMPORARY TABLE.
    ("CREATE TEMPORARY TABLE t AS SELECT 1 a", True),
    ("create temporary table t select * from u", True),
    (b"CREATE TEMPORARY TABLE t AS SELECT 1", True),
    # Nothing of the kind.
    ("SELECT 1", False),
    ("SELECT * FROM t WHERE a = %s", False),
    ("SELECT @@session.time_zone", False),
    ("SELECT @x", False),
    ("SELECT 'a@b.example' AS mail", False),
    ("SELECT RELEASE_LOCK('job')", False),
    ("SELECT IS_FREE_LOCK('job')", False),
    ("UPDATE t SET a = 1", False),
    (b"SELECT 1", False),
    (b"SELECT @@autocommit", False),
    ("", False),
]


@pytest.mark.parametrize(("query", "leaves"), SESSION_STATE)
def test_leaves_session_state(query: str | bytes, leaves: bool) -> None:
    assert leaves_session_state(query) is leaves


def test_leaves_session_state_errs_on_the_side_of_yes() -> None:
    # A write that mentions an address and INTO: flagged (a reset costs a round trip; a
    # missed state costs a wrong replay).
    assert leaves_session_state("INSERT INTO t VALUES ('a@b.example')")


MARIADB = [
    ("SELECT 1", 5, "SET STATEMENT max_statement_time = 5.000 FOR SELECT 1"),
    ("SELECT 1", 0.25, "SET STATEMENT max_statement_time = 0.250 FOR SELECT 1"),
    ("UPDATE t SET a = 1", 2.5, "SET STATEMENT max_statement_time = 2.500 FOR UPDATE t SET a = 1"),
    (b"SELECT 1", 1, b"SET STATEMENT max_statement_time = 1.000 FOR SELECT 1"),
]

MYSQL = [
    ("SELECT 1", 5, "SELECT /*+ MAX_EXECUTION_TIME(5000) */ 1"),
    ("select a from t", 0.25, "SELECT /*+ MAX_EXECUTION_TIME(250) */ a from t"),
    ("(SELECT 1) UNION (SELECT 2)", 1, "(SELECT /*+ MAX_EXECUTION_TIME(1000) */ 1) UNION (SELECT 2)"),  # noqa: E501
    (b"SELECT 1", 1, b"SELECT /*+ MAX_EXECUTION_TIME(1000) */ 1"),
    # The hint goes on the statement's SELECT, not on a word in a comment before it.
    ("/* SELECT */ SELECT 1", 1, "/* SELECT */ SELECT /*+ MAX_EXECUTION_TIME(1000) */ 1"),
]  # fmt: skip


@pytest.mark.parametrize(("query", "timeout", "expected"), MARIADB)
def test_statement_timeout_on_mariadb(
    query: str | bytes, timeout: float, expected: str | bytes
) -> None:
    assert with_statement_timeout(query, timeout, mariadb=True) == expected


@pytest.mark.parametrize(("query", "timeout", "expected"), MYSQL)
def test_statement_timeout_on_mysql(
    query: str | bytes, timeout: float, expected: str | bytes
) -> None:
    assert with_statement_timeout(query, timeout, mariadb=False) == expected


@pytest.mark.parametrize("query", ["UPDATE t SET a = 1", "SHOW TABLES", "CALL p()"])
def test_statement_timeout_on_mysql_is_for_select_only(query: str) -> None:
    with pytest.raises(ValueError, match="SELECT only"):
        with_statement_timeout(query, 1, mariadb=False)


@pytest.mark.parametrize("bad", [0, -1, 0.0, True, "1", None, float("nan")])
@pytest.mark.parametrize("mariadb", [True, False])
def test_statement_timeout_must_be_positive_seconds(bad: object, mariadb: bool) -> None:
    with pytest.raises(ValueError, match="timeout must be a positive number"):
        with_statement_timeout("SELECT 1", bad, mariadb=mariadb)  # type: ignore[arg-type]


@pytest.mark.parametrize("timeout", [0.0004, 0.0001, 1e-9])
@pytest.mark.parametrize("mariadb", [True, False])
def test_a_tiny_statement_timeout_never_becomes_no_timeout(timeout: float, mariadb: bool) -> None:
    """The servers read 0 as "no limit": a positive timeout must stay a limit."""
    text = with_statement_timeout("SELECT 1", timeout, mariadb=mariadb)
    assert isinstance(text, str)
    found = re.search(r"max_statement_time = ([0-9.]+)|MAX_EXECUTION_TIME\((\d+)\)", text)
    assert found is not None
    value = float(found.group(1) or found.group(2))
    assert value > 0, text
