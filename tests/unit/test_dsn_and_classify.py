from __future__ import annotations

import pytest

import tether
from tether.dsn import parse_dsn
from tether.statements import is_read_only


def test_parse_full_dsn() -> None:
    dsn = parse_dsn(
        "mysql+pymysql://app:p%40ss@db.local:3307/shop?charset=utf8mb4&connect_timeout=3"
    )
    assert (dsn.host, dsn.port, dsn.user, dsn.password, dsn.database) == (
        "db.local",
        3307,
        "app",
        "p@ss",
        "shop",
    )
    assert dsn.driver == "pymysql"
    assert dsn.options == {"charset": "utf8mb4", "connect_timeout": 3.0}
    assert "p@ss" not in repr(dsn) and "p@ss" not in str(dsn)


def test_database_url_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "mysql://u:pw@127.0.0.1/d")
    assert parse_dsn(None).database == "d"
    monkeypatch.delenv("DATABASE_URL")
    with pytest.raises(tether.DSNError, match="DATABASE_URL"):
        parse_dsn(None)


@pytest.mark.parametrize(
    ("dsn", "says"),
    [
        ("postgres://u:topsecret@h/d", "scheme"),
        ("127.0.0.1:3306", "URL"),
        ("mysql://u:topsecret@h:99999/d", "port"),
        ("mysql://u:topsecret@h:abc/d", "port"),
        ("mysql://u:topsecret@/d", "host"),
        ("mysql://u:topsecret@h/d?bogus=1", "bogus"),
        ("mysql://u:topsecret@h/d?connect_timeout=-1", "connect_timeout"),
        ("mysql://u:topsecret@h/a/b", "single database"),
    ],
)
def test_bad_dsn_says_what_is_wrong_without_the_password(dsn: str, says: str) -> None:
    with pytest.raises(tether.DSNError) as info:
        parse_dsn(dsn)
    assert says in str(info.value)
    assert "topsecret" not in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("query", "read_only"),
    [
        ("SELECT * FROM t", True),
        ("  /* hint */ select 1", True),
        ("-- comment\nSHOW TABLES", True),
        ("(SELECT 1) UNION (SELECT 2)", True),
        ("EXPLAIN SELECT 1", True),
        ("WITH x AS (SELECT 1) SELECT * FROM x", True),
        ("WITH x AS (SELECT 1) DELETE FROM t", False),
        ("SELECT * FROM t INTO OUTFILE '/tmp/x'", False),
        ("INSERT INTO t VALUES (1)", False),
        ("UPDATE t SET a = 1", False),
        ("CALL p()", False),
        (b"SELECT 1", True),
        ("", False),
    ],
)
def test_read_only_statements(query: str, read_only: bool) -> None:
    assert is_read_only(query) is read_only
