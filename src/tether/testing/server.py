"""A private, throwaway MariaDB server for tests, benchmarks and the demo.

Each server runs ``mariadbd`` from its own copy of a data directory initialised once per
machine and user (``mariadb-install-db`` into a cached template), on a free 127.0.0.1 port with
its own unix socket, with the server options a test asks for. It can be stopped, started,
restarted on the same port, killed with SIGKILL, and its sessions killed from an admin
connection.

A server is never left running after the process that started it is gone: ``stop()`` at
interpreter exit (atexit) covers normal exits and Ctrl-C, and a tiny watcher process covers the
rest (SIGKILL, ``os._exit`` as used by pytest-timeout's thread method, a crash): it holds the
read end of a pipe only its owner writes to, and when that pipe closes without a goodbye it
shuts the server down and removes its files.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    import pymysql.connections

__all__ = ["MariaDBServer", "ServerError", "find_binary"]

logger = logging.getLogger("tether.testing")

HOST = "127.0.0.1"

# Small-footprint settings: many servers may run at once on a 2-core machine. Durability is
# traded for speed only against an OS crash (flush at most once a second, no doublewrite); a
# SIGKILL of mariadbd still loses nothing that was committed, which crash tests rely on.
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
# Options the harness owns: a test overriding them would break stop, restart or admin access.
_RESERVED_OPTIONS = frozenset(
    {
        "datadir",
        "socket",
        "pid-file",
        "port",
        "bind-address",
        "log-error",
        "tmpdir",
        "user",
        "no-defaults",
    }
)
_SEARCH_DIRS = ("/usr/sbin", "/usr/libexec", "/usr/bin", "/usr/local/sbin", "/usr/local/bin")
_NAME = re.compile(r"[A-Za-z0-9_]{1,64}")
_OPTION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_USER = re.compile(r"[A-Za-z0-9_.-]{1,80}")
_START_ATTEMPTS = 5

# Strong references: a server whose object was dropped must still be stopped at exit.
_running: set[MariaDBServer] = set()
_registry_lock = threading.Lock()
_template_lock = threading.Lock()

# The watcher: reads "pid N" lines (the current mariadbd) until "done" (a deliberate stop) or
# EOF (the owner is gone without stopping it). It checks /proc that the pid still belongs to
# this server's datadir before signalling it, so a recycled pid is never hit.
_WATCHER = r"""
import os, shutil, signal, sys, time
basedir, remove = sys.argv[1], sys.argv[2] == "1"
pid = 0
for line in sys.stdin:
    word, _, arg = line.strip().partition(" ")
    if word == "pid":
        pid = int(arg)
    elif word == "done":
        sys.exit(0)

