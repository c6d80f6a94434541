"""What a server allows and who uses it, and what that means for an application's pools.

:func:`inspect_server` connects once and reads, with whatever privileges the account has, the
server's timeouts, connection caps and current use (:func:`read_report` does the reading over
any query function). What the account cannot see is recorded in ``ServerReport.not_visible``
with the privilege it would need, instead of failing. :func:`advise` is pure arithmetic: the
limits and the shape of an application (processes x threads) give a pool size per process that
keeps the whole fleet under the binding cap, and lifetimes under the server's ``wait_timeout``.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .config import DEFAULTS, lifetimes_under
from .drivers import get_driver
from .dsn import DSN, parse_dsn

__all__ = [
    "ABORTED_HELP",
    "Advice",
    "Limits",
    "ServerReport",
    "Setting",
    "Usage",
    "advise",
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


@dataclass(frozen=True)
class Limits:
    """What :func:`advise` needs to know about a server. ``None``: not visible.

    ``account_max_user_connections`` and ``max_user_connections`` use the server's convention:
    0 means no limit. ``own_sessions`` are the sessions of the inspecting account (other than
    the inspection's own), assumed to belong to the application being planned.
    """

    max_connections: int | None = None
    max_user_connections: int | None = None
    account_max_user_connections: int | None = None
    wait_timeout: int | None = None
    threads_connected: int | None = None
    max_used_connections: int | None = None
    own_sessions: int = 0
    account: str = "this account"


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


@dataclass
class Advice:
    processes: int
    threads: int
    cap: int | None  # the binding connection limit for this application
    cap_source: str  # which limit that is
    reserve: int  # kept free under the cap for admins, tools, deploys
    others: int  # connections other clients hold under max_connections (when that binds)
    budget: int | None  # connections the whole application may hold
    pool_size: int  # max_size per process
    fits: bool  # at least one connection per process fits under the cap
    max_lifetime: float | None
    idle_timeout: float | None
    keepalive: float | None
    timeout: float
    driver: str = "pymysql"
    warnings: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)  # the arithmetic, in words

    @property
    def fleet_size(self) -> int:
        return self.pool_size * self.processes

    @property
    def threads_wait(self) -> bool:
        return self.pool_size < self.threads

    def pool_line(self) -> str:
        parts = [
            "dsn",
            f'driver="{self.driver}"',
            f"max_size={self.pool_size}",
            f"timeout={self.timeout:g}",
        ]
        for name in ("max_lifetime", "idle_timeout", "keepalive"):
            value = getattr(self, name)
            if value is not None:
                parts.append(f"{name}={value:g}")
        return f"tether.Pool({', '.join(parts)})"

    def as_dict(self) -> dict[str, Any]:
        return {
            "processes": self.processes,
            "threads": self.threads,
            "cap": self.cap,
            "cap_source": self.cap_source,
            "reserve": self.reserve,
            "others": self.others,
            "budget": self.budget,
            "pool_size": self.pool_size,
            "fleet_size": self.fleet_size,
            "fits": self.fits,
            "threads_wait": self.threads_wait,
            "max_lifetime": self.max_lifetime,
            "idle_timeout": self.idle_timeout,
            "keepalive": self.keepalive,
            "timeout": self.timeout,
            "pool": self.pool_line(),
            "warnings": list(self.warnings),
            "reasons": list(self.reasons),
        }


# --------------------------------------------------------------------------- advice


def reserve_for(cap: int) -> int:
    """Connections kept free under a cap for an admin, a migration, a deploy's overlap: about
    10%, at least 2."""
    return max(2, math.ceil(cap * 0.1))


def lifetimes(wait_timeout: int | None) -> tuple[float | None, float | None, float | None]:
    """``(max_lifetime, idle_timeout, keepalive)`` for a server with this ``wait_timeout``: the
    pool's defaults lowered by the rule the pool applies itself
    (:func:`tether.config.lifetimes_under`), in whole seconds where that only lowers them."""
    if wait_timeout is None or wait_timeout <= 0:
        return None, None, None
    found = lifetimes_under(DEFAULTS, wait_timeout)

    def whole(value: float | None) -> float | None:
        return float(math.floor(value)) if value is not None and value >= 2 else value

    return whole(found.max_lifetime), whole(found.idle_timeout), whole(found.keepalive)


def _positive(value: int | None) -> int | None:
    return value if value is not None and value > 0 else None


def advise(
    limits: Limits,
    processes: int = 1,
    threads: int = 16,
    *,
    request_timeout: float = 30.0,
    driver: str = "pymysql",
) -> Advice:
    """Pool settings for an application of ``processes`` processes with ``threads`` threads
    each, every process holding one pool.

    The binding cap is the lower of the per-user cap (the account's own
    ``MAX_USER_CONNECTIONS`` if set, else the global ``max_user_connections`` if set) and
    ``max_connections``. From it go a reserve (:func:`reserve_for`) and, for
    ``max_connections``, the connections other clients hold now; what is left is shared by the
    processes, and no process gets more than ``threads``: a thread holds one connection at a
    time. ``timeout`` is a third of ``request_timeout``, so a thread waiting for a connection
    gives up (and the request fails cleanly) well before the request itself would be killed.
    """
    if processes < 1 or threads < 1:
        raise ValueError("processes and threads must be at least 1")
    if request_timeout <= 0:
        raise ValueError("request_timeout must be positive")
    warnings: list[str] = []
    reasons: list[str] = []

    # Each candidate cap: (budget for this app, cap, where it comes from, reserve, others).
    candidates: list[tuple[int, int, str, int, int]] = []
    account_cap = _positive(limits.account_max_user_connections)
    global_user_cap = _positive(limits.max_user_connections)
    if account_cap is not None:
        user_cap, user_source = account_cap, f"MAX_USER_CONNECTIONS of {limits.account}"
    elif global_user_cap is not None:
        user_cap, user_source = global_user_cap, "max_user_connections (global)"
    else:
        user_cap = None
    if user_cap is not None:
        # Only this account's sessions count against it; they are taken to be the app's own.
        reserve = reserve_for(user_cap)
        candidates.append((user_cap - reserve, user_cap, user_source, reserve, 0))
        if limits.own_sessions + 1 >= user_cap:
            warnings.append(
                f"{limits.account} holds {limits.own_sessions + 1} of its {user_cap}"
                " connections right now (this inspection's included): new connections are"
                " about to be refused (error 1226)."
            )
    server_cap = _positive(limits.max_connections)
    if server_cap is not None:
        others = 0
        if limits.threads_connected is not None:
            # Everyone else's sessions stay; this account's (the app's) and this inspection's
            # own are what the planned pools replace.
            others = max(0, limits.threads_connected - 1 - limits.own_sessions)
        else:
            reasons.append("Threads_connected is not visible: other clients' use is not counted")
        used = limits.max_used_connections
        if used is not None and used >= 0.9 * server_cap:
            warnings.append(
                f"Max_used_connections is {used} of max_connections {server_cap}: the server"
                " has been at or near its cap since it started (or since FLUSH STATUS)."
            )
        reserve = reserve_for(server_cap)
        candidates.append(
            (server_cap - reserve - others, server_cap, "max_connections", reserve, others)
        )

    cap: int | None = None
    budget: int | None = None
    reserve = others = 0
    source = "none visible"
    fits = True
    if not candidates:
        size = threads
        warnings.append(
            "no connection cap is visible: the size below only follows the threads; check"
            " max_connections and max_user_connections with the server's administrator."
        )
    else:
        budget, cap, source, reserve, others = min(candidates)
        line = f"{source} = {cap}, minus {reserve} kept free (10%, at least 2)"
        if others:
            line += f", minus {others} held by other clients now"
        reasons.append(f"{line}: {max(budget, 0)} for this application")
        if limits.own_sessions:
            reasons.append(
                f"the {limits.own_sessions} sessions {limits.account} holds now are taken to be"
                " this application's: its new pools replace them"
            )
        if budget < processes:
            fits = False
            size = 1
            warnings.append(
                f"the plan cannot fit: {processes} processes need at least {processes}"
                f" connections (one each), but {source} ({cap}) leaves {max(budget, 0)} for"
                " this application. Connects past the cap fail (error 1226 or 1040) and pools"
                " wait for them to clear. Run fewer processes, raise the cap, or move"
                " other clients off this server."
            )
        else:
            size = min(threads, budget // processes)
            reasons.append(
                f"{budget} // {processes} processes = {budget // processes} per process"
                + (f", capped at {threads} threads" if budget // processes > threads else "")
            )
        if fits and size < threads:
            warnings.append(
                f"{size} connections per process for {threads} threads: up to"
                f" {threads - size} threads per process wait for a connection at peak. Fine"
                " when connections are held per query or for short requests (the pool's"
                " timeout bounds the wait); otherwise run fewer threads or raise the cap."
            )

    max_lifetime, idle_timeout, keepalive = lifetimes(limits.wait_timeout)
    if limits.wait_timeout is None:
        reasons.append("wait_timeout is not visible: the pool reads it on its first connect")
    else:
        reasons.append(
            f"wait_timeout = {limits.wait_timeout}s: connections are retired before the"
            " server drops them, and idle ones pinged"
        )
        if limits.wait_timeout <= 30:
            warnings.append(
                f"wait_timeout is only {limits.wait_timeout}s: idle connections are dropped"
                " quickly; the pool retires them earlier and pings idle ones, but a larger"
                " wait_timeout for this account saves reconnects."
            )
    timeout = max(1.0, min(30.0, float(round(request_timeout / 3))))
    return Advice(
        processes=processes,
        threads=threads,
        cap=cap,
        cap_source=source,
        reserve=reserve,
        others=others,
        budget=budget,
        pool_size=size,
        fits=fits,
        max_lifetime=max_lifetime,
        idle_timeout=idle_timeout,
        keepalive=keepalive,
        timeout=timeout,
        driver=driver,
        warnings=warnings,
        reasons=reasons,
    )


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
