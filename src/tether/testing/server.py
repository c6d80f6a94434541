"""A private, throwaway MariaDB server for tests, benchmarks and the demo.

Each server runs ``mariadbd`` from its own copy of a data directory initialised once per
machine (``mariadb-install-db`` into a cached template), on a free 127.0.0.1 port with its own
socket, with the server options a test asks for. It can be stopped, started, restarted on the
same port, killed with SIGKILL, and its sessions killed from an admin connection. A server is
never left running after the process that started it exits.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

__all__ = ["MariaDBServer", "ServerError", "find_binary"]

logger = logging.getLogger("tether.testing")

# Small-footprint settings: many servers may run at once on a 2-core machine.
_BASE_OPTIONS = (
    "--skip-name-resolve",
    "--skip-log-bin",
    "--performance-schema=OFF",
    "--innodb-buffer-pool-size=32M",
    "--innodb-log-file-size=16M",
    "--innodb-flush-log-at-trx-commit=2",
    "--skip-innodb-doublewrite",
    "--max-allowed-packet=64M",
    "--character-set-server=utf8mb4",
    "--collation-server=utf8mb4_general_ci",
)
_SEARCH_DIRS = ("/usr/sbin", "/usr/libexec", "/usr/bin", "/usr/local/sbin", "/usr/local/bin")
# Strong references: a server whose object was dropped must still be stopped at exit.
_running: set[MariaDBServer] = set()
_template_lock = threading.Lock()


class ServerError(RuntimeError):
    """The private server could not be set up, started or reached."""


def find_binary(*names: str) -> str:
    """The first of ``names`` found on PATH or in the usual system directories."""
    for name in names:
        found = shutil.which(name)
        if found:
            return found
        for directory in _SEARCH_DIRS:
            candidate = os.path.join(directory, name)
            if os.access(candidate, os.X_OK):
                return candidate
    raise ServerError(
        f"none of {', '.join(names)} found: install Debian's mariadb-server (make test does it)"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_version(mariadbd: str) -> str:
    out = subprocess.run(
        [mariadbd, "--version"], capture_output=True, text=True, timeout=30, check=False
    ).stdout
    words = out.split()
    version = next((w for w in words if w[:1].isdigit()), "unknown")
    return version.replace("/", "_")


def _template_dir(mariadbd: str) -> Path:
    """A data directory initialised once and copied for every server (seconds saved per
    start). Built in a temporary directory and renamed into place, so racing processes
    never see a half-built template."""
    version = _server_version(mariadbd)
    root = Path(tempfile.gettempdir()) / f"tether-mariadb-template-{version}-{os.getuid()}"
    if (root / ".complete").exists():
        return root
    with _template_lock:
        if (root / ".complete").exists():
            return root
        install = find_binary("mariadb-install-db", "mysql_install_db")
        building = Path(tempfile.mkdtemp(prefix="tether-template-build-"))
        args = [
            install,
            "--no-defaults",
            f"--datadir={building}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            "--innodb-log-file-size=16M",
        ]
        if os.geteuid() == 0:
            args.append("--user=root")
        result = subprocess.run(args, capture_output=True, text=True, timeout=180, check=False)
        if result.returncode != 0:
            shutil.rmtree(building, ignore_errors=True)
            raise ServerError(f"mariadb-install-db failed:\n{result.stdout}\n{result.stderr}")
        (building / ".complete").touch()
        try:
            os.rename(building, root)
        except OSError:
            # Another process finished first: use theirs.
            shutil.rmtree(building, ignore_errors=True)
        if not (root / ".complete").exists():
            raise ServerError(f"template data directory {root} is incomplete")
        return root


class MariaDBServer:
    """A private MariaDB server. Use as a context manager, or call :meth:`start` and
    :meth:`stop`.

    ``options`` are server options (``{"wait_timeout": 2, "max_connections": 20}``), passed as
    ``--wait-timeout=2``. An application user (``user``/``password``, optionally limited by
    ``max_user_connections``) owns ``database``. Root has an empty password and is reached over
    the server's own unix socket only.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        *,
        options: Mapping[str, str | int | float] | None = None,
        user: str = "app",
        password: str = "app-secret",
        database: str = "app",
        max_user_connections: int | None = None,
        name: str = "mariadb",
        keep: bool = False,
    ) -> None:
        self.options = dict(options or {})
        self.user = user
        self.password = password
        self.database = database
        self.max_user_connections = max_user_connections
        self.name = name
        self.keep = keep
        self._mariadbd = find_binary("mariadbd", "mysqld")
        self.port = _free_port()
        self.basedir = Path(tempfile.mkdtemp(prefix="tether-mariadb-"))
        self.datadir = self.basedir / "data"
        self.socket = str(self.basedir / "mysqld.sock")
        self.error_log = self.basedir / "error.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._provisioned = False
        self._initial_globals: dict[str, Any] = {}
        self._extra_users: set[str] = set()

    # -- lifecycle

    def __enter__(self) -> MariaDBServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.is_running() else "stopped"
        return f"<MariaDBServer {self.name!r} 127.0.0.1:{self.port} {state}>"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 60.0) -> None:
        """Start the server (on the same port as before, after a stop) and wait until it
        accepts connections."""
        if self.is_running():
            return
        if not self.datadir.exists():
            shutil.copytree(_template_dir(self._mariadbd), self.datadir, symlinks=True)
            self._provisioned = False  # a fresh copy has no application user yet
        args = [
            self._mariadbd,
            "--no-defaults",
            f"--datadir={self.datadir}",
            f"--socket={self.socket}",
            f"--pid-file={self.basedir / 'mysqld.pid'}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            f"--log-error={self.error_log}",
            *_BASE_OPTIONS,
        ]
        if os.geteuid() == 0:
            args.append("--user=root")
        for key, value in self.options.items():
            args.append(f"--{key.replace('_', '-')}={value}")
        deadline = time.monotonic() + timeout
        attempt = 0
        while True:
            attempt += 1
            self._proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C in the terminal must not reach it first
            )
            _running.add(self)
            _install_sigterm_cleanup()
            try:
                self._wait_ready(deadline)
                break
            except ServerError:
                # The port may still be held by the previous incarnation for a moment.
                self._terminate(grace=5)
                if attempt >= 3 or time.monotonic() >= deadline:
                    raise
                time.sleep(0.5)
        if not self._provisioned:
            try:
                self._provision()
            except BaseException:
                self.stop()
                raise
            self._provisioned = True
        logger.info("%s: started on 127.0.0.1:%d (pid %d)", self.name, self.port, self.pid)

    def _wait_ready(self, deadline: float) -> None:
        import pymysql

        while True:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                raise ServerError(
                    f"{self.name}: mariadbd exited during start-up\n{self.log_tail()}"
                )
            try:
                conn = pymysql.connect(
                    unix_socket=self.socket, user="root", password="", connect_timeout=2
                )
            except pymysql.Error:
                if time.monotonic() >= deadline:
                    raise ServerError(
                        f"{self.name}: not ready before the deadline\n{self.log_tail()}"
                    ) from None
                time.sleep(0.05)
                continue
            conn.close()
            # TCP must be up too (the socket can be ready a moment earlier).
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.host, self.port), timeout=2),
            ):
                return
            if time.monotonic() >= deadline:
                raise ServerError(f"{self.name}: TCP port not open\n{self.log_tail()}")
            time.sleep(0.05)

    def _provision(self) -> None:
        db = self.database
        self.execute_admin(f"CREATE DATABASE IF NOT EXISTS `{db}`")
        self._create_user(self.user, self.password, self.max_user_connections, f"`{db}`.*")

    def stop(self, timeout: float = 30.0) -> None:
        """Shut the server down cleanly (SIGKILL after ``timeout``) and, unless ``keep``,
        remove its files."""
        self._terminate(grace=timeout)
        if not self.keep:
            shutil.rmtree(self.basedir, ignore_errors=True)
            self._provisioned = False
        _running.discard(self)

    def _terminate(self, grace: float) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self._proc = None

    def restart(self, down: float = 0.0) -> None:
        """Stop cleanly, stay down ``down`` seconds, start again on the same port. Every
        session is dropped; data and users are kept."""
        self._terminate(grace=30)
        if down > 0:
            time.sleep(down)
        self.start()

    def kill9(self) -> None:
        """SIGKILL the server (a crash). :meth:`start` brings it back (with crash recovery)."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        self._proc = None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.error_log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no error log)"

    # -- addresses

    def dsn(
        self,
        user: str | None = None,
        password: str | None = None,
        database: str | None = None,
        *,
        host: str | None = None,
        port: int | None = None,
    ) -> str:
        """A DSN for the application user (or another), optionally through a proxy's
        host and port."""
        u = user or self.user
        p = self.password if password is None and user is None else (password or "")
        auth = quote(u, safe="") + (":" + quote(p, safe="") if p else "")
        return f"mysql://{auth}@{host or self.host}:{port or self.port}/{database or self.database}"

    # -- administration (root over the unix socket)

    def admin(self) -> Any:
        """A new PyMySQL root connection over the unix socket, autocommit on."""
        import pymysql

        return pymysql.connect(
            unix_socket=self.socket,
            user="root",
            password="",
            autocommit=True,
            connect_timeout=5,
            read_timeout=30,
            write_timeout=30,
        )

    def execute_admin(self, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
        conn = self.admin()
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args)
                return list(cur.fetchall() or ())
        finally:
            conn.close()

    def processlist(self, user: str | None = None) -> list[dict[str, Any]]:
        conn = self.admin()
        try:
            import pymysql.cursors

            with conn.cursor(pymysql.cursors.DictCursor) as cur:
                if user is None:
                    cur.execute("SELECT * FROM information_schema.PROCESSLIST")
                else:
                    cur.execute(
                        "SELECT * FROM information_schema.PROCESSLIST WHERE USER = %s", (user,)
                    )
                return list(cur.fetchall())
        finally:
            conn.close()

    def connections_of(self, user: str | None = None) -> int:
        """How many sessions ``user`` (default: the application user) has open now."""
        rows = self.execute_admin(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = %s",
            (user or self.user,),
        )
        return int(rows[0][0])

    def threads_connected(self) -> int:
        rows = self.execute_admin("SHOW GLOBAL STATUS LIKE 'Threads_connected'")
        return int(rows[0][1])

    def kill_sessions(self, user: str | None = None, ids: Iterable[int] | None = None) -> int:
        """KILL the given sessions, or all of ``user``'s. Returns how many were killed."""
        conn = self.admin()
        killed = 0
        try:
            with conn.cursor() as cur:
                if ids is None:
                    cur.execute(
                        "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = %s",
                        (user or self.user,),
                    )
                    ids = [int(row[0]) for row in cur.fetchall()]
                for session in ids:
                    try:
                        cur.execute(f"KILL {int(session)}")
                        killed += 1
                    except pymysql_error():
                        pass  # already gone
        finally:
            conn.close()
        return killed

    def set_global(self, name: str, value: Any) -> None:
        """SET GLOBAL, remembered so :meth:`reset` can restore the start value."""
        if not name.replace("_", "").isalnum():
            raise ValueError(f"not a variable name: {name!r}")
        if name not in self._initial_globals:
            rows = self.execute_admin(f"SELECT @@GLOBAL.{name}")
            self._initial_globals[name] = rows[0][0]
        self.execute_admin(f"SET GLOBAL {name} = %s", (value,))

    def create_user(
        self,
        name: str,
        password: str,
        *,
        max_user_connections: int | None = None,
        grants: str | None = None,
    ) -> None:
        """A further user (dropped by :meth:`reset`). ``grants`` like ``"SELECT ON app.*"``;
        ``None`` gives all privileges on the application database, ``""`` none."""
        self._create_user(name, password, max_user_connections, None, grants)
        self._extra_users.add(name)

    def _create_user(
        self,
        name: str,
        password: str,
        max_user_connections: int | None,
        on: str | None,
        grants: str | None = None,
    ) -> None:
        limit = (
            f" WITH MAX_USER_CONNECTIONS {int(max_user_connections)}"
            if max_user_connections is not None
            else ""
        )
        self.execute_admin(f"DROP USER IF EXISTS '{name}'@'%'")
        self.execute_admin(f"CREATE USER '{name}'@'%%' IDENTIFIED BY %s{limit}", (password,))
        if grants is None:
            grants = f"ALL PRIVILEGES ON {on or f'`{self.database}`.*'}"
        if grants:
            self.execute_admin(f"GRANT {grants} TO '{name}'@'%'")

    def reset(self) -> None:
        """Cheap per-test cleanup: kill every non-root session, recreate the application
        database, restore changed globals, drop extra users."""
        conn = self.admin()
        try:
            with conn.cursor() as cur:
                for name, value in self._initial_globals.items():
                    cur.execute(f"SET GLOBAL {name} = %s", (value,))
                self._initial_globals.clear()
                cur.execute(
                    "SELECT ID FROM information_schema.PROCESSLIST"
                    " WHERE USER NOT IN ('root', 'system user', 'event_scheduler')"
                    " AND ID <> CONNECTION_ID() AND COMMAND <> 'Daemon'"
                )
                for (session,) in cur.fetchall():
                    with contextlib.suppress(pymysql_error()):
                        cur.execute(f"KILL {int(session)}")
                for name in self._extra_users:
                    cur.execute(f"DROP USER IF EXISTS '{name}'@'%'")
                self._extra_users.clear()
                cur.execute(f"DROP DATABASE IF EXISTS `{self.database}`")
                cur.execute(f"CREATE DATABASE `{self.database}`")
        finally:
            conn.close()


def pymysql_error() -> type[Exception]:
    import pymysql

    return pymysql.Error


@atexit.register
def _stop_all() -> None:
    # Safety net: a server is never left running after the process that started it.
    for server in list(_running):
        with contextlib.suppress(Exception):
            server.stop(timeout=10)


def _on_sigterm(signum: int, frame: object) -> None:
    # SIGTERM (a CI timeout, a kill) skips atexit: stop our servers, then die as asked.
    _stop_all()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _install_sigterm_cleanup() -> None:
    if (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    ):
        signal.signal(signal.SIGTERM, _on_sigterm)
