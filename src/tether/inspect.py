"""What a server allows and who uses it, and what that means for an application's pools.

:func:`inspect_server` reads, with whatever privileges the user has, the server's timeouts,
connection caps and current use; what it cannot see it says so in ``notes`` instead of failing.
:func:`advise` turns those limits and the shape of an application (processes x threads) into
pool settings that fit under the caps and the server's idle timeout.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from .drivers import get_driver
from .dsn import DSN, parse_dsn

__all__ = ["Advice", "ServerReport", "Usage", "advise", "inspect_server"]

TIMEOUT_VARIABLES = ("wait_timeout", "interactive_timeout", "net_read_timeout", "net_write_timeout")
STATUS_VARIABLES = (
    "Threads_connected",
    "Max_used_connections",
    "Aborted_clients",
    "Aborted_connects",
)


@dataclass
class Usage:
    """Sessions of one user or one client host."""

    name: str
    sessions: int
    sleeping: int
    longest_sleep: int  # seconds


@dataclass
class ServerReport:
    server: str  # the DSN, password redacted
    version: str
    current_user: str
    timeouts: dict[str, dict[str, int | None]]  # name -> {"session": .., "global": ..}
    max_connections: int | None
    max_user_connections_global: int | None
    user_limit: int | None  # the account's own MAX_USER_CONNECTIONS (0: none), None: not visible
    status: dict[str, int | None]
    sees_all_sessions: bool
    own_sessions: int
    by_user: list[Usage] = field(default_factory=list)
    by_host: list[Usage] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def wait_timeout(self) -> int | None:
        return self.timeouts.get("wait_timeout", {}).get("session")


@dataclass
class Advice:
    processes: int
    threads: int
    cap: int | None  # the binding connection limit for this application
    cap_source: str
    budget: int | None  # connections the application may use in all
    pool_size: int  # per process
    max_lifetime: float | None
    idle_timeout: float | None
    keepalive: float | None
    timeout: float
    warnings: list[str] = field(default_factory=list)

    def pool_line(self) -> str:
        parts = ["dsn", f"max_size={self.pool_size}", f"timeout={self.timeout:g}"]
        if self.max_lifetime is not None:
            parts.append(f"max_lifetime={self.max_lifetime:g}")
        if self.idle_timeout is not None:
            parts.append(f"idle_timeout={self.idle_timeout:g}")
        if self.keepalive is not None:
            parts.append(f"keepalive={self.keepalive:g}")
        return f"tether.Pool({', '.join(parts)})"

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["pool"] = self.pool_line()
        return data


def _positive(value: int | None) -> int | None:
    return value if value else None


def advise(report: ServerReport, *, processes: int = 1, threads: int = 16) -> Advice:
    """Pool settings for ``processes`` processes of ``threads`` threads each."""
    if processes < 1 or threads < 1:
        raise ValueError("processes and threads must be at least 1")
    warnings: list[str] = []
    user_cap = _positive(report.user_limit) or _positive(report.max_user_connections_global)
    server_cap = _positive(report.max_connections)
    cap: int | None
    budget: int | None
    if user_cap is not None and (server_cap is None or user_cap <= server_cap):
        cap, source = user_cap, "max_user_connections"
        # Keep one for an admin or a doctor run, more on big caps.
        budget = cap - max(1, cap // 10)
    elif server_cap is not None:
        cap, source = server_cap, "max_connections"
        others = 0
        connected = report.status.get("Threads_connected")
        if connected is not None:
            # Sessions of other applications stay; this app's own (and this doctor's) don't.
            others = max(0, connected - report.own_sessions)
        budget = cap - max(2, cap // 10) - others
    else:
        cap, source, budget = None, "none visible", None
    if budget is None:
        size = threads
    else:
        size = min(threads, budget // processes)
        if size < 1:
            warnings.append(
                f"{processes} processes need at least {processes} connections, but {source}"
                f" ({cap}) leaves {max(budget, 0)} for this application: lower the number of"
                " processes or raise the limit."
            )
            size = 1
        elif size < threads:
            warnings.append(
                f"{processes} x {size} connections fit under {source} ({cap}), fewer than"
                f" {threads} threads per process: threads will wait for a connection (fine"
                " when requests are short; the pool's timeout bounds the wait)."
            )
    wait = report.wait_timeout
    lifetime: float | None = None
    keepalive: float | None = None
    if wait is not None:
        # The same rule the pool applies by itself: stay safely under the server's cut.
        lifetime = float(max(1, int(wait - max(1.0, 0.1 * wait))))
        keepalive = float(max(1, min(60, int(lifetime / 2))))
        if wait <= 30:
            warnings.append(
                f"wait_timeout is only {wait}s: idle connections are dropped fast; tether"
                " retires them before that and pings idle ones, but per-request connections"
                " or a larger wait_timeout may suit this server better."
            )
    return Advice(
        processes=processes,
        threads=threads,
        cap=cap,
        cap_source=source,
        budget=budget,
        pool_size=size,
        max_lifetime=lifetime,
        idle_timeout=lifetime,
        keepalive=keepalive,
        timeout=10.0,
        warnings=warnings,
    )


def _rows(conn: Any, sql: str) -> list[tuple[Any, ...]]:
    cur = conn.cursor()
    try:
        cur.execute(sql)
        return list(cur.fetchall() or ())
    finally:
        cur.close()


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def inspect_server(
    dsn: str | DSN | None, *, driver: str = "pymysql", connect_timeout: float = 5.0
) -> ServerReport:
    """Read the server's limits and use. Raises the driver's error when it cannot connect."""
    parsed = dsn if isinstance(dsn, DSN) else parse_dsn(dsn)
    adapter = get_driver(driver or parsed.driver)
    conn = adapter.connect(
        parsed,
        connect_timeout=connect_timeout,
        autocommit=True,
        connect_args=adapter.io_timeouts(connect_timeout * 2),
    )
    notes: list[str] = []
    try:
        version, current_user, connection_id = _rows(
            conn, "SELECT VERSION(), CURRENT_USER(), CONNECTION_ID()"
        )[0]
        names = ", ".join(f"@@SESSION.{v}, @@GLOBAL.{v}" for v in TIMEOUT_VARIABLES)
        values = _rows(conn, f"SELECT {names}")[0]
        timeouts = {
            name: {"session": _int(values[2 * i]), "global": _int(values[2 * i + 1])}
            for i, name in enumerate(TIMEOUT_VARIABLES)
        }
        max_connections, global_user_cap, session_user_cap = _rows(
            conn,
            "SELECT @@GLOBAL.max_connections, @@GLOBAL.max_user_connections,"
            " @@SESSION.max_user_connections",
        )[0]
        user_limit = _account_limit(conn, notes)
        if user_limit is None and _int(session_user_cap) != _int(global_user_cap):
            # The session value reflects the account's own limit where one is set.
            user_limit = _int(session_user_cap)
        status: dict[str, int | None] = dict.fromkeys(STATUS_VARIABLES)
        try:
            quoted = ", ".join(f"'{v}'" for v in STATUS_VARIABLES)
            for name, value in _rows(
                conn,
                "SELECT VARIABLE_NAME, VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS"
                f" WHERE VARIABLE_NAME IN ({quoted.upper()})",
            ):
                for wanted in STATUS_VARIABLES:
                    if wanted.upper() == str(name).upper():
                        status[wanted] = _int(value)
        except adapter.Error:
            notes.append("global status is not visible to this user")
        sees_all = _has_privilege(conn, "PROCESS")
        if not sees_all:
            notes.append(
                "only this user's own sessions are visible (the PROCESS privilege shows all)"
            )
        processes = _rows(
            conn,
            "SELECT USER, HOST, COMMAND, TIME, ID FROM information_schema.PROCESSLIST"
            " WHERE COMMAND <> 'Daemon'",
        )
    finally:
        with contextlib.suppress(Exception):
            conn.close()
    own_user = str(current_user).split("@", 1)[0]
    own_sessions = sum(
        1 for user, _, _, _, sid in processes if user == own_user and sid != connection_id
    )
    return ServerReport(
        server=parsed.redacted(),
        version=str(version),
        current_user=str(current_user),
        timeouts=timeouts,
        max_connections=_int(max_connections),
        max_user_connections_global=_int(global_user_cap),
        user_limit=user_limit,
        status=status,
        sees_all_sessions=sees_all,
        own_sessions=own_sessions + 1,  # and this one
        by_user=_usage(processes, key=lambda row: str(row[0])),
        by_host=_usage(processes, key=lambda row: str(row[1]).rsplit(":", 1)[0] or "local"),
        notes=notes,
    )


def _usage(processes: list[tuple[Any, ...]], *, key: Any) -> list[Usage]:
    groups: dict[str, Usage] = {}
    for row in processes:
        name = key(row)
        usage = groups.setdefault(name, Usage(name, 0, 0, 0))
        usage.sessions += 1
        if row[2] == "Sleep":
            usage.sleeping += 1
            usage.longest_sleep = max(usage.longest_sleep, int(row[3] or 0))
    return sorted(groups.values(), key=lambda u: (-u.sessions, u.name))


_LIMIT = re.compile(r"MAX_USER_CONNECTIONS\s+(\d+)", re.IGNORECASE)


def _account_limit(conn: Any, notes: list[str]) -> int | None:
    """The account's own MAX_USER_CONNECTIONS, read from its grants. Only the number is
    kept: a grant line can carry the password hash."""
    for statement in ("SHOW CREATE USER CURRENT_USER", "SHOW GRANTS"):
        try:
            lines = [str(row[0]) for row in _rows(conn, statement)]
        except Exception:
            continue
        for line in lines:
            match = _LIMIT.search(line)
            if match:
                return int(match.group(1))
        return 0  # readable, and no limit set for this account
    notes.append("the account's own MAX_USER_CONNECTIONS is not visible")
    return None


def _has_privilege(conn: Any, privilege: str) -> bool:
    try:
        rows = _rows(
            conn,
            "SELECT COUNT(*) FROM information_schema.USER_PRIVILEGES"
            f" WHERE PRIVILEGE_TYPE = '{privilege}'",
        )
    except Exception:
        return False
    return bool(rows and rows[0][0])
