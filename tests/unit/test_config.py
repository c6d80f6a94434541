"""tether.config: every option's validation (a ValueError naming the option, at
construction, before anything connects), the defaults, the lifetime rule under the server's
wait_timeout; the same checks through the pools, the DSN and Flask's TETHER_OPTIONS."""

# ruff: noqa: E501 (the tables read best one case a line)

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

import tether
from tether.classify import ErrorKind
from tether.config import DEFAULTS, OPTION_NAMES, Lifetimes, PoolConfig, lifetimes_under

from .fakedriver import FakeDriver, FakeOperationalError

DSN = "mysql://app:s3cret-pw@127.0.0.1:3306/app"
NAN, INF = float("nan"), float("inf")

# ----------------------------------------------------------------------------- defaults

EXPECTED_DEFAULTS: dict[str, Any] = {
    "max_size": 10,
    "min_size": 0,
    "timeout": 10.0,  # with the defaults, a silent server costs a caller at most 10 s
    "connect_timeout": 5.0,
    "ping_after": 1.0,
    "ping_timeout": 2.0,
    "max_lifetime": 1800.0,
    "idle_timeout": 600.0,
    "keepalive": 60.0,
    "autocommit": True,
    "init_commands": (),
    "leak_timeout": None,
    "replay_reads": True,
    "evict_on_read_only": "connection",
    "error_kinds": {},
    "connect_args": {},
    "watchdog": 5.0,
    "query_timeout": None,
    "maintenance_interval": 1.0,
    "name": None,
    "budget": None,  # no fleet-wide budget unless asked for
    "budget_key": None,
    "budget_cap": None,
    "budget_reserve": 0,
    "budget_ttl": 10.0,
}


def test_defaults() -> None:
    assert set(EXPECTED_DEFAULTS) == OPTION_NAMES
    assert {name: getattr(DEFAULTS, name) for name in OPTION_NAMES} == EXPECTED_DEFAULTS
    assert PoolConfig() == DEFAULTS


def test_default_timeouts_bound_every_wait() -> None:
    """No default allows an unbounded hang, and a check-out (connect and health check
    included) fits in its own timeout."""
    d = DEFAULTS
    for name in ("timeout", "connect_timeout", "ping_timeout", "watchdog"):
        value = getattr(d, name)
        assert value is not None and 0 < value <= 10, name
    assert d.connect_timeout < d.timeout and d.ping_timeout < d.timeout
    assert d.watchdog is not None and d.watchdog < d.timeout


def test_flavour_defaults(fake: FakeDriver) -> None:
    pool = tether.Pool(DSN, driver=fake)
    mapped = tether.ThreadLocalPool(DSN, driver=fake)
    try:
        assert pool.config == DEFAULTS
        assert mapped.config == DEFAULTS.replace(max_size=32)
        assert tether.ThreadLocalPool(DSN, driver=fake, max_size=4).config.max_size == 4
    finally:
        pool.close()
        mapped.close()


# ----------------------------------------------------------------------------- validation