def ours(p):
    try:
        with open(f"/proc/{p}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        with open(f"/proc/{p}/cmdline", "rb") as f:
            cmdline = f.read()
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X") and basedir.encode() in cmdline

if pid and ours(pid):
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while ours(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if ours(pid):
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
if remove:
    shutil.rmtree(basedir, ignore_errors=True)
"""


class ServerError(RuntimeError):
    """The private server could not be set up, started or reached."""


def find_binary(*names: str) -> str:
    """The first of ``names`` found on PATH or in the usual system directories (Debian puts
    ``mariadbd`` in /usr/sbin, which is not on every user's PATH)."""
    for name in names:
        found = shutil.which(name)
        if found:
            return found
        for directory in _SEARCH_DIRS:
            candidate = os.path.join(directory, name)
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                return candidate
    raise ServerError(
        f"none of {', '.join(names)} found: install Debian's mariadb-server (make test does it)"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _server_version(mariadbd: str) -> str:
    out = subprocess.run(
        [mariadbd, "--version"], capture_output=True, text=True, timeout=30, check=False
    ).stdout
    version = next((w for w in out.split() if w[:1].isdigit()), "unknown")
    return re.sub(r"[^A-Za-z0-9.+_-]", "_", version)


def _template_dir(mariadbd: str) -> Path:
    """A data directory initialised once and copied for every server (seconds saved per
    start). It is built in a temporary directory beside its final place and renamed into
    place, so racing processes never see a half-built template: the loser of the rename
    throws its own copy away and uses the winner's."""
    version = _server_version(mariadbd)
    root = Path(tempfile.gettempdir()) / f"tether-mariadb-template-{version}-{os.getuid()}"
    if (root / ".complete").exists():
        return root
    with _template_lock:
        if (root / ".complete").exists():
            return root
        install = find_binary("mariadb-install-db", "mysql_install_db")
        building = Path(tempfile.mkdtemp(prefix="tether-template-build-", dir=root.parent))
        scratch = Path(tempfile.mkdtemp(prefix="tether-template-tmp-", dir=root.parent))
        args = [
            install,
            "--no-defaults",
            f"--datadir={building}",
            f"--tmpdir={scratch}",  # passed on to mariadbd: see _spawn on why it is private
            # Root gets an empty password (reached only over the server's private socket), so
            # admin access works the same whoever runs the tests.
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            "--innodb-log-file-size=16M",
        ]
        if os.geteuid() == 0:
            args.append("--user=root")
        logger.info("building the MariaDB template data directory %s", root)
        try:
            result = subprocess.run(args, capture_output=True, text=True, timeout=180, check=False)
            if result.returncode != 0:
                raise ServerError(f"mariadb-install-db failed:\n{result.stdout}\n{result.stderr}")
            (building / ".complete").touch()
            try:
                os.rename(building, root)
            except OSError:
                # Another process finished first: use theirs.
                logger.debug("template %s was built concurrently; using that one", root)
        finally:
            shutil.rmtree(building, ignore_errors=True)  # gone already if the rename won
            shutil.rmtree(scratch, ignore_errors=True)
        if not (root / ".complete").exists():
            raise ServerError(f"template data directory {root} is incomplete")
        return root


def _option_flag(key: str, value: str | int | float) -> str:
    name = key.lstrip("-").replace("_", "-")
    if not _OPTION.fullmatch(name):
        raise ValueError(f"not a server option name: {key!r}")
    if name in _RESERVED_OPTIONS:
        raise ValueError(f"server option {key!r} is set by the harness itself")
    text = ("ON" if value else "OFF") if isinstance(value, bool) else str(value)
    return f"--{name}={text}"


def _python_for_watcher() -> str | None:
    # sys.executable is not a Python interpreter when embedded (uWSGI, for one).
    exe = sys.executable
    if exe and os.path.basename(exe).startswith("python"):
        return exe
    return shutil.which("python3")


class _Watcher:
    """The out-of-process safety net for one server's lifetime (first start to stop)."""

    def __init__(self, basedir: Path, remove: bool) -> None:
        self._fd: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        python = _python_for_watcher()
        if python is None or not os.path.isdir("/proc"):
            logger.debug("no watcher process (no python or no /proc); atexit only")
            return
        read_end, write_end = os.pipe()  # both non-inheritable: no other child keeps it open
        try:
            self._proc = subprocess.Popen(
                [python, "-I", "-c", _WATCHER, str(basedir), "1" if remove else "0"],
                stdin=read_end,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                # Its own session: a Ctrl-C to the test run must not take the safety net down.
                start_new_session=True,
            )
        except OSError:
            os.close(write_end)
            logger.warning("could not start the watcher process; atexit only", exc_info=True)
            return
        finally:
            os.close(read_end)
        self._fd = write_end

    def _send(self, line: str) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.write(self._fd, line.encode() + b"\n")

    def watch(self, pid: int) -> None:
        self._send(f"pid {pid}")

    def close(self) -> None:
        """The owner stopped the server itself: dismiss the watcher."""
        self._send("done")
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        if self._proc is not None:
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
            self._proc = None


class MariaDBServer:
    """A private MariaDB server. Use as a context manager, or call :meth:`start` and
    :meth:`stop`.

    ``options`` are server options (``{"wait_timeout": 2, "max_connections": 20}``), passed on
    the command line as ``--wait-timeout=2``. An application user (``user``/``password``,
    optionally limited by ``max_user_connections``) owns ``database``. Root has an empty
    password and is reachable only over the server's own unix socket, inside a directory only
    the current OS user can enter. Files live in a fresh temporary directory, removed by
    :meth:`stop` unless ``keep``.
    """

    host = HOST

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
        start_timeout: float = 60.0,
    ) -> None:
        if not _USER.fullmatch(user):
            raise ValueError(f"unsupported user name {user!r}")
        if not _NAME.fullmatch(database):
            raise ValueError(f"unsupported database name {database!r}")
        self._option_args = [_option_flag(k, v) for k, v in (options or {}).items()]
        self.options: dict[str, str | int | float] = dict(options or {})
        self.user = user
        self.password = password
        self.database = database
        self.max_user_connections = max_user_connections
        self.name = name
        self.keep = keep
        self.start_timeout = start_timeout
        self._mariadbd = find_binary("mariadbd", "mysqld")
        self._port = _free_port()
        self._basedir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._watcher: _Watcher | None = None
        self._ever_started = False
        self._owner_pid = os.getpid()  # the process whose exit stops the server
        self._provisioned = False
        self._initial_globals: dict[str, Any] = {}
        self._extra_users: set[str] = set()
        # Lifecycle calls may come from a test and from a fault-injecting thread at once.
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ addresses and files

    @property
    def port(self) -> int:
        """The TCP port, chosen once and kept across restarts."""
        return self._port

    @property
    def basedir(self) -> Path:
        """The server's private directory (datadir, socket, pid file, error log)."""
        if self._basedir is None:
            raise ServerError(f"{self.name}: never started, no files yet")
        return self._basedir

    @property
    def datadir(self) -> Path:
        return self.basedir / "data"

    @property
    def socket(self) -> str:
        """The unix socket path (root's way in)."""
        return str(self.basedir / "mysqld.sock")

    @property
    def tmpdir(self) -> Path:
        return self.basedir / "tmp"

    @property
    def error_log(self) -> Path:
        return self.basedir / "error.log"

    @property
    def pid(self) -> int | None:
        """The mariadbd process id while it is running, else None."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def dsn(
        self,
        user: str | None = None,
        password: str | None = None,
        database: str | None = None,
        *,
        host: str | None = None,
        port: int | None = None,
    ) -> str:
        """``mysql://app:app-secret@127.0.0.1:PORT/app``, for the application user or another
        (``password`` then defaults to empty), optionally through a proxy's host and port."""
        u = user or self.user
        p = self.password if password is None and user in (None, self.user) else (password or "")
        auth = quote(u, safe="") + (":" + quote(p, safe="") if p else "")
        return f"mysql://{auth}@{host or self.host}:{port or self.port}/{database or self.database}"

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.is_running() else "stopped"
        return f"<MariaDBServer {self.name!r} {self.host}:{self.port} {state}>"

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> MariaDBServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def is_running(self) -> bool:
        proc = self._proc
        return proc is not None and proc.poll() is None

    def start(self, timeout: float | None = None) -> None:
        """Start the server (on the same port as before, after a stop or a crash) and wait
        until it accepts connections over its socket and TCP. The application user and
        database are created on the first start of a fresh data directory."""
        with self._lock:
            if self.is_running():
                return
            deadline = time.monotonic() + (self.start_timeout if timeout is None else timeout)
            fresh = self._prepare_files()
            self._owner_pid = os.getpid()
            with _registry_lock:
                _running.add(self)
            attempt = 0
            while True:
                attempt += 1
                log_offset = self._log_size()
                self._spawn()
                try:
                    self._wait_ready(deadline)
                    break
                except ServerError:
                    port_busy = self._port_busy_since(log_offset)
                    self._terminate(grace=5)
                    if not port_busy or attempt >= _START_ATTEMPTS:
                        raise
                    if time.monotonic() >= deadline:
                        raise
                    if self._ever_started:
                        # Clients know this port: wait for whoever holds it to let go.
                        logger.info("%s: port %d busy, retrying", self.name, self._port)
                        time.sleep(0.5)
                    else:
                        # Nobody knows the port yet: take another one.
                        self._port = _free_port()
            self._ever_started = True
            if fresh or not self._provisioned:
                try:
                    self._provision()
                except BaseException:
                    self.stop()
                    raise
                self._provisioned = True
            logger.info("%s: running on %s:%d (pid %s)", self.name, self.host, self._port, self.pid)

    def stop(self, timeout: float = 30.0) -> None:
        """Shut the server down cleanly (SIGTERM, then SIGKILL after ``timeout`` seconds) and,
        unless ``keep``, remove its files. Safe to call twice."""
        with self._lock:
            self._terminate(grace=timeout)
            if self._watcher is not None:
                self._watcher.close()
                self._watcher = None
            if not self.keep and self._basedir is not None:
                shutil.rmtree(self._basedir, ignore_errors=True)
                self._provisioned = False
            with _registry_lock:
                _running.discard(self)

    def restart(self, down: float = 0.0) -> None:
        """Stop cleanly, stay down ``down`` seconds, start again on the same port. Every
        session is dropped; data and users are kept."""
        with self._lock:
            self._terminate(grace=30)
            if down > 0:
                time.sleep(down)
            self.start()

    def kill9(self) -> None:
        """SIGKILL mariadbd (a crash) and do not restart it. :meth:`start` brings it back,
        with InnoDB crash recovery; :meth:`stop` still cleans up."""
        with self._lock:
            proc = self._proc
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
                logger.info("%s: killed with SIGKILL (pid %d)", self.name, proc.pid)
            self._proc = None

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the server's error log."""
        try:
            text = self.error_log.read_text(errors="replace")
        except (OSError, ServerError):
            return "(no error log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- lifecycle internals

    def _prepare_files(self) -> bool:
        """Make sure the private directory and a data directory exist; True if the data
        directory was freshly copied from the template."""
        if self._basedir is None or not self._basedir.exists():
            self._basedir = Path(tempfile.mkdtemp(prefix="tether-mariadb-"))
            self._provisioned = False
        if self._watcher is None:
            self._watcher = _Watcher(self._basedir, remove=not self.keep)
        self.tmpdir.mkdir(exist_ok=True)
        if self.datadir.exists():
            return False
        shutil.copytree(
            _template_dir(self._mariadbd),
            self.datadir,
            symlinks=True,
            ignore=shutil.ignore_patterns(".complete"),
        )
        return True

    def _spawn(self) -> None:
        base = self.basedir
        args = [
            self._mariadbd,
            "--no-defaults",  # must come first: /etc/mysql must not leak into a test server
            f"--datadir={self.datadir}",
            f"--socket={self.socket}",
            f"--pid-file={base / 'mysqld.pid'}",
            f"--port={self._port}",
            f"--bind-address={self.host}",
            f"--log-error={self.error_log}",
            # A private tmpdir: at start-up mariadbd deletes every "#sql*" file in its tmpdir,
            # which in a shared /tmp are other servers' live temporary tables.
            f"--tmpdir={self.tmpdir}",
            *_BASE_OPTIONS,
        ]
        if os.geteuid() == 0:
            args.append("--user=root")  # mariadbd refuses to run as root without it
        args.extend(self._option_args)
        self._proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Its own session: a Ctrl-C in the terminal must not kill it before we stop it
            # cleanly (and a test's os.killpg must not reach it by accident).
            start_new_session=True,
        )
        if self._watcher is not None:
            self._watcher.watch(self._proc.pid)

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
                pass
            else:
                conn.close()
                # TCP must be up too (the socket can be ready a moment earlier).
                with contextlib.suppress(OSError):
                    socket.create_connection((self.host, self._port), timeout=2).close()
                    return
            if time.monotonic() >= deadline:
                self._terminate(grace=5)
                raise ServerError(f"{self.name}: not ready before the deadline\n{self.log_tail()}")
            time.sleep(0.05)  # start-up takes a few hundred ms: poll gently, bounded above

    def _log_size(self) -> int:
        try:
            return self.error_log.stat().st_size
        except OSError:
            return 0

    def _port_busy_since(self, offset: int) -> bool:
        try:
            with self.error_log.open("rb") as f:
                f.seek(offset)
                text = f.read().decode(errors="replace")
        except OSError:
            return False
        return "Address already in use" in text or "Bind on TCP/IP port" in text

    def _terminate(self, grace: float) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                logger.warning("%s: no clean shutdown in %.0f s, SIGKILL", self.name, grace)
                proc.kill()
                proc.wait(10)
            logger.info("%s: stopped (pid %d)", self.name, proc.pid)
        self._proc = None

    def _provision(self) -> None:
        with self._admin_cursor() as cur:
            # install-db also makes root@127.0.0.1, root@::1 and root@<hostname> with empty
            # passwords, and on some versions anonymous users: anyone on loopback could walk
            # in as root, and an anonymous ''@localhost shadows the application user.
            cur.execute(
                "SELECT User, Host FROM mysql.global_priv"
                " WHERE (User = 'root' AND Host <> 'localhost') OR User = ''"
            )
            for user, host in cur.fetchall():
                cur.execute("DROP USER %s@%s", (user, host))
            cur.execute(f"CREATE DATABASE IF NOT EXISTS `{self.database}`")
            self._create_user(cur, self.user, self.password, self.max_user_connections, None)

    # ------------------------------------------------------------------ administration

    def admin(self) -> pymysql.connections.Connection[Any]:
        """A new PyMySQL root connection over the unix socket, autocommit on. Close it."""
        import pymysql

        return pymysql.connect(
            unix_socket=self.socket,
            user="root",
            password="",
            autocommit=True,
            connect_timeout=5,
            read_timeout=60,
            write_timeout=60,
        )

    @contextlib.contextmanager
    def _admin_cursor(self) -> Iterator[Any]:
        conn = self.admin()
        try:
            with conn.cursor() as cur:
                yield cur
        finally:
            conn.close()

    def execute_admin(self, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
        """Run one statement as root; its rows (empty for statements without a result)."""
        with self._admin_cursor() as cur:
            cur.execute(sql, args)
            return [tuple(row) for row in cur.fetchall() or ()]

    def processlist(self, user: str | None = None) -> list[dict[str, Any]]:
        """information_schema.PROCESSLIST rows (all users, or ``user``'s) as dicts."""
        import pymysql.cursors

        conn = self.admin()
        try:
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
        """Global status Threads_connected (this query's own session included)."""
        rows = self.execute_admin("SHOW GLOBAL STATUS LIKE 'Threads_connected'")
        return int(rows[0][1])

    def kill_sessions(
        self, user: str | None = None, ids: Iterable[int] | None = None, *, wait: float = 5.0
    ) -> int:
        """KILL the sessions ``ids``, or else all of ``user``'s (default: the application
        user). Returns how many were killed, and waits up to ``wait`` seconds for them to
        leave the process list (KILL only marks a session; it ends a moment later)."""
        with self._admin_cursor() as cur:
            if ids is None:
                cur.execute(
                    "SELECT ID FROM information_schema.PROCESSLIST"
                    " WHERE USER = %s AND ID <> CONNECTION_ID()",
                    (user or self.user,),
                )
                ids = [int(row[0]) for row in cur.fetchall()]
            killed = self._kill(cur, ids)
            self._wait_gone(cur, killed, wait)
        logger.info("%s: killed %d session(s)", self.name, len(killed))
        return len(killed)

    @staticmethod
    def _kill(cur: Any, ids: Iterable[int]) -> list[int]:
        import pymysql

        killed = []
        for session in ids:
            try:
                cur.execute(f"KILL {int(session)}")
            except pymysql.Error:
                continue  # already gone
            killed.append(int(session))
        return killed

    @staticmethod
    def _wait_gone(cur: Any, ids: list[int], wait: float) -> None:
        if not ids or wait <= 0:
            return
        deadline = time.monotonic() + wait
        marks = ", ".join(["%s"] * len(ids))
        while time.monotonic() < deadline:
            cur.execute(
                f"SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID IN ({marks})", ids
            )
            if int(cur.fetchone()[0]) == 0:
                return
            time.sleep(0.02)

    def set_global(self, name: str, value: Any) -> None:
        """SET GLOBAL, remembered so :meth:`reset` can restore the start value."""
        if not _NAME.fullmatch(name):
            raise ValueError(f"not a variable name: {name!r}")
        with self._lock, self._admin_cursor() as cur:
            if name not in self._initial_globals:
                cur.execute(f"SELECT @@GLOBAL.{name}")
                self._initial_globals[name] = cur.fetchone()[0]
            cur.execute(f"SET GLOBAL {name} = %s", (value,))

    def create_user(
        self,
        name: str,
        password: str,
        max_user_connections: int | None = None,
        grants: str | None = None,
    ) -> None:
        """A further user ``name@'%'`` (dropped again by :meth:`reset`). ``grants`` like
        ``"SELECT ON app.*"``; ``None`` gives all privileges on the application database,
        ``""`` none."""
        if not _USER.fullmatch(name) or name in ("root", "mariadb.sys"):
            raise ValueError(f"unsupported user name {name!r}")
        with self._admin_cursor() as cur:
            self._create_user(cur, name, password, max_user_connections, grants)
        with self._lock:
            self._extra_users.add(name)

    def _create_user(
        self,
        cur: Any,
        name: str,
        password: str,
        max_user_connections: int | None,
        grants: str | None,
    ) -> None:
        limit = (
            f" WITH MAX_USER_CONNECTIONS {int(max_user_connections)}"
            if max_user_connections is not None
            else ""
        )
        cur.execute("DROP USER IF EXISTS %s@'%%'", (name,))
        cur.execute(f"CREATE USER %s@'%%' IDENTIFIED BY %s{limit}", (name, password))
        if grants is None:
            grants = f"ALL PRIVILEGES ON `{self.database}`.*"
        if grants:
            cur.execute(f"GRANT {grants} TO %s@'%%'", (name,))

    def reset(self) -> None:
        """Cheap per-test cleanup of a shared server: restore every global changed through
        :meth:`set_global`, kill every session but root's, drop the users made by
        :meth:`create_user`, re-create the application user as provisioned, and drop and
        re-create the application database."""
        import pymysql

        with self._lock, self._admin_cursor() as cur:
            # Bounded: a DROP DATABASE must not wait a day on a lock some session still holds.
            cur.execute("SET SESSION lock_wait_timeout = 20")
            for name, value in self._initial_globals.items():
                try:
                    cur.execute(f"SET GLOBAL {name} = %s", (value,))
                except pymysql.Error as exc:
                    logger.warning("%s: could not restore %s: %s", self.name, name, exc)
            self._initial_globals.clear()
            cur.execute(
                "SELECT ID FROM information_schema.PROCESSLIST"
                " WHERE USER NOT IN ('root', 'system user', 'event_scheduler')"
                " AND ID <> CONNECTION_ID() AND COMMAND <> 'Daemon'"
            )
            ids = [int(row[0]) for row in cur.fetchall()]
            self._wait_gone(cur, self._kill(cur, ids), 5.0)
            for name in self._extra_users:
                cur.execute("DROP USER IF EXISTS %s@'%%'", (name,))
            self._extra_users.clear()
            self._create_user(cur, self.user, self.password, self.max_user_connections, None)
            cur.execute(f"DROP DATABASE IF EXISTS `{self.database}`")
            cur.execute(f"CREATE DATABASE `{self.database}`")


def _forget_in_child() -> None:
    # A forked child does not own its parent's servers: its exit must not stop them.
    global _registry_lock
    _registry_lock = threading.Lock()
    _running.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


@atexit.register
def _stop_all() -> None:
    # Safety net: a server is never left running after the process that started it. A
    # thread still inside start() or restart() must not block exit: after a bounded wait for
    # its lock, the process is killed outright and the watcher left to clean up.
    with _registry_lock:
        # The pid check also covers a fork made from C, which skips the at-fork hooks.
        servers = [s for s in _running if s._owner_pid == os.getpid()]
    for server in servers:
        if server._lock.acquire(timeout=15):
            try:
                server.stop(timeout=10)
            except Exception:
                logger.warning("%s: stop at exit failed", server.name, exc_info=True)
            finally:
                server._lock.release()
        else:
            proc = server._proc
            if proc is not None:
                with contextlib.suppress(OSError):
                    proc.kill()
