"""What a server allows and who uses it.

:func:`inspect_server` connects once and reads, with whatever privileges the account has, the
server's timeouts, connection caps and current use (:func:`read_report` does the reading over
any query function). What the account cannot see is recorded in ``ServerReport.not_visible``
with the privilege it would need, instead of failing. What that means for an application's
pools is :mod:`tether.advice`'s arithmetic on ``ServerReport.limits()``.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .advice import Limits
from .drivers import get_driver
from .dsn import DSN, parse_dsn

__all__ = [
    "ABORTED_HELP",
    "ServerReport",
    "Setting",
    "Usage",
    "inspect_server",
    "read_report",
]

TIMEOUT_VARIABLES = ("wait_timeout", "interactive_timeout", "net_read_timeout", "net_write_timeout")
STATUS_VARIABLES = (
    "Threads_connected",
    "Max_used_connections",
    "Aborted_clients",
    "Aborted_connects",
)
ABORTED_HELP = {
    "Aborted_clients": "sessions that ended without a proper close: clients that died or "
    "dropped the socket, sessions killed, or idle past wait_timeout (stale pools)",
    "Aborted_connects": "failed connection attempts: wrong password, missing grants, a "
    "connection cap reached, or a handshake that timed out",
}

# Errors that mean "this account may not see that" or "this server has no such thing": the
# report says so and goes on. Any other error (a lost connection) ends the inspection.
_DENIED = frozenset({1044, 1142, 1143, 1227, 1141, 1370, 3167})
_MISSING = frozenset({1054, 1064, 1109, 1146, 1193, 1235})

QueryFn = Callable[[str], list[tuple[Any, ...]]]


@dataclass(frozen=True)
class Setting:
    """A server variable in this session and globally."""

    name: str
    session: int | None
    global_: int | None

    @property
    def differs(self) -> bool:
        return self.session != self.global_


@dataclass
class Usage:
    """Sessions of one user or one client host."""

    name: str
    sessions: int = 0
    sleeping: int = 0
    longest_sleep: int | None = None  # seconds; None when none is sleeping

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "sessions": self.sessions,
            "sleeping": self.sleeping,
            "longest_sleep": self.longest_sleep,
        }


@dataclass
class ServerReport:
    server: str  # the DSN, password redacted
    driver: str
    version: str | None
    current_user: str | None  # the account the server matched, user@host
    timeouts: list[Setting]
    max_connections: int | None
    max_user_connections: int | None  # global; 0 = none
    account_max_user_connections: int | None  # the account's own; 0 = none set
    account_limit_source: str | None  # where that was read
    status: dict[str, int | None]
    sees_all_sessions: bool
    own_sessions: int  # this account's sessions, the inspection's own not counted
    by_user: list[Usage] = field(default_factory=list)
    by_host: list[Usage] = field(default_factory=list)
    not_visible: dict[str, str] = field(default_factory=dict)  # what -> why

    def timeout(self, name: str) -> Setting | None:
        return next((s for s in self.timeouts if s.name == name), None)

    @property
    def user(self) -> str:
        return (self.current_user or "").rsplit("@", 1)[0]

    def limits(self) -> Limits:
        wait = self.timeout("wait_timeout")
        return Limits(
            max_connections=self.max_connections,
            max_user_connections=self.max_user_connections,
            account_max_user_connections=self.account_max_user_connections,
            # The application's sessions get what this session got: same client, same account.
            wait_timeout=wait.session if wait else None,
            threads_connected=self.status.get("Threads_connected"),
            max_used_connections=self.status.get("Max_used_connections"),
            own_sessions=self.own_sessions,
            account=self.current_user or "this account",
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "driver": self.driver,
            "version": self.version,
            "current_user": self.current_user,
            "timeouts": {
                s.name: {"session": s.session, "global": s.global_} for s in self.timeouts
            },
            "limits": {
                "max_connections": self.max_connections,
                "max_user_connections": self.max_user_connections,
                "account_max_user_connections": self.account_max_user_connections,
                "account_limit_source": self.account_limit_source,
            },
            "status": dict(self.status),
            "sessions": {
                "all_visible": self.sees_all_sessions,
                "own": self.own_sessions,
                "by_user": [u.as_dict() for u in self.by_user],
                "by_host": [u.as_dict() for u in self.by_host],
            },
            "not_visible": dict(self.not_visible),
        }


# --------------------------------------------------------------------------- inspection


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _code(exc: BaseException) -> int | None:
    args = getattr(exc, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


_NEEDS_PRIVILEGE = re.compile(r"need \(at least one of\) the (.+?) privilege", re.IGNORECASE)
_NEEDS_TABLE = re.compile(
    r"(\w+) command denied .*? for table [`'\"]?(?:(\w+)[`'\"]?\.[`'\"]?)?(\w+)"
)


def _why(exc: BaseException, default: str) -> str:
    """The privilege a denied statement needs, from the server's message if it names it."""
    message = str(exc.args[1]) if len(getattr(exc, "args", ())) > 1 else str(exc)
    match = _NEEDS_PRIVILEGE.search(message)
    if match:
        return f"needs {match.group(1)} privilege"
    match = _NEEDS_TABLE.search(message)
    if match:
        table = ".".join(part for part in match.group(2, 3) if part)
        return f"needs {match.group(1).upper()} privilege on {table}"
    return default


