"""pytest fixtures: ``mariadb`` (one private server per test session), ``db`` (the same,
cleaned for each test), ``mariadb_factory`` (dedicated servers a test may hurt),
``fault_proxy`` (a FaultProxy factory) and ``driver`` (both drivers)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

from .proxy import FaultProxy
from .server import MariaDBServer

DRIVERS = ["pymysql", "mysqlclient"]


@pytest.fixture(scope="session")
def mariadb() -> Iterator[MariaDBServer]:
    server = MariaDBServer(name="shared-test-server")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def db(mariadb: MariaDBServer) -> Iterator[MariaDBServer]:
    if not mariadb.is_running():  # a test stopped it: bring it back for the next ones
        mariadb.start()
    mariadb.reset()
    yield mariadb
    if mariadb.is_running():
        mariadb.reset()


@pytest.fixture
def mariadb_factory() -> Iterator[Callable[..., MariaDBServer]]:
    servers: list[MariaDBServer] = []

    def make(
        options: Mapping[str, str | int | float] | None = None,
        *,
        max_user_connections: int | None = None,
        **kwargs: Any,
    ) -> MariaDBServer:
        server = MariaDBServer(options=options, max_user_connections=max_user_connections, **kwargs)
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        with contextlib.suppress(Exception):
            server.stop()


@pytest.fixture
def fault_proxy() -> Iterator[Callable[[MariaDBServer], FaultProxy]]:
    proxies: list[FaultProxy] = []

    def make(server: MariaDBServer) -> FaultProxy:
        proxy = FaultProxy(server.host, server.port).start()
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()


@pytest.fixture(params=DRIVERS)
def driver(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    pytest.importorskip("pymysql" if name == "pymysql" else "MySQLdb")
    return name