BAD: list[tuple[str, Any]] = [
    ("max_size", 0),
    ("max_size", -1),
    ("max_size", 1.5),
    ("max_size", True),
    ("max_size", "4"),
    ("max_size", None),
    ("min_size", -1),
    ("min_size", 0.5),
    ("min_size", False),
    ("timeout", 0),
    ("timeout", -1.0),
    ("timeout", NAN),
    ("timeout", INF),
    ("timeout", "1"),
    ("timeout", True),
    ("timeout", None),
    ("connect_timeout", 0),
    ("connect_timeout", "5"),
    ("connect_timeout", INF),
    ("ping_timeout", 0.0),
    ("ping_timeout", None),
    ("maintenance_interval", 0),
    ("maintenance_interval", NAN),
    ("ping_after", -0.1),
    ("ping_after", NAN),
    ("ping_after", None),
    ("ping_after", "1"),
    ("max_lifetime", 0),
    ("max_lifetime", -5),
    ("max_lifetime", "1800"),
    ("idle_timeout", 0),
    ("idle_timeout", INF),
    ("keepalive", -1),
    ("leak_timeout", 0),
    ("leak_timeout", "30"),
    ("watchdog", 0),
    ("watchdog", NAN),
    ("query_timeout", 0),
    ("query_timeout", -1),
    ("query_timeout", "5"),
    ("autocommit", 1),
    ("autocommit", "yes"),
    ("autocommit", None),
    ("replay_reads", "no"),
    ("replay_reads", 0),
    ("replay_reads", None),
    ("evict_on_read_only", "server"),
    ("evict_on_read_only", None),
    ("error_kinds", {1146: "retry"}),
    ("error_kinds", {1146: "DISCONNECT"}),
    ("error_kinds", {1146: 3}),
    ("error_kinds", {1146: None}),
    ("error_kinds", {"1146": ErrorKind.DISCONNECT}),
    ("error_kinds", {True: ErrorKind.DISCONNECT}),
    ("error_kinds", {-1: ErrorKind.DISCONNECT}),
    ("error_kinds", [(1146, "disconnect")]),
    ("error_kinds", None),
    ("connect_args", None),
    ("connect_args", [("charset", "utf8mb4")]),
    ("connect_args", {1: "x"}),
    ("init_commands", "SET @x = 1"),
    ("init_commands", b"SET @x = 1"),
    ("init_commands", ["SET @x = 1", ""]),
    ("init_commands", ["  "]),
    ("init_commands", [b"SET @x = 1"]),
    ("init_commands", None),
    ("init_commands", 5),
    ("name", 5),
    ("name", b"pool"),
]


@pytest.mark.parametrize(("option", "value"), BAD, ids=[f"{o}={v!r}" for o, v in BAD])
def test_impossible_values_raise_naming_the_option(option: str, value: Any) -> None:
    with pytest.raises(ValueError) as info:
        PoolConfig(**{option: value})
    message = str(info.value)
    assert option in message
    if isinstance(value, str) and value:
        assert repr(value) in message  # and says what was given


@pytest.mark.parametrize("arg", ["password", "passwd", "user", "host", "port", "database", "db"])
def test_connect_args_must_not_override_the_dsn(arg: str) -> None:
    with pytest.raises(ValueError, match=f"connect_args.*{arg!r}.*DSN"):
        PoolConfig(connect_args={arg: "x"})


def test_min_size_above_max_size() -> None:
    with pytest.raises(ValueError, match=r"min_size \(5\).*max_size \(4\)"):
        PoolConfig(max_size=4, min_size=5)
    assert PoolConfig(max_size=4, min_size=4).min_size == 4


