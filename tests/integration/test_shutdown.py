"""A process that ends while tether holds, leaks or waits for connections exits promptly
(DESIGN section 7): real scripts in a subprocess against the private server, both drivers,
both pool flavours, timed from the moment they reach their end. Nothing is started or
waited on for long at exit, no finalizer fails, and the server rolls back what a dying
script left open."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import tether
from tether.testing import FaultProxy, MariaDBServer

SCRIPT = Path(__file__).resolve().parent / "scripts" / "exit_while_connected.py"

# From "ready" to the process gone: the interpreter's own teardown plus tether's bounded
# close at exit (it never waits on the network for long).
PROMPT = 3.0
# A hard bound on any one run: past it the script is killed and the test fails.
HARD = 30.0


class Script:
    """A scenario of scripts/exit_while_connected.py running in a subprocess."""

    def __init__(self, scenario: str, dsn: str, driver: str, flavour: str) -> None:
        env = {
            **os.environ,
            "DATABASE_URL": dsn,
            "TETHER_DRIVER": driver,
            "TETHER_FLAVOUR": flavour,
            "PYTHONUNBUFFERED": "1",
            "PYTHONFAULTHANDLER": "1",
        }
        self.proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), scenario],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        self.ready_at = 0.0

    def wait_ready(self) -> None:
        """Until the script prints ``ready`` (it reached the point the test is about)."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + HARD
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            readable, _, _ = select.select([self.proc.stdout], [], [], max(0.0, left))
            if not readable:
                self.kill()
                pytest.fail(f"the script did not get ready within {HARD:g}s")
            chunk = os.read(self.proc.stdout.fileno(), 1)
            if not chunk:
                _, err = self.proc.communicate(timeout=HARD)
                pytest.fail(f"the script ended before it was ready:\n{err.decode()}")
            line += chunk
        assert line.strip() == b"ready", line
        self.ready_at = time.monotonic()

    def finish(self) -> tuple[int, str, float]:
        """Wait for the script to end (bounded): its exit status, stderr, and how long it
        took from ``ready``."""
        try:
            _, err = self.proc.communicate(timeout=HARD)
        except subprocess.TimeoutExpired:
            self.kill()
            _, err = self.proc.communicate(timeout=10)
            pytest.fail(
                f"the script did not exit within {HARD:g}s of its end:\n{err.decode()[-3000:]}"
            )
        return self.proc.returncode, err.decode(), time.monotonic() - self.ready_at

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()


@pytest.fixture
def script(driver: str, flavour: type[tether.Pool]) -> Iterator[Callable[..., Script]]:
    started: list[Script] = []

    def start(scenario: str, dsn: str) -> Script:
        run = Script(scenario, dsn, driver, flavour.__name__)
        started.append(run)
        return run

    yield start
    for run in started:
        run.kill()
        run.proc.wait(10)


def clean_teardown(err: str) -> None:
    """Nothing failed in a finalizer or at exit, and no thread was started at shutdown."""
    for sign in (
        "Exception ignored",
        "can't create new thread",
        "Fatal Python error",
        "Error in atexit",
    ):
        assert sign not in err, err[-3000:]


# (scenario, expected exit status, what stderr must say)
ENDINGS = [
    ("raise-holding", 1, "RuntimeError: the script failed while holding a connection"),
    ("raise-in-with", 1, "RuntimeError: the script failed inside the with block"),
    ("leak", 0, ""),
    ("leak-and-drop", 0, ""),
    ("daemon-waits", 0, ""),
    ("daemon-waits-main-raises", 1, "RuntimeError: the script failed while a thread waited"),
    ("daemon-queries", 3, ""),
    ("min-size", 0, ""),
]


@pytest.mark.parametrize(("scenario", "status", "says"), ENDINGS, ids=[e[0] for e in ENDINGS])
def test_a_script_that_ends_exits_promptly(
    db: MariaDBServer, script: Callable[..., Script], scenario: str, status: int, says: str
) -> None:
    run = script(scenario, db.dsn())
    run.wait_ready()
    code, err, took = run.finish()
    assert code == status, err[-3000:]
    assert says in err
    clean_teardown(err)
    assert took < PROMPT, f"exit took {took:.1f}s"


def test_a_transaction_a_dying_script_left_open_is_rolled_back(
    db: MariaDBServer, script: Callable[..., Script]
) -> None:
    db.execute_admin(f"CREATE TABLE {db.database}.exits (id INT PRIMARY KEY)")
    run = script("raise-in-transaction", db.dsn())
    run.wait_ready()
    code, err, took = run.finish()
    assert code == 1 and "inside a transaction" in err
    clean_teardown(err)
    assert took < PROMPT, f"exit took {took:.1f}s"
    deadline = time.monotonic() + 10
    while db.connections_of(db.user) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert db.execute_admin(f"SELECT COUNT(*) FROM {db.database}.exits")[0][0] == 0


@pytest.mark.parametrize("scenario", ["main-waits", "main-queries"])
def test_ctrl_c_ends_a_script_promptly(
    db: MariaDBServer, script: Callable[..., Script], driver: str, scenario: str
) -> None:
    if scenario == "main-queries" and driver == "mysqlclient":
        pytest.skip("mysqlclient handles Ctrl-C only when the server answers (a driver limit)")
    run = script(scenario, db.dsn())
    run.wait_ready()
    time.sleep(0.3)  # waiting (or querying) by now
    run.proc.send_signal(signal.SIGINT)
    code, err, took = run.finish()
    assert code in (1, -signal.SIGINT, 128 + signal.SIGINT), err[-3000:]
    assert "KeyboardInterrupt" in err
    clean_teardown(err)
    assert took < PROMPT + 0.3, f"exit took {took:.1f}s"


@pytest.mark.parametrize("scenario", ["idle-on-a-silent-server", "holding-on-a-silent-server"])
def test_exit_does_not_wait_on_a_silent_server(
    db: MariaDBServer,
    script: Callable[..., Script],
    fault_proxy: Callable[[MariaDBServer], FaultProxy],
    scenario: str,
) -> None:
    """Closing at exit sends QUIT on idle connections: a server whose packets vanish must
    not hold the process up past a short bound."""
    proxy = fault_proxy(db)
    run = script(scenario, proxy.dsn_for())
    run.wait_ready()
    proxy.blackhole()
    time.sleep(0.2)
    assert run.proc.stdin is not None
    run.ready_at = time.monotonic()
    run.proc.stdin.close()  # the script's end
    run.proc.stdin = None
    code, err, took = run.finish()
    assert code == (0 if scenario.startswith("idle") else 1), err[-3000:]
    clean_teardown(err)
    assert took < PROMPT, f"exit took {took:.1f}s"