class _Reader:
    """Runs probes; a denied or unsupported one is noted and yields ``None``."""

    def __init__(self, query: QueryFn) -> None:
        self.query = query
        self.not_visible: dict[str, str] = {}

    def rows(self, what: str, sql: str, needs: str) -> list[tuple[Any, ...]] | None:
        try:
            return self.query(sql)
        except Exception as exc:
            code = _code(exc)
            if code in _DENIED:
                self.not_visible.setdefault(what, _why(exc, needs))
                return None
            if code in _MISSING:
                self.not_visible.setdefault(what, "not available on this server")
                return None
            raise

    def first(self, what: str, sql: str, needs: str) -> tuple[Any, ...] | None:
        rows = self.rows(what, sql, needs)
        return rows[0] if rows else None


_LIMIT = re.compile(r"\bMAX_USER_CONNECTIONS\s+(-?\d+)", re.IGNORECASE)


def _account_limit(reader: _Reader, mariadb: bool, user: str, host: str) -> tuple[int | None, str]:
    """The account's own MAX_USER_CONNECTIONS (0: none set) and where it was read.

    Least privilege first: an account may always see its own ``SHOW CREATE USER`` (MariaDB 10.2+,
    MySQL 5.7+) and ``SHOW GRANTS``; ``mysql.user`` needs SELECT on it. Only the number is kept:
    these lines can carry the password hash. MySQL's SHOW GRANTS leaves resource limits out, so
    there a missing clause proves nothing.
    """
    denied: list[str] = []
    for statement in ("SHOW CREATE USER CURRENT_USER", "SHOW GRANTS"):
        try:
            lines = [str(row[0]) for row in reader.query(statement)]
        except Exception as exc:
            if _code(exc) not in _DENIED | _MISSING:
                raise
            denied.append(statement)
            continue
        for line in lines:
            match = _LIMIT.search(line)
            if match:
                return int(match.group(1)), statement
        if statement.startswith("SHOW CREATE") or mariadb:
            return 0, statement
    quoted_user, quoted_host = (value.replace("'", "''") for value in (user, host))
    row = reader.first(
        "account_max_user_connections",
        "SELECT max_user_connections FROM mysql.user"
        f" WHERE User = '{quoted_user}' AND Host = '{quoted_host}'",
        "needs SELECT privilege on mysql.user",
    )
    if row is not None:
        return _int(row[0]), "mysql.user"
    return None, ""


def _has_privilege(reader: _Reader, grantee: str, privilege: str) -> bool:
    rows = reader.rows(
        "privileges",
        "SELECT PRIVILEGE_TYPE FROM information_schema.USER_PRIVILEGES"
        f" WHERE GRANTEE = '{grantee.replace(chr(39), chr(39) * 2)}'",
        "information_schema.USER_PRIVILEGES is not readable",
    )
    return bool(rows) and any(str(row[0]).upper() == privilege for row in rows or ())


def _usage(rows: Iterable[tuple[str, str, int | None]]) -> list[Usage]:
    groups: dict[str, Usage] = {}
    for name, command, seconds in rows:
        usage = groups.setdefault(name, Usage(name))
        usage.sessions += 1
        if command == "Sleep":
            usage.sleeping += 1
            usage.longest_sleep = max(usage.longest_sleep or 0, seconds or 0)
    return sorted(groups.values(), key=lambda u: (-u.sessions, u.name))


def _client_host(host: str) -> str:
    # "10.0.0.5:53122" -> "10.0.0.5"; a socket client shows as "localhost" with no port.
    if not host:
        return "(unknown)"
    head, sep, tail = host.rpartition(":")
    return head if sep and tail.isdigit() else host