GOOD: list[tuple[str, Any, Any]] = [
    ("max_size", 1, 1),
    ("min_size", 0, 0),
    ("timeout", 1, 1),
    ("timeout", 0.001, 0.001),
    ("ping_after", 0, 0),
    ("max_lifetime", None, None),
    ("idle_timeout", None, None),
    ("keepalive", None, None),
    ("watchdog", None, None),
    ("leak_timeout", 30, 30),
    ("query_timeout", 0.5, 0.5),
    ("autocommit", False, False),
    ("replay_reads", False, False),
    ("evict_on_read_only", "pool", "pool"),
    ("error_kinds", {1146: "disconnect"}, {1146: ErrorKind.DISCONNECT}),
    ("error_kinds", {1146: ErrorKind.DISCONNECT}, {1146: ErrorKind.DISCONNECT}),
    ("error_kinds", {9001: "capacity", 9002: "read_only"}, {9001: ErrorKind.CAPACITY, 9002: ErrorKind.READ_ONLY}),
    ("error_kinds", {1213: "retry_transaction"}, {1213: ErrorKind.RETRY_TRANSACTION}),
    ("init_commands", ["SET @a = 1", "SET @b = 2"], ("SET @a = 1", "SET @b = 2")),
    ("init_commands", ("SET @a = 1",), ("SET @a = 1",)),
    ("connect_args", {"charset": "latin1"}, {"charset": "latin1"}),
    ("name", "orders", "orders"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("option", "value", "stored"), GOOD, ids=[f"{o}={v!r}" for o, v, _ in GOOD]
)
def test_accepted_values(option: str, value: Any, stored: Any) -> None:
    assert getattr(PoolConfig(**{option: value}), option) == stored


def test_config_is_frozen_and_owns_its_values() -> None:
    commands = ["SET @a = 1"]
    kinds: dict[int, Any] = {9001: "capacity"}
    args = {"charset": "latin1"}
    config = PoolConfig(init_commands=commands, error_kinds=kinds, connect_args=args)
    commands.append("SET @b = 2")
    kinds[9002] = "disconnect"
    args["charset"] = "utf8mb4"
    assert config.init_commands == ("SET @a = 1",)
    assert config.error_kinds == {9001: ErrorKind.CAPACITY}
    assert config.connect_args == {"charset": "latin1"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.max_size = 99  # type: ignore[misc]
    assert config.replace(max_size=3).max_size == 3
    with pytest.raises(ValueError, match="max_size"):
        config.replace(max_size=0)


def test_unknown_option_names_it_and_lists_the_known() -> None:
    with pytest.raises(ValueError, match=r"unknown pool option 'maxsize'.*max_size"):
        PoolConfig.from_options({"maxsize": 3})


# ----------------------------------------------------------------------------- lifetimes_under

C = PoolConfig()
SHORT = PoolConfig(max_lifetime=None, idle_timeout=None, keepalive=None)

# (config, wait_timeout) -> (max_lifetime, idle_timeout, keepalive, idle_limit)
LIFETIMES: list[tuple[PoolConfig, float | None, tuple[Any, Any, Any, Any]]] = [
    (C, None, (1800.0, 600.0, 60.0, None)),  # not known yet: as configured
    (C, 0, (1800.0, 600.0, 60.0, None)),  # no limit on the server
    (C, 28800, (1800.0, 600.0, 60.0, 25920.0)),  # 10% margin
    (C, 600, (540.0, 540.0, 60.0, 540.0)),  # lowered under the server's limit
    (C, 100, (90.0, 90.0, 45.0, 90.0)),  # keepalive at most half the limit
    (C, 10, (9.0, 9.0, 4.5, 9.0)),  # margin at least a second
    (C, 2, (1.0, 1.0, 0.5, 1.0)),
    (C, 1, (0.5, 0.5, 0.25, 0.5)),  # never below half a second
    (SHORT, None, (None, None, None, None)),
    (SHORT, 600, (540.0, 540.0, None, 540.0)),  # a lifetime switched off still stays under
    (PoolConfig(max_lifetime=60, idle_timeout=30, keepalive=10), 3600, (60.0, 30.0, 10.0, 3240.0)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("config", "wait_timeout", "expected"),
    LIFETIMES,
    ids=[f"{i}-wait={w}" for i, (_, w, _) in enumerate(LIFETIMES)],
)
def test_lifetimes_under(
    config: PoolConfig, wait_timeout: float | None, expected: tuple[Any, ...]
) -> None:
    got = lifetimes_under(config, wait_timeout)
    assert isinstance(got, Lifetimes)
    values = (got.max_lifetime, got.idle_timeout, got.keepalive, got.idle_limit)
    assert values == pytest.approx(expected) if None not in expected else values == expected


@pytest.mark.parametrize("wait_timeout", [1, 2, 5, 28, 60, 3600, 28800, 31536000])
def test_lifetimes_always_end_before_the_server_drops_the_session(wait_timeout: int) -> None:
    got = lifetimes_under(C, wait_timeout)
    assert got.idle_limit is not None and got.idle_limit < wait_timeout
    for value in (got.max_lifetime, got.idle_timeout):
        assert value is not None and value <= got.idle_limit
    assert got.keepalive is not None and got.keepalive <= got.idle_limit / 2 + 1e-9


# ----------------------------------------------------------------------------- through a pool


@pytest.mark.parametrize("cls", [tether.Pool, tether.ThreadLocalPool])
@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"replay_reads": "no"}, "replay_reads"),
        ({"error_kinds": {1146: "retry"}}, "error_kinds"),
        ({"max_size": 0}, "max_size"),
        ({"min_size": 40}, "min_size"),
        ({"timeout": "1"}, "timeout"),
        ({"pool_size": 4}, "pool_size"),
        ({"connect_args": {"colour": "blue"}}, "colour"),
        ({"connect_args": {"password": "x"}}, "password"),
    ],
)
def test_pools_refuse_bad_options_at_construction(
    cls: type[tether.Pool], options: dict[str, Any], says: str, fake: FakeDriver
) -> None:
    with pytest.raises(ValueError, match=says):
        cls(DSN, driver=fake, **options)
    assert fake.connects == 0


