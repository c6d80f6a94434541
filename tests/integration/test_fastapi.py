"""The FastAPI city lookup (examples/fastapi_city) under uvicorn, on a private MariaDB through the
fault proxy, with both asyncio drivers: idle past ``wait_timeout``, every session killed, every
connection cut, a server restart, a cap below the load. No request fails where a retry was
safe: reads never, writes only with "outcome unknown" (a lost reply), never silently."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from examples.fastapi_city.schema import seed_all  # noqa: E402

from tether.testing import FaultProxy, MariaDBServer  # noqa: E402

from .flaskapps.serve import free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
ASYNC_DRIVERS = ("asyncmy", "aiomysql")


@contextlib.contextmanager
def uvicorn(dsn: str, driver: str, log_path: Path) -> Iterator[str]:
    """``uvicorn examples.fastapi_city.app:app`` on a free loopback port, its output (the
    tracebacks of failed requests among it) to ``log_path``; stopped at the end."""
    port = free_port()
    env = {**os.environ, "DATABASE_URL": dsn, "TETHER_DRIVER": driver}
    log = open(log_path, "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "examples.fastapi_city.app:app", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=log,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/?city=london", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("uvicorn did not come up")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


_TRACEBACK = re.compile(r"^Traceback \(most recent call last\):\n(?:[ \t].*\n|\n)*(.+)$", re.M)
_CHAINED = (
    "The above exception was the direct cause of the following exception:",
    "During handling of the above exception, another exception occurred:",
)


def server_errors(log_path: Path, limit: int = 2) -> str:
    """The exceptions behind the server's 500s: each distinct one (the last of its chain)
    with a count, then the full (chained) traceback of the first ``limit`` distinct ones."""
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    chains: list[tuple[int, int, str]] = []  # start, end, the exception that ended it
    for match in _TRACEBACK.finditer(text):
        if chains and text[chains[-1][1] : match.start()].strip() in _CHAINED:
            chains[-1] = (chains[-1][0], match.end(), match.group(1))
        else:
            chains.append((match.start(), match.end(), match.group(1)))
    if not chains:
        return "no traceback in the server log; its tail:\n" + text[-2000:]
    counts: dict[str, int] = {}
    first: dict[str, str] = {}
    for start, end, last in chains:
        counts[last] = counts.get(last, 0) + 1
        first.setdefault(last, text[start:end])
    summary = [f"{n} x {last}" for last, n in counts.items()]
    return "\n".join(["server exceptions:", *summary, "", *list(first.values())[:limit]])


def load(url: str, seconds: float, clients: int) -> dict[str, Any]:
    """Readers and writers for a bounded time; what went wrong, by kind."""
    result: dict[str, Any] = {"reads": 0, "writes": 0, "read_errors": [], "write_errors": []}
    stop = time.monotonic() + seconds
    lock = threading.Lock()

    def client(n: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            for i in range(100_000):
                if time.monotonic() >= stop:
                    return
                write = i % 4 == 3
                try:
                    if write:
                        response = http.post("/visit", params={"city": "paris"})
                    else:
                        response = http.get("/", params={"city": "london"})
                    ok = response.status_code == 200
                    what = response.text
                except httpx.HTTPError as exc:
                    ok, what = False, repr(exc)
                with lock:
                    result["writes" if write else "reads"] += 1
                    if not ok:
                        result["write_errors" if write else "read_errors"].append(what)
                time.sleep(0.01)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
    return result


@pytest.mark.slow
@pytest.mark.parametrize("adriver", ASYNC_DRIVERS)
def test_fastapi_app_under_faults_fails_no_request_a_retry_could_save(
    mariadb_factory: Callable[..., MariaDBServer],
    fault_proxy: Callable[[MariaDBServer], FaultProxy],
    adriver: str,
    tmp_path: Path,
) -> None:
    pytest.importorskip(adriver)
    server = mariadb_factory(options={"wait_timeout": 3})
    seed_all(server.dsn())
    proxy = fault_proxy(server)

    def faults() -> None:
        time.sleep(1.0)
        server.kill_sessions()  # every session killed
        time.sleep(1.0)
        proxy.cut_all()  # every connection reset
        time.sleep(1.0)
        server.restart(down=1.5)  # the server away for a moment

    log_path = tmp_path / "uvicorn.log"
    with uvicorn(server.dsn(host=proxy.host, port=proxy.port), adriver, log_path) as url:
        injector = threading.Thread(target=faults)
        injector.start()
        busy = load(url, 7.0, 6)
        injector.join(60)
        time.sleep(4.0)  # idle past wait_timeout
        calm = load(url, 1.0, 2)
        stats = httpx.get(f"{url}/stats", timeout=10).json()
    for result in (busy, calm):
        failed = result["read_errors"][:3], result["write_errors"][:3]
        errors = f"{failed}\n{server_errors(log_path)}"
        assert result["read_errors"] == [], errors
        assert all("outcome unknown" in e for e in result["write_errors"]), errors
    assert busy["reads"] > 50 and calm["reads"] > 10 and busy["writes"] > 10
    assert stats["counters"]["connect_errors"] >= 1  # it did see the restart
