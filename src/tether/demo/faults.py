"""The demo's fault schedule and the server it runs against.

A :class:`Target` is the server: a private throwaway MariaDB the demo controls completely
(:class:`ManagedTarget`), or one given by DSN (:class:`ExternalTarget`), where faults that need
control of the server are skipped and faults done through SQL need a privileged account. All
application traffic goes through a :class:`tether.testing.FaultProxy`; administration goes
straight to the server.

The schedule is the same for every variant. Its order matters: the connection cap runs first,
on its own user; the blackhole runs last, because a variant that hangs behind it stays hung,
and that must not hide how it copes with the other faults.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tether.testing import FaultProxy, MariaDBServer

from .variants import Endpoint
from .workload import Workload

__all__ = ["ExternalTarget", "FaultContext", "ManagedTarget", "Phase", "Target", "schedule"]

logger = logging.getLogger("tether.demo")

WAIT_TIMEOUT = 2  # the managed server's wait_timeout, short so idling past it takes seconds
LONG_WAIT_TIMEOUT = 28800  # the server default, restored before the blackhole
CAPPED_USER = "tether_demo_capped"
CAPPED_PASSWORD = "tether-demo-capped"  # a throwaway account on a throwaway server


def _admin_rows(conn: Any, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return list(cur.fetchall() or ())


class Target:
    """The server the demo runs against."""

    description = ""
    app: Endpoint  # the application user, straight to the server
    capped: Endpoint | None = None  # a user allowed fewer connections than there are threads
    cap: int = 0
    can_restart = False
    can_set_globals = False
    can_kill = False

    def admin(self) -> Any:
        """A new administrative PyMySQL connection, autocommit on, straight to the server."""
        raise NotImplementedError

    def restart(self, down: float) -> None:
        raise NotImplementedError

    def ensure_running(self) -> None:
        """Bring the server back if a fault left it down."""

    def close(self) -> None:
        """Stop what the demo started."""

    def app_users(self) -> list[str]:
        users = [self.app.user]
        if self.capped is not None and self.capped.user not in users:
            users.append(self.capped.user)
        return users

    def wait_timeout(self) -> int:
        conn = self.admin()
        try:
            return int(_admin_rows(conn, "SELECT @@GLOBAL.wait_timeout")[0][0])
        finally:
            conn.close()

    def set_wait_timeout(self, seconds: int) -> None:
        conn = self.admin()
        try:
            _admin_rows(conn, "SET GLOBAL wait_timeout = %s", (int(seconds),))
        finally:
            conn.close()

    def sessions(self, users: list[str]) -> list[int]:
        """Session ids of ``users`` (the administrative session itself excluded)."""
        conn = self.admin()
        try:
            marks = ",".join(["%s"] * len(users))
            rows = _admin_rows(
                conn,
                "SELECT ID FROM information_schema.PROCESSLIST"
                f" WHERE USER IN ({marks}) AND ID <> CONNECTION_ID()",
                tuple(users),
            )
            return [int(r[0]) for r in rows]
        finally:
            conn.close()

    def describe_sessions(self, users: list[str]) -> list[str]:
        """``user: command for Ns (state)`` for each session of ``users``."""
        conn = self.admin()
        try:
            marks = ",".join(["%s"] * len(users))
            rows = _admin_rows(
                conn,
                "SELECT USER, COMMAND, TIME, STATE FROM information_schema.PROCESSLIST"
                f" WHERE USER IN ({marks}) AND ID <> CONNECTION_ID()",
                tuple(users),
            )
        finally:
            conn.close()
        return [f"{u}: {c} for {t}s" + (f" ({st})" if st else "") for u, c, t, st in rows]

    def kill(self, ids: list[int], conn: Any = None) -> int:
        own = conn is None
        conn = conn or self.admin()
        killed = 0
        try:
            for session in ids:
                try:
                    _admin_rows(conn, f"KILL CONNECTION {int(session)}")
                    killed += 1
                except Exception as exc:  # already gone, or not ours to kill
                    logger.debug("KILL %d: %s", session, exc)
        finally:
            if own:
                conn.close()
        return killed

    def settle(self, users: list[str], wait: float) -> int:
        """Sessions of ``users`` still open after up to ``wait`` seconds (a closed socket
        takes the server a moment to notice)."""
        deadline = time.monotonic() + wait
        while True:
            count = len(self.sessions(users))
            if count == 0 or time.monotonic() >= deadline:
                return count
            time.sleep(0.1)


class ManagedTarget(Target):
    """A private throwaway MariaDB started for the demo, with ``wait_timeout=2`` and a second
    application user capped below the thread count."""

    def __init__(self, *, threads: int) -> None:
        self.server = MariaDBServer(
            options={"wait_timeout": WAIT_TIMEOUT, "max_connections": max(100, threads * 8)},
            user="app",
            password="app-secret",
            database="app",
            name="tether-demo",
        )
        self.cap = max(1, threads // 2)
        self.can_restart = True
        self.can_set_globals = True
        self.can_kill = True

    def start(self) -> None:
        s = self.server
        s.start()
        s.create_user(CAPPED_USER, CAPPED_PASSWORD, max_user_connections=self.cap)
        version = _admin_rows_once(s.admin(), "SELECT VERSION()")[0][0]
        self.description = (
            f"private MariaDB {version} on 127.0.0.1:{s.port} (wait_timeout={WAIT_TIMEOUT}),"
            " stopped at the end"
        )
        self.app = Endpoint(s.host, s.port, s.user, s.password, s.database)
        self.capped = Endpoint(s.host, s.port, CAPPED_USER, CAPPED_PASSWORD, s.database)

    def admin(self) -> Any:
        return self.server.admin()

    def restart(self, down: float) -> None:
        self.server.restart(down=down)

    def ensure_running(self) -> None:
        if not self.server.is_running():
            self.server.start()

    def close(self) -> None:
        self.server.stop()


def _admin_rows_once(conn: Any, sql: str) -> list[tuple[Any, ...]]:
    try:
        return _admin_rows(conn, sql)
    finally:
        conn.close()


class ExternalTarget(Target):
    """A server given by DSN. The demo creates its ``tether_demo_*`` tables in the
    application's database and drops them at the end; it never restarts the server nor changes
    its options. KILL and the transaction list need a privileged account (``admin``; the
    application's own account can only kill its own sessions)."""

    def __init__(
        self,
        app: Endpoint,
        *,
        admin: Endpoint | None,
        capped: Endpoint | None,
        threads: int,
    ) -> None:
        self.app = app
        self.admin_endpoint = admin or app
        self.capped = capped
        self.threads = threads
        self.notes: list[str] = []
        self._created_user = False

    def admin(self) -> Any:
        import pymysql

        return pymysql.connect(
            **self.admin_endpoint.connect_kwargs(),
            autocommit=True,
            connect_timeout=5,
            read_timeout=30,
            write_timeout=30,
        )

    def start(self, *, create_capped_user: bool) -> None:
        conn = self.admin()
        try:
            version = _admin_rows(conn, "SELECT VERSION()")[0][0]
            if self.admin_endpoint.user == self.app.user:
                self.can_kill = True  # an account may always kill its own sessions
            else:
                grants = " ".join(str(r[0]) for r in _admin_rows(conn, "SHOW GRANTS"))
                upper = grants.upper()
                self.can_kill = any(
                    p in upper for p in ("ALL PRIVILEGES ON *.*", "SUPER", "CONNECTION ADMIN")
                )
                if not self.can_kill:
                    self.notes.append(
                        f"{self.admin_endpoint.user} may not KILL other accounts' sessions"
                        " (needs SUPER or CONNECTION ADMIN): session kills are skipped"
                    )
            if self.capped is None and create_capped_user:
                self.cap = max(1, self.threads // 2)
                try:
                    _admin_rows(conn, f"DROP USER IF EXISTS '{CAPPED_USER}'@'%'")
                    _admin_rows(
                        conn,
                        f"CREATE USER '{CAPPED_USER}'@'%%' IDENTIFIED BY %s"
                        f" WITH MAX_USER_CONNECTIONS {self.cap}",
                        (CAPPED_PASSWORD,),
                    )
                    _admin_rows(
                        conn,
                        f"GRANT ALL PRIVILEGES ON `{self.app.database}`.* TO '{CAPPED_USER}'@'%'",
                    )
                    self._created_user = True
                    self.capped = Endpoint(
                        self.app.host,
                        self.app.port,
                        CAPPED_USER,
                        CAPPED_PASSWORD,
                        self.app.database,
                    )
                except Exception as exc:
                    self.notes.append(
                        f"could not create a capped user ({exc}): the connection cap phase needs"
                        " --cap-dsn or an --admin-dsn allowed to CREATE USER"
                    )
            elif self.capped is not None:
                self.cap = _session_limit(self.capped)
        finally:
            conn.close()
        self.description = f"{self.app.redacted()} (server {version}), given with --dsn"

    def close(self) -> None:
        if self._created_user:
            with contextlib.suppress(Exception):
                conn = self.admin()
                try:
                    _admin_rows(conn, f"DROP USER IF EXISTS '{CAPPED_USER}'@'%'")
                finally:
                    conn.close()


def _session_limit(endpoint: Endpoint) -> int:
    """The account's own MAX_USER_CONNECTIONS (0: unknown), as its sessions see it."""
    import pymysql

    try:
        conn = pymysql.connect(**endpoint.connect_kwargs(), connect_timeout=5, read_timeout=10)
    except Exception:
        return 0
    try:
        return int(_admin_rows(conn, "SELECT @@SESSION.max_user_connections")[0][0] or 0)
    except Exception:
        return 0
    finally:
        conn.close()


# ----------------------------------------------------------------------------- faults


@dataclass
class FaultContext:
    """Everything a fault may touch during one variant's run."""

    target: Target
    proxy: FaultProxy
    workload: Workload
    ledger: str  # the variant's ledger table
    log: Callable[[str], None]  # what happened, for the report


Fault = Callable[[FaultContext], None]


@dataclass
class Phase:
    key: str
    title: str
    short: str  # for the chart
    seconds: float  # planned length
    fault: Fault | None = None
    at: float = 0.0  # when within the phase the fault starts
    capped: bool = False  # run through the capped user's instance of the variant
    what: str = ""  # what the fault does, for the report
    skipped: str | None = None  # why it does not run against this target


def _idle(pause: float) -> Fault:
    def fault(ctx: FaultContext) -> None:
        left = ctx.workload.pause(wait=2.0)
        if left:
            ctx.log(f"{left} request(s) still in flight when the pause began")
        time.sleep(pause)
        ctx.workload.resume()

    return fault


def _restart(down: float) -> Fault:
    def fault(ctx: FaultContext) -> None:
        start = time.monotonic()
        ctx.target.restart(down)
        ctx.log(f"server down and back in {time.monotonic() - start:.1f}s")

    return fault


def _kill_in_transaction(seconds: float, kills: int, spacing: float) -> Fault:
    """KILL the sessions of writes stopped between their INSERT and their UPDATE (the
    workload's hook), found by the uncommitted ledger row that names its session."""

    def fault(ctx: FaultContext) -> None:
        target = ctx.target
        deadline = time.monotonic() + seconds
        conn = target.admin()
        killed = 0
        try:
            _admin_rows(conn, "SET SESSION TRANSACTION ISOLATION LEVEL READ UNCOMMITTED")
            while killed < kills and time.monotonic() < deadline:
                ctx.workload.hold_writes(1)
                held = ctx.workload.next_held(deadline - time.monotonic())
                if held is None:
                    break
                request_id, release = held
                try:
                    rows = _admin_rows(
                        conn,
                        f"SELECT session FROM {ctx.ledger} WHERE request_id = %s",
                        (request_id,),
                    )
                    if rows:
                        killed += target.kill([int(rows[0][0])], conn)
                finally:
                    release.set()
                time.sleep(spacing)
        finally:
            ctx.workload.hold_writes(0)
            conn.close()
        ctx.log(f"killed {killed} session(s) between INSERT and COMMIT")

    return fault


def _kill_all(restore_wait_timeout: bool) -> Fault:
    def fault(ctx: FaultContext) -> None:
        if restore_wait_timeout:
            # From here on no short wait_timeout ends a session stuck behind the blackhole,
            # as on a server with the default settings. The KILL makes every session new.
            ctx.target.set_wait_timeout(LONG_WAIT_TIMEOUT)
        ids = ctx.target.sessions([ctx.target.app.user])
        ctx.log(f"killed {ctx.target.kill(ids)} of {len(ids)} application session(s)")

    return fault


def _blackhole(seconds: float) -> Fault:
    def fault(ctx: FaultContext) -> None:
        ctx.proxy.blackhole(True)
        try:
            time.sleep(seconds)
        finally:
            ctx.proxy.blackhole(False)

    return fault


def schedule(target: Target, *, quick: bool, threads: int) -> list[Phase]:
    """The fault phases, in order, with the reason where one cannot run against ``target``."""
    wait_timeout: int | None
    try:
        wait_timeout = target.wait_timeout()
    except Exception:
        wait_timeout = None
    managed = isinstance(target, ManagedTarget)
    if quick:
        cap_s, warm_s, idle_tail = 0.7, 0.4, 0.2
        restart_s, restart_down = 1.5, 0.3
        trx_s, trx_kills, trx_spacing = 0.9, 3, 0.2
        kill_s, hole_at, hole_s, hole_tail = 0.7, 0.2, 1.2, 0.8
    else:
        cap_s, warm_s, idle_tail = 4.0, 2.0, 2.0
        restart_s, restart_down = 6.0, 1.5
        trx_s, trx_kills, trx_spacing = 3.5, 6, 0.4
        kill_s, hole_at, hole_s, hole_tail = 3.0, 0.5, 3.0, 6.5

    cap = target.cap or max(1, threads // 2)
    phases = [
        Phase(
            "cap",
            f"connection cap ({cap} < {threads} threads)",
            "cap",
            cap_s,
            capped=True,
            what=f"the variant runs as a user with MAX_USER_CONNECTIONS {cap}",
            skipped=None
            if target.capped is not None
            else "no capped user: pass --cap-dsn, or an --admin-dsn allowed to CREATE USER",
        ),
        Phase("warm-up", "warm-up", "warm-up", warm_s, what="no fault"),
    ]
    if wait_timeout is not None and wait_timeout <= 10:
        pause = wait_timeout + 0.4 if quick else wait_timeout + 1.0
        phases.append(
            Phase(
                "idle",
                f"idle past wait_timeout ({wait_timeout}s)",
                "idle",
                pause + idle_tail,
                _idle(pause),
                what=f"the workload pauses {pause:g}s; the server drops idle sessions",
            )
        )
    else:
        phases.append(
            Phase(
                "idle",
                "idle past wait_timeout",
                "idle",
                0.0,
                skipped=(
                    f"the server's wait_timeout is {wait_timeout}s: start it with"
                    " --wait-timeout=2 to see this"
                    if wait_timeout is not None
                    else "cannot read the server's wait_timeout"
                ),
            )
        )
    phases.append(
        Phase(
            "restart",
            "server restart",
            "restart",
            restart_s,
            _restart(restart_down),
            at=0.2 if quick else 0.5,
            what=f"clean shutdown, down {restart_down:g}s, start on the same port",
            skipped=None if target.can_restart else "needs control of the server (--dsn given)",
        )
    )
    phases.append(
        Phase(
            "kill-trx",
            "killed inside a transaction",
            "KILL in trx",
            trx_s,
            _kill_in_transaction(trx_s - 0.2, trx_kills, trx_spacing),
            at=0.1,
            what=f"KILL up to {trx_kills} sessions between their INSERT and COMMIT",
            skipped=None if target.can_kill else "needs KILL rights (pass --admin-dsn)",
        )
    )
    phases.append(
        Phase(
            "kill",
            "sessions killed",
            "KILL all",
            kill_s,
            _kill_all(restore_wait_timeout=managed),
            at=0.2 if quick else 0.5,
            what="KILL every session of the application user"
            + (f" (and wait_timeout back to {LONG_WAIT_TIMEOUT}s)" if managed else ""),
            skipped=None if target.can_kill else "needs KILL rights (pass --admin-dsn)",
        )
    )
    phases.append(
        Phase(
            "blackhole",
            f"blackhole ({hole_s:g}s)",
            "blackhole",
            hole_at + hole_s + hole_tail,
            _blackhole(hole_s),
            at=hole_at,
            what=f"the proxy forwards nothing for {hole_s:g}s, keeping every socket open",
        )
    )
    return phases


def run_fault(phase: Phase, ctx: FaultContext) -> threading.Thread | None:
    """Start ``phase``'s fault in its own thread (the controller keeps the display live)."""
    if phase.fault is None:
        return None
    fault = phase.fault

    def body() -> None:
        if phase.at:
            time.sleep(phase.at)
        try:
            fault(ctx)
        except Exception as exc:
            ctx.log(f"the fault itself failed: {type(exc).__name__}: {exc}")
            logger.warning("demo fault %s failed: %s", phase.key, exc)

    thread = threading.Thread(target=body, name=f"tether-demo-fault-{phase.key}", daemon=True)
    thread.start()
    return thread
