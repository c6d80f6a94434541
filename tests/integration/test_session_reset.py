"""A session changed by its borrower is reset when it comes back to tether.Pool, and what the
configuration set up is there again: sql_mode and init_command from the DSN or connect_args,
the character set the driver encodes in, the database, tether's init_commands, autocommit.
Read back from the server, both drivers; advisory locks are released (another session can
take the lock after the give-back)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import pytest

import tether
from tether.testing import MariaDBServer, connect_raw

PROBE = (
    "SELECT CONNECTION_ID(), @@SESSION.sql_mode, @@SESSION.time_zone,"
    " @@character_set_client, @@character_set_connection, @@character_set_results,"
    " @@collation_connection, DATABASE(), @@autocommit, @@SESSION.group_concat_max_len,"
    " @@SESSION.tx_isolation, @@SESSION.max_statement_time, @x, @@in_transaction"
)
NAMES = (
    "session",
    "sql_mode",
    "time_zone",
    "character_set_client",
    "character_set_connection",
    "character_set_results",
    "collation_connection",
    "database",
    "autocommit",
    "group_concat_max_len",
    "tx_isolation",
    "max_statement_time",
    "@x",
    "in_transaction",
)


def probe(conn: Any) -> dict[str, Any]:
    cur = conn.cursor()
    cur.execute(PROBE)
    row = cur.fetchone()
    cur.close()
    return dict(zip(NAMES, row, strict=True))


def run(conn: Any, sql: str) -> None:
    cur = conn.cursor()
    cur.execute(sql)
    cur.fetchall()
    cur.close()


# How a pool is configured: (DSN query options, pool options) and what the session must show.
CONFIGS: dict[str, tuple[dict[str, str], dict[str, Any], dict[str, Any]]] = {
    "dsn": (
        {"sql_mode": "ANSI_QUOTES,STRICT_ALL_TABLES", "init_command": "SET time_zone = '+03:00'"},
        {},
        {"sql_mode": "ANSI_QUOTES,STRICT_ALL_TABLES", "time_zone": "+03:00"},
    ),
    "dsn-charset": (
        {"charset": "latin1", "sql_mode": "TRADITIONAL"},
        {"init_commands": ["SET SESSION group_concat_max_len = 12345"]},
        {"character_set_client": "latin1", "group_concat_max_len": 12345},
    ),
    "connect_args": (
        {},
        {
            "connect_args": {
                "charset": "latin1",
                "sql_mode": "ANSI_QUOTES",
                "init_command": "SET time_zone = '-04:00'",
            },
            "init_commands": [
                "SET SESSION group_concat_max_len = 4321",
                "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
            ],
        },
        {
            "sql_mode": "ANSI_QUOTES",
            "time_zone": "-04:00",
            "character_set_client": "latin1",
            "character_set_connection": "latin1",
            "character_set_results": "latin1",
            "group_concat_max_len": 4321,
            "tx_isolation": "READ-COMMITTED",
        },
    ),
    "autocommit-off": (
        {},
        {"autocommit": False, "init_commands": ["SET SESSION group_concat_max_len = 777"]},
        {"autocommit": 0, "group_concat_max_len": 777},
    ),
    "utf8mb4-collation": (
        {},
        {"connect_args": {"charset": "utf8mb4", "collation": "utf8mb4_unicode_ci"}},
        {"character_set_client": "utf8mb4", "collation_connection": "utf8mb4_unicode_ci"},
    ),
    "query_timeout": (
        {},
        {"query_timeout": 7.5},
        {"max_statement_time": 7.5},
    ),
}

# What a borrower does to its session before giving it back.
CHANGES = [
    "SET @x = 42",
    "SELECT @x := 42",
    "SET time_zone = '+11:00'",
    "SET SESSION sql_mode = 'NO_BACKSLASH_ESCAPES'",
    "SET NAMES latin1",
    "SET NAMES utf8mb4 COLLATE utf8mb4_bin",
    "SET character_set_results = NULL",
    "SET SESSION group_concat_max_len = 99",
    "SET SESSION TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    "SET SESSION max_statement_time = 123",
    "SET autocommit = 0",
    "SET autocommit = 1",
    "USE information_schema",
    "SELECT GET_LOCK('tether-reset-lock', 0)",
    "CREATE TEMPORARY TABLE tmp_reset (a INT)",
]


def make_dsn(db: MariaDBServer, options: dict[str, str]) -> str:
    return db.dsn() + ("?" + urlencode(options) if options else "")


@pytest.fixture
def pool_for(db: MariaDBServer, driver: str) -> Any:
    made: list[tether.Pool] = []

    def make(config: str, cls: type[tether.Pool] = tether.Pool, **extra: Any) -> tether.Pool:
        options, pool_options, _ = CONFIGS[config]
        pool = cls(make_dsn(db, options), driver=driver, **{**pool_options, **extra})
        made.append(pool)
        return pool

    yield make
    for pool in made:
        pool.close()


@pytest.mark.parametrize("change", CHANGES)
@pytest.mark.parametrize("config", list(CONFIGS))
def test_a_reset_session_is_as_configured(
    pool_for: Callable[..., tether.Pool], db: MariaDBServer, config: str, change: str
) -> None:
    pool = pool_for(config, max_size=1)
    with pool.connection() as conn:
        fresh = probe(conn)
        if not pool.config.autocommit:
            conn.rollback()
    for name, value in CONFIGS[config][2].items():
        assert fresh[name] == value, (name, fresh)
    assert fresh["database"] == db.database and fresh["@x"] is None
    with pool.connection() as conn:
        run(conn, change)
        if not pool.config.autocommit:
            conn.commit()
    with pool.connection() as conn:
        after = probe(conn)
        if not pool.config.autocommit:
            conn.rollback()
    # The same session (reset, not replaced) ...
    assert after["session"] == fresh["session"], "the session was replaced, not reset"
    # ... as it was when it was new.
    assert after == fresh
    stats = pool.stats()
    assert stats.closed_by_reason == {}
    assert stats["resets"] + stats["rollbacks"] >= 1 or change == "SET autocommit = 1"


@pytest.mark.parametrize("config", ["dsn", "connect_args"])
def test_advisory_locks_are_released_at_the_give_back(
    pool_for: Callable[..., tether.Pool], db: MariaDBServer, driver: str, config: str
) -> None:
    pool = pool_for(config, max_size=1)
    with pool.connection() as conn:
        cur = conn.cursor()
        cur.execute("SELECT GET_LOCK('tether-job', 0), GET_LOCK('tether-other', 0)")
        assert cur.fetchone() == (1, 1)
        cur.close()
    other = connect_raw(driver, db)
    try:
        cur = other.cursor()
        cur.execute("SELECT GET_LOCK('tether-job', 0), GET_LOCK('tether-other', 0)")
        assert cur.fetchone() == (1, 1), "a lock outlived its borrower"
        cur.execute("SELECT RELEASE_ALL_LOCKS()")
        cur.close()
    finally:
        other.close()


@pytest.mark.parametrize("config", ["dsn-charset", "connect_args", "utf8mb4-collation"])
def test_text_round_trips_after_a_charset_change(
    pool_for: Callable[..., tether.Pool], db: MariaDBServer, config: str
) -> None:
    """The driver encodes in the configured character set whatever the borrower before
    did: after a reset the server decodes and encodes in it again."""
    db.execute_admin(
        f"CREATE TABLE {db.database}.words (w VARCHAR(20) CHARACTER SET utf8mb4)"
        " DEFAULT CHARSET=utf8mb4"
    )
    db.execute_admin(f"INSERT INTO {db.database}.words VALUES ('café')")
    pool = pool_for(config, max_size=1)
    for change in ("SET NAMES utf8mb4", "SET NAMES latin1", "SET character_set_results = NULL"):
        with pool.connection() as conn:
            run(conn, change)
        with pool.connection() as conn:
            cur = conn.cursor()
            cur.execute("SELECT w, w = %s FROM words", ("café",))
            assert cur.fetchone() == ("café", 1), change
            cur.execute("INSERT INTO words VALUES (%s)", ("naïve",))
            cur.close()
    rows = db.execute_admin(f"SELECT w FROM {db.database}.words WHERE w <> 'café'")
    assert [r[0] for r in rows] == ["naïve"] * 3


def test_a_takeover_at_the_bound_resets_the_session(
    pool_for: Callable[..., tether.Pool], db: MariaDBServer
) -> None:
    """ThreadLocalPool keeps a thread's session as it left it, but another thread taking it
    over at the bound gets it reset to what the configuration set up."""
    pool = pool_for("connect_args", cls=tether.ThreadLocalPool, max_size=1)
    with pool.connection() as conn:
        fresh = probe(conn)
        for change in ("SET @x = 42", "SET NAMES utf8mb4", "USE information_schema"):
            run(conn, change)
    with pool.connection() as conn:
        kept = probe(conn)
    assert kept["@x"] == 42 and kept["database"] == "information_schema"
    seen: list[Any] = []

    def other() -> None:
        try:
            with pool.connection(timeout=10) as conn:
                seen.append(probe(conn))
        except BaseException as exc:
            seen.append(exc)

    t = threading.Thread(target=other)
    t.start()
    t.join(15)
    assert seen == [fresh]
    assert pool.stats()["takeovers"] == 1
