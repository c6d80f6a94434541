"""pytest fixtures for tests against a real, private MariaDB.

- ``mariadb``: one private server for the whole test session.
- ``db``: that server, cleaned (:meth:`MariaDBServer.reset`) before and after each test, and
  started again if a test stopped it.
- ``mariadb_factory``: ``make(options=..., max_user_connections=...)`` gives a dedicated
  server a test may hurt (restart, SIGKILL, tiny limits); all are stopped at teardown.
- ``fault_proxy``: ``make(server)`` gives a started :class:`FaultProxy` in front of it,
  closed at teardown.
- ``redis_factory``: ``make(password=None)`` gives a started private ``redis-server`` (for a
  fleet-wide budget, :mod:`tether.budget`) on a free port; all are stopped at teardown.
  ``redis_server``: one of them.
- ``driver``: each test runs once per driver, ``"pymysql"`` and ``"mysqlclient"`` (skipped
  when the driver is not installed).

Load with ``pytest_plugins = ["tether.testing.pytest_plugin"]`` in a conftest, or
``pytest -p tether.testing.pytest_plugin``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

from . import DRIVERS
from .proxy import FaultProxy
from .redis import RedisServer
from .server import MariaDBServer

__all__ = [
    "db",
    "driver",
    "fault_proxy",
    "mariadb",
    "mariadb_factory",
    "redis_factory",
    "redis_server",
]

_DRIVER_MODULES = {"pymysql": "pymysql", "mysqlclient": "MySQLdb"}


def pytest_configure(config: pytest.Config) -> None:
    # The markers tests using these fixtures carry; registered so --strict-markers passes in
    # projects that load only the plugin.
    config.addinivalue_line("markers", "slow: takes more than a few seconds")
    config.addinivalue_line("markers", "faults: injects faults into a private MariaDB")


@pytest.fixture(scope="session")
def mariadb() -> Iterator[MariaDBServer]:
    """One private server for the test session (default options)."""
    with MariaDBServer(name="tether-test-shared") as server:
        yield server


@pytest.fixture
def db(mariadb: MariaDBServer) -> Iterator[MariaDBServer]:
    """The shared server, clean: no sessions but root's, an empty application database,
    globals as at start, no extra users."""
    if not mariadb.is_running():  # an earlier test stopped or killed it: bring it back
        mariadb.start()
    mariadb.reset()
    yield mariadb
    if not mariadb.is_running():
        mariadb.start()
    mariadb.reset()  # also here, so a test's sessions and globals never outlive it


@pytest.fixture
def mariadb_factory() -> Iterator[Callable[..., MariaDBServer]]:
    """``make(options=None, *, max_user_connections=None, **kwargs)``: a started dedicated
    server; every one is stopped (and its files removed) at teardown."""
    servers: list[MariaDBServer] = []

    def make(
        options: Mapping[str, str | int | float] | None = None,
        *,
        max_user_connections: int | None = None,
        **kwargs: Any,
    ) -> MariaDBServer:
        kwargs.setdefault("name", f"tether-test-{len(servers) + 1}")
        server = MariaDBServer(options=options, max_user_connections=max_user_connections, **kwargs)
        servers.append(server)
        server.start()
        return server

    yield make
    errors: list[BaseException] = []
    for server in servers:
        try:
            server.stop()
        except Exception as exc:  # stop the others all the same, then report
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture
def fault_proxy() -> Iterator[Callable[..., FaultProxy]]:
    """``make(server_or_address)``: a started :class:`FaultProxy` in front of a
    :class:`MariaDBServer` (or a ``(host, port)``); all are closed at teardown."""
    proxies: list[FaultProxy] = []

    def make(target: MariaDBServer | tuple[str, int], **kwargs: Any) -> FaultProxy:
        if isinstance(target, MariaDBServer):
            proxy = FaultProxy.in_front_of(target, **kwargs)
        else:
            proxy = FaultProxy(target[0], target[1], **kwargs)
        proxies.append(proxy)
        return proxy.start()

    yield make
    for proxy in proxies:
        proxy.close()


@pytest.fixture
def redis_factory() -> Iterator[Callable[..., RedisServer]]:
    """``make(password=None)``: a started private ``redis-server`` (no persistence: a
    restart loses every key); all are stopped at teardown. Never the machine's Redis."""
    servers: list[RedisServer] = []

    def make(password: str | None = None) -> RedisServer:
        server = RedisServer(password=password)
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def redis_server(redis_factory: Callable[..., RedisServer]) -> RedisServer:
    """A private ``redis-server`` for one test."""
    return redis_factory()


@pytest.fixture(params=DRIVERS, ids=DRIVERS)
def driver(request: pytest.FixtureRequest) -> str:
    """Each driver name in turn."""
    name: str = request.param
    pytest.importorskip(_DRIVER_MODULES[name])
    return name
