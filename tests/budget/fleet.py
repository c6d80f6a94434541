"""Running a fleet of worker processes (tests.budget.worker) against one budget, and
watching the server and the store while it runs."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tether.budget import RedisStore
from tether.testing import MariaDBServer

ROOT = Path(__file__).resolve().parents[2]


class Fleet:
    def __init__(self, specs: list[dict[str, Any]]) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-m", "tests.budget.worker", json.dumps(spec)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=ROOT,
                env=env,
            )
            for spec in specs
        ]

    def kill9(self, index: int) -> int:
        proc = self.procs[index]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        return proc.pid

    def results(self, timeout: float) -> list[dict[str, Any] | None]:
        out: list[dict[str, Any] | None] = []
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            try:
                stdout, stderr = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                stdout, stderr = proc.communicate()
            if proc.returncode == -signal.SIGKILL:
                out.append(None)
                continue
            assert proc.returncode == 0, f"worker {proc.pid} failed:\n{stderr[-3000:]}"
            result = json.loads(stdout.strip().splitlines()[-1])
            result["log"] = stderr[-3000:]  # warnings: a connect the server refused, for one
            out.append(result)
        return out

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


class Sampler:
    """Samples the account's server connections (and the store's status) every ``every``
    seconds, on a thread, until stopped."""

    def __init__(
        self, server: MariaDBServer, user: str, store: RedisStore | None, every: float = 0.05
    ) -> None:
        self.server, self.user, self.store, self.every = server, user, store, every
        self.connections: list[tuple[float, int]] = []
        self.statuses: list[tuple[float, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        admin = self.server.admin()  # one connection for every sample: a sample is cheap
        try:
            while not self._stop.wait(self.every):
                now = time.time()
                with admin.cursor() as cur:
                    cur.execute(
                        "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = %s",
                        (self.user,),
                    )
                    self.connections.append((now, int(cur.fetchone()[0])))
                if self.store is not None:
                    with contextlib.suppress(Exception):  # down on purpose in some tests
                        self.statuses.append((now, self.store.status()))
        finally:
            admin.close()

    @property
    def peak(self) -> int:
        return max((n for _, n in self.connections), default=0)