def read_report(query: QueryFn, *, server: str, driver: str) -> ServerReport:
    """Read a report over ``query`` (runs one SQL statement, returns its rows, raises the
    driver's error). Privilege and unsupported-statement errors become ``not_visible``
    entries; any other error propagates."""
    reader = _Reader(query)
    basics = query("SELECT VERSION(), CURRENT_USER(), CONNECTION_ID()")[0]
    version, current_user, connection_id = str(basics[0]), str(basics[1]), _int(basics[2])
    user, _, host = current_user.rpartition("@")
    mariadb = "mariadb" in version.lower()

    timeouts: list[Setting] = []
    for name in TIMEOUT_VARIABLES:
        row = reader.first(name, f"SELECT @@SESSION.{name}, @@GLOBAL.{name}", "not readable")
        timeouts.append(
            Setting(name, _int(row[0]), _int(row[1])) if row else Setting(name, None, None)
        )

    row = reader.first("max_connections", "SELECT @@GLOBAL.max_connections", "not readable")
    max_connections = _int(row[0]) if row else None
    row = reader.first(
        "max_user_connections", "SELECT @@GLOBAL.max_user_connections", "not readable"
    )
    max_user_connections = _int(row[0]) if row else None
    account_limit, limit_source = _account_limit(reader, mariadb, user, host)
    if account_limit is None:
        # Both servers set the session value to the account's own limit when there is one
        # (else to the global value): enough for advice, though it cannot tell "none set".
        row = reader.first(
            "session max_user_connections", "SELECT @@SESSION.max_user_connections", ""
        )
        session_limit = _int(row[0]) if row else None
        if session_limit is not None and session_limit != max_user_connections:
            account_limit, limit_source = session_limit, "@@SESSION.max_user_connections"
            reader.not_visible.pop("account_max_user_connections", None)

    status: dict[str, int | None] = dict.fromkeys(STATUS_VARIABLES)
    names = ", ".join(f"'{name}'" for name in STATUS_VARIABLES)
    rows = reader.rows(
        "global status",
        f"SHOW GLOBAL STATUS WHERE Variable_name IN ({names})",
        "SHOW GLOBAL STATUS is not readable",
    )
    for name, value in rows or ():
        for wanted in STATUS_VARIABLES:
            if wanted.lower() == str(name).lower():
                status[wanted] = _int(value)
    for name in STATUS_VARIABLES:
        if status[name] is None and "global status" in reader.not_visible:
            reader.not_visible[name] = reader.not_visible["global status"]
    reader.not_visible.pop("global status", None)

    processes = reader.rows(
        "sessions",
        "SELECT ID, USER, HOST, COMMAND, TIME FROM information_schema.PROCESSLIST"
        " WHERE COMMAND <> 'Daemon'",
        "needs PROCESS privilege",
    )
    listed = [row for row in processes or () if _int(row[0]) != connection_id]
    grantee = f"'{user}'@'{host}'"
    sees_all = _has_privilege(reader, grantee, "PROCESS") or any(
        str(row[1]) != user for row in listed
    )
    reader.not_visible.pop("privileges", None)
    if processes is not None and not sees_all:
        reader.not_visible["other accounts' sessions"] = (
            "needs PROCESS privilege: only this account's own sessions are listed"
        )
    own = sum(1 for row in listed if str(row[1]) == user)
    return ServerReport(
        server=server,
        driver=driver,
        version=version,
        current_user=current_user,
        timeouts=timeouts,
        max_connections=max_connections,
        max_user_connections=max_user_connections,
        account_max_user_connections=account_limit,
        account_limit_source=limit_source or None,
        status=status,
        sees_all_sessions=sees_all,
        own_sessions=own,
        by_user=_usage((str(r[1]), str(r[3]), _int(r[4])) for r in listed),
        by_host=_usage((_client_host(str(r[2] or "")), str(r[3]), _int(r[4])) for r in listed),
        not_visible=reader.not_visible,
    )


def inspect_server(
    dsn: str | DSN | None, *, driver: str | None = None, connect_timeout: float = 5.0
) -> ServerReport:
    """Connect once and read the server's limits and use.

    ``driver``: ``"pymysql"`` or ``"mysqlclient"``; ``None`` takes the DSN's, else PyMySQL.
    Raises the driver's error when it cannot connect (or the connection fails midway).
    """
    parsed = dsn if isinstance(dsn, DSN) else parse_dsn(dsn)
    name = driver or parsed.driver or "pymysql"
    adapter = get_driver(name)
    conn = adapter.connect(
        parsed,
        connect_timeout=connect_timeout,
        autocommit=True,
        # Every round trip is bounded too (the handshake's included): a server that accepts
        # and then says nothing must not hang the command. Its statements are all tiny.
        connect_args=adapter.io_timeouts(connect_timeout),
    )
    try:
        return read_report(
            lambda sql: adapter.execute(conn, sql), server=parsed.redacted(), driver=adapter.name
        )
    finally:
        with contextlib.suppress(Exception):
            conn.close()
