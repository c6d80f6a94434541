"""Test helpers: a throwaway private MariaDB, a fault-injecting TCP proxy, and a plain
connect for either driver. Used by tether's own tests, benchmarks and demo; usable in yours
(``pytest -p tether.testing.pytest_plugin`` gives the fixtures)."""

from __future__ import annotations

from typing import Any

from .proxy import FaultProxy
from .server import MariaDBServer, ServerError, find_binary

__all__ = ["FaultProxy", "MariaDBServer", "ServerError", "connect_raw", "find_binary"]


def connect_raw(
    driver: str,
    host: str,
    port: int,
    user: str,
    password: str,
    database: str | None = None,
    **kwargs: Any,
) -> Any:
    """A plain DB-API connection with the named driver ("pymysql" or "mysqlclient")."""
    if driver == "pymysql":
        import pymysql

        return pymysql.connect(
            host=host, port=port, user=user, password=password, database=database, **kwargs
        )
    if driver == "mysqlclient":
        import MySQLdb

        if database:
            kwargs["database"] = database
        return MySQLdb.connect(host=host, port=port, user=user, password=password, **kwargs)
    raise ValueError(f"unknown driver {driver!r}")