@pytest.mark.parametrize("driver", ["pymysql", "mysqlclient"])
def test_unknown_connect_args_are_refused_by_the_real_drivers(driver: str) -> None:
    pytest.importorskip({"pymysql": "pymysql", "mysqlclient": "MySQLdb"}[driver])
    with pytest.raises(ValueError, match=r"connect_args.*'colour'"):
        tether.Pool(DSN, driver=driver, connect_args={"colour": "blue"})
    with pytest.raises(ValueError, match=r"'chraset'"):
        tether.ThreadLocalPool(DSN, driver=driver, connect_args={"chraset": "utf8mb4"})
    # What the driver does take is accepted, and nothing connects at construction.
    good = {"charset": "latin1", "sql_mode": "ANSI", "init_command": "SET @x = 1"}
    tether.Pool(DSN, driver=driver, connect_args=good).close()


@pytest.mark.parametrize("bad", ["1", b"1", 0, -1, NAN, INF, True, [1]])
def test_a_checkout_timeout_that_is_not_seconds_is_a_clear_error(bad: Any, make_pool: Any) -> None:
    pool = make_pool()
    with pool.connection(timeout=None):  # None: the pool's own
        pass
    with pytest.raises(ValueError, match=r"timeout must be a positive number of seconds"):
        pool.connection(timeout=bad)
    assert pool.stats().in_use == 0 and pool.stats().size == 1


def test_error_kinds_given_as_names_or_members_are_used(fake: FakeDriver) -> None:
    """1146 (no such table) is the statement's own error, raised at once; a pool told it
    means a disconnect waits it out like an outage (backoff, retry until the deadline)."""
    fake.failures.append(FakeOperationalError(1146, "Table 'app.t' doesn't exist"))
    pool = tether.Pool(DSN, driver=fake, timeout=5)
    try:
        with pytest.raises(FakeOperationalError):
            pool.connection()
    finally:
        pool.close()
    for kind in ("disconnect", ErrorKind.DISCONNECT):
        fake.failures.extend(FakeOperationalError(1146, "no such table") for _ in range(2))
        pool = tether.Pool(DSN, driver=fake, timeout=5, error_kinds={1146: kind})
        try:
            with pool.connection() as conn:
                conn.cursor().execute("SELECT 1")
            assert pool.stats()["connect_errors"] == 2
        finally:
            pool.close()


# ----------------------------------------------------------------------------- DSN and driver


def test_a_parsed_dsn_is_accepted(fake: FakeDriver) -> None:
    parsed = tether.parse_dsn(DSN)
    pool = tether.Pool(parsed, driver=fake)
    try:
        assert pool.dsn is parsed
        with pool.connection() as conn:
            conn.cursor().execute("SELECT 1")
    finally:
        pool.close()


@pytest.mark.parametrize(
    ("dsn", "driver"),
    [
        ("mysql+pymysql://u:pw@h/d", "mysqlclient"),
        ("mysql+mysqldb://u:pw@h/d", "pymysql"),
        ("mariadb+mysqlclient://u:pw@h/d", "pymysql"),
    ],
)
def test_a_scheme_and_a_driver_that_disagree(dsn: str, driver: str) -> None:
    with pytest.raises(ValueError, match="disagree"):
        tether.Pool(dsn, driver=driver)


@pytest.mark.parametrize(
    ("dsn", "driver", "expected"),
    [
        ("mysql+pymysql://u:pw@h/d", "pymysql", "pymysql"),
        ("mysql+pymysql://u:pw@h/d", None, "pymysql"),
        ("mysql+mysqldb://u:pw@h/d", "mysqlclient", "mysqlclient"),
        ("mysql+mysqlclient://u:pw@h/d", "mysqldb", "mysqlclient"),
        ("mysql://u:pw@h/d", "pymysql", "pymysql"),
        ("mysql://u:pw@h/d", "mysqlclient", "mysqlclient"),
    ],
)
def test_a_scheme_and_a_driver_that_agree(dsn: str, driver: str | None, expected: str) -> None:
    pytest.importorskip({"pymysql": "pymysql", "mysqlclient": "MySQLdb"}[expected])
    pool = tether.Pool(dsn, driver=driver)
    try:
        assert pool.driver.name == expected
    finally:
        pool.close()


