from __future__ import annotations

import re

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


@pytest.mark.parametrize(
    "dsn",
    [
        "mysql://u:pw@h/d?port=-5",
        "mysql://u:pw@h/d?port=0",
        "mysql://u:pw@h/d?port=65536",
        "mysql://u:pw@h/d?port=33o6",
        "mysql://u:pw@h:-5/d",
        "mysql://u:pw@h:0/d",
    ],
)
def test_a_port_out_of_range_is_a_dsn_error(dsn: str) -> None:
    with pytest.raises(tether.DSNError, match="port"):
        parse_dsn(dsn)


# A password holding '/', '?' or '#' unencoded cuts the URL's authority short: the error must
# say to percent-encode it (not blame the port, not echo any part of the password).
UNENCODED = [
    ("mysql://app:top/secret@db.local/app", "top/secret"),
    ("mysql://app:top?secret@db.local/app", "top?secret"),
    ("mysql://app:top#secret@db.local/app", "top#secret"),
    ("mysql://app:top/secret@db.local:3306/app", "top/secret"),
    ("mysql://app:top#secret@db.local:3306/app?charset=utf8mb4", "top#secret"),
    ("mysql://app:/topsecret@db.local/app", "/topsecret"),
    ("mysql://app:topsecret?@db.local/app", "topsecret?"),
    ("mysql://app:12/34secret@db.local/app", "12/34secret"),  # a digit before '/': no port
    ("mysql+pymysql://app:a#b/c?d@db.local/app", "a#b/c?d"),
    # '?' then '=' in the password looks like a query string to the URL parser.
    ("mysql://app:top?secret=1@db.local/app", "top?secret=1"),
    ("mysql://app:9?topsecret=1@db.local/app", "9?topsecret=1"),
    ("mysql://app:pa55?w0rd=x@db.local:3306/app", "pa55?w0rd=x"),
    ("mysql://app:ab?c=d@10.0.0.1:3306/app?charset=utf8mb4", "ab?c=d"),
]


@pytest.mark.parametrize(
    ("dsn", "password"),
    UNENCODED,
)
def test_an_unencoded_password_says_to_percent_encode_it(dsn: str, password: str) -> None:
    with pytest.raises(tether.DSNError) as info:
        parse_dsn(dsn)
    message = str(info.value)
    assert "percent-encode" in message
    assert "port is not a number" not in message
    for piece in [password, *(p for p in re.split(r"[/?#=]", password) if len(p) >= 3)]:
        assert piece not in message, piece
    # Nothing chained that a traceback would show (it could quote the URL's netloc).
    error = info.value
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__


@pytest.mark.parametrize(
    ("dsn", "password"),
    [
        ("mysql://app:top%2Fsecret@db.local/app", "top/secret"),
        ("mysql://app:top%3Fsecret%3D1@db.local/app", "top?secret=1"),
        ("mysql://app:top%23secret@db.local/app", "top#secret"),
        ("mysql://app:p@ss@db.local/app", "p@ss"),  # the last '@' ends the credentials
        ("mysql://app:a:b@db.local/app", "a:b"),
    ],
)
def test_a_percent_encoded_password_is_decoded(dsn: str, password: str) -> None:
    parsed = parse_dsn(dsn)
    assert (parsed.user, parsed.password, parsed.host, parsed.database) == (
        "app",
        password,
        "db.local",
        "app",
    )
    assert password not in repr(parsed) and password not in parsed.redacted()


def test_an_init_command_with_a_user_variable_is_no_password_problem() -> None:
    parsed = parse_dsn("mysql://app:pw@db.local/app?init_command=SET%20@x%3D1&sql_mode=ANSI")
    assert parsed.options == {"init_command": "SET @x=1", "sql_mode": "ANSI"}
    parsed = parse_dsn("mysql://app:pw@db.local/app?init_command=SET @x=1")
    assert parsed.options == {"init_command": "SET @x=1"}
