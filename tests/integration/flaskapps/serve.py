"""Runs an app under a real gunicorn on 127.0.0.1 and talks HTTP to it, for tests.

gunicorn runs as a child process in its own session, logging to a temporary file; ``stop()``
signals its master by PID (which stops its workers). Every server still running when the test
process exits is killed.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
TEST_APP = "tests.integration.flaskapps.app:create_app()"

_running: set[Gunicorn] = set()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Gunicorn:
    """``gunicorn -k gthread --threads N -w W`` serving ``app`` on a free loopback port."""

    def __init__(
        self,
        app: str = TEST_APP,
        *,
        env: Mapping[str, str] | None = None,
        workers: int = 1,
        threads: int = 16,
        preload: bool = False,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.app = app
        self.env = dict(env or {})
        self.workers = workers
        self.threads = threads
        self.preload = preload
        self.extra_args = list(extra_args)
        self.port = 0
        fd, log_path = tempfile.mkstemp(prefix="tether-gunicorn-", suffix=".log")
        os.close(fd)
        self.log_path = Path(log_path)
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout: float = 30.0) -> Gunicorn:
        for _ in range(3):  # a free port may be taken between choosing and binding it
            self.port = free_port()
            args = [
                sys.executable,
                "-m",
                "gunicorn",
                "-k",
                "gthread",
                "--threads",
                str(self.threads),
                "-w",
                str(self.workers),
                "-b",
                f"127.0.0.1:{self.port}",
                "--chdir",
                str(ROOT),
                "--graceful-timeout",
                "5",
                "--timeout",
                "60",
                *(["--preload"] if self.preload else []),
                *self.extra_args,
                self.app,
            ]
            # Only the DSN the test gives: never one inherited from the environment.
            env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
            env.update(self.env)
            with open(self.log_path, "ab") as log:
                self._proc = subprocess.Popen(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    env=env,
                    cwd=ROOT,
                    start_new_session=True,
                )
            _running.add(self)
            if self._wait_ready(timeout):
                return self
            self.stop()
        raise RuntimeError(f"gunicorn did not start:\n{self.log_tail()}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                return False
            with contextlib.suppress(OSError, http.client.HTTPException):
                if self.get("/health", timeout=2).status == 200:
                    return True
            time.sleep(0.05)
        return False

    def stop(self, timeout: float = 15.0) -> None:
        proc, self._proc = self._proc, None
        _running.discard(self)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            # The workers are in the master's session (started with start_new_session).
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def __enter__(self) -> Gunicorn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    # -- HTTP

    def get(self, path: str, timeout: float = 30.0) -> Response:
        """One GET on a new connection (no keep-alive: nothing stale between requests)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path, headers={"Connection": "close"})
            resp = conn.getresponse()
            return Response(resp.status, resp.read())
        finally:
            conn.close()

    def get_json(self, path: str) -> Any:
        resp = self.get(path)
        if resp.status != 200:
            raise AssertionError(f"GET {path}: {resp.status} {resp.body[:300]!r}")
        return json.loads(resp.body)


@dataclass
class Response:
    status: int
    body: bytes


@dataclass
class LoadResult:
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, failure: str | None, body: bytes = b"") -> None:
        with self.lock:
            if failure is None:
                self.ok += 1
                self.bodies.append(body)
            else:
                self.failures.append(failure)

    def json(self) -> list[Any]:
        with self.lock:
            return [json.loads(body) for body in self.bodies]


def load(
    server: Gunicorn,
    path: str,
    *,
    threads: int,
    requests: int,
    seconds: float = 60.0,
    expect: int = 200,
    stop: threading.Event | None = None,
    timeout: float = 30.0,
) -> LoadResult:
    """GET ``path`` from ``threads`` client threads until ``requests`` were sent in all,
    ``seconds`` passed or ``stop`` is set. Any other status than ``expect``, and any socket
    error, is a failure."""
    result = LoadResult()
    counter = iter(range(requests))
    counter_lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def claim() -> bool:
        if time.monotonic() >= deadline or (stop is not None and stop.is_set()):
            return False
        with counter_lock:
            return next(counter, None) is not None

    def client() -> None:
        while claim():
            try:
                resp = server.get(path, timeout=timeout)
            except (OSError, http.client.HTTPException) as exc:
                result.add(f"{type(exc).__name__}: {exc}")
                continue
            if resp.status == expect:
                result.add(None, resp.body)
            else:
                result.add(f"HTTP {resp.status}: {resp.body[:200]!r}")

    workers = [threading.Thread(target=client, daemon=True) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(seconds + timeout + 5)
    return result


def sample_while(
    running: Callable[[], bool], probe: Callable[[], int], interval: float = 0.05
) -> list[int]:
    """Values of ``probe()`` every ``interval`` seconds while ``running()``."""
    values: list[int] = []
    while running():
        values.append(probe())
        time.sleep(interval)
    return values


@atexit.register
def _stop_all() -> None:
    for server in list(_running):
        with contextlib.suppress(Exception):
            server.stop(timeout=5)