def test_an_unsupported_driver_name() -> None:
    with pytest.raises(ValueError, match="driver='psycopg'"):
        tether.Pool(DSN, driver="psycopg")


# ----------------------------------------------------------------------------- Flask


def flask_app(**config: Any) -> Any:
    flask = pytest.importorskip("flask")
    app = flask.Flask("checked")
    app.config.update({"TETHER_DSN": DSN, **config})
    return app


@pytest.mark.parametrize(
    ("config", "error", "says"),
    [
        ({"TETHER_OPTIONS": {"error_kinds": {1146: "retry"}}}, ValueError, "error_kinds"),
        ({"TETHER_OPTIONS": {"timeout": "1"}}, ValueError, "timeout"),
        ({"TETHER_OPTIONS": {"init_commands": "SET @x = 1"}}, ValueError, "init_commands"),
        ({"TETHER_OPTIONS": {"min_size": 11}}, ValueError, "min_size"),
        ({"TETHER_OPTIONS": {"connect_args": {"password": "x"}}}, ValueError, "password"),
        ({"TETHER_OPTIONS": ["max_size", 3]}, ValueError, "TETHER_OPTIONS"),
        ({"TETHER_OPTIONS": {"watchdog": -1}}, ValueError, "watchdog"),
        (
            {"TETHER_DSN": "mysql+pymysql://u:pw@h/d", "TETHER_DRIVER": "mysqlclient"},
            ValueError,
            "disagree",
        ),
        ({"TETHER_DSN": "mysql://u:pw@h:-5/d"}, tether.DSNError, "port"),
        ({"TETHER_DSN": "mysql://u:pa/ss@h/d"}, tether.DSNError, "percent-encode"),
        ({"TETHER_POOL": "threadlocal", "TETHER_OPTIONS": {"max_size": 0}}, ValueError, "max_size"),
    ],
)
def test_flask_checks_its_configuration_at_init_app(
    config: dict[str, Any], error: type[Exception], says: str
) -> None:
    from tether.contrib.flask import Tether

    app = flask_app(**config)
    ext = Tether()
    with pytest.raises(error, match=says) as info:
        ext.init_app(app)
    secret = {DSN: "s3cret-pw", "mysql://u:pa/ss@h/d": "pa/ss"}.get(app.config["TETHER_DSN"])
    assert secret is None or secret not in str(info.value)
    assert "tether" not in app.extensions


def test_flask_options_given_to_the_extension_are_checked_too() -> None:
    from tether.contrib.flask import Tether

    with pytest.raises(ValueError, match="replay_reads"):
        Tether(flask_app(), replay_reads="no")
    with pytest.raises(ValueError, match="error_kinds"):
        Tether(flask_app(), error_kinds={1146: "retry"})


def test_flask_with_a_good_configuration_makes_no_connection_at_init_app() -> None:
    from tether.contrib.flask import Tether

    app = flask_app(
        TETHER_OPTIONS={"error_kinds": {1146: "disconnect"}, "timeout": 1.5},
        TETHER_DRIVER="pymysql",
    )
    ext = Tether(app)
    try:
        assert ext.pool.config.error_kinds == {1146: ErrorKind.DISCONNECT}
        assert ext.pool.config.timeout == 1.5 and ext.pool.stats().size == 0
    finally:
        ext.close()


def test_a_tiny_query_timeout_never_becomes_no_timeout(make_pool: Any, fake: FakeDriver) -> None:
    pool = make_pool(query_timeout=0.0004)
    with pool.connection() as conn:
        conn.cursor().execute("SELECT 1")
    settings = [s for s in fake.connections[0].statements if "max_statement_time" in s]
    assert settings
    value = float(settings[0].split("max_statement_time = ")[1].split(",")[0])
    assert value > 0, settings[0]
