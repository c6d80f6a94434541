"""A throwaway private Redis for tests of a fleet-wide budget (:mod:`tether.budget`).

:class:`RedisServer` runs ``redis-server`` on a free loopback port, with a temporary
directory and no persistence (so a restart loses every key, as a cache-only Redis would),
optionally with a password. It never touches the machine's own Redis. Stopped at exit if the
test forgot to.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from .server import ServerError, find_binary

__all__ = ["RedisServer"]

HOST = "127.0.0.1"

_running: set[RedisServer] = set()
_lock = threading.Lock()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A private ``redis-server``: :meth:`start`, :meth:`stop`, :meth:`restart` (keys
    lost), :meth:`kill9`; :attr:`url` for clients (with the password, if one is set)."""

    def __init__(self, *, password: str | None = None, port: int | None = None) -> None:
        self.password = password
        self.port = port or _free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None
        self._owner = os.getpid()

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{HOST}:{self.port}/0"

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<RedisServer {HOST}:{self.port} {state}>"

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Start (again, on the same port) and wait until it answers ``PING``."""
        if self.is_running():
            return
        binary = find_binary("redis-server")
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="tether-redis-"))
        args = [
            binary,
            "--port", str(self.port),
            "--bind", HOST,
            "--dir", str(self._dir),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--logfile", str(self._dir / "redis.log"),
        ]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        self._proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        with _lock:
            _running.add(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ServerError(f"redis-server on port {self.port} exited at start")
            if self._answers():
                return
            time.sleep(0.02)
        self.stop()
        raise ServerError(f"redis-server on port {self.port} did not answer within {timeout}s")

    def _answers(self) -> bool:
        try:
            with socket.create_connection((HOST, self.port), timeout=0.5) as s:
                if self.password:
                    s.sendall(f"AUTH {self.password}\r\n".encode())
                    s.recv(64)
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """Stop it (SIGTERM, SIGKILL after ``timeout``) and remove its files."""
        self._terminate(timeout)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        with _lock:
            _running.discard(self)

    def _terminate(self, timeout: float) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def kill9(self) -> None:
        """SIGKILL it (keys lost); :meth:`start` brings it back on the same port."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)

    def restart(self, down: float = 0.0) -> None:
        """Stop, stay down ``down`` seconds, start again on the same port, empty."""
        self._terminate(10.0)
        if down > 0:
            time.sleep(down)
        self.start()


@atexit.register
def _stop_all() -> None:
    with _lock:
        servers = [s for s in _running if s._owner == os.getpid()]
    for server in servers:
        server.stop(timeout=2.0)
