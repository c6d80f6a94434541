"""Test helpers: a throwaway private MariaDB (and Redis, for a fleet-wide budget), a
fault-injecting TCP proxy, and a plain connect for either driver. Used by tether's own tests,
benchmarks and demo; usable in yours (``pytest -p tether.testing.pytest_plugin`` gives the
fixtures).

Needs PyMySQL (the admin connection uses it) and Debian's ``mariadb-server`` binaries.
"""

from __future__ import annotations

from typing import Any, overload

from .proxy import FaultProxy
from .redis import RedisServer
from .server import MariaDBServer, ServerError, find_binary

__all__ = [
    "DISCONNECT_CODES",
    "DRIVERS",
    "FaultProxy",
    "MariaDBServer",
    "RedisServer",
    "ServerError",
    "connect_raw",
    "error_code",
    "find_binary",
]

#: The driver names :func:`connect_raw` (and the ``driver`` fixture) know.
DRIVERS = ("pymysql", "mysqlclient")

#: Client error codes meaning "the connection is gone": server has gone away, lost connection
#: during query, lost connection (mysqlclient), and MySQL 8's "disconnected by the server
#: because of inactivity".
DISCONNECT_CODES = frozenset({2006, 2013, 2055, 4031})


def error_code(exc: BaseException) -> int | None:
    """The MySQL error number a driver exception carries, if any."""
    if exc.args and isinstance(exc.args[0], int):
        return exc.args[0]
    return None


@overload
def connect_raw(
    driver: str,
    target: MariaDBServer | FaultProxy | tuple[str, int],
    user: str | None = None,
    password: str | None = None,
    database: str | None = None,
    **kwargs: Any,
) -> Any: ...


@overload
def connect_raw(
    driver: str,
    target: str,
    port: int,
    user: str,
    password: str,
    database: str | None = None,
    **kwargs: Any,
) -> Any: ...


def connect_raw(driver: str, target: Any, *args: Any, **kwargs: Any) -> Any:
    """A plain DB-API connection with the named driver (``"pymysql"`` or ``"mysqlclient"``).

    ``target`` is a :class:`MariaDBServer`, a :class:`FaultProxy` or a ``(host, port)`` pair,
    followed by optional ``user, password, database`` (default: the server's application
    user, for a proxy the server it was made for); or, the long way, ``host, port, user,
    password[, database]``. Other keyword arguments go to the driver. ``connect_timeout``
    defaults to 10 s; note that PyMySQL applies it to the TCP connect only and reads the
    server's greeting under ``read_timeout`` (mysqlclient: under ``connect_timeout``).
    """
    names: tuple[str, ...] = ("user", "password", "database")
    if isinstance(target, str):
        names = ("port", *names)
    if len(args) > len(names):
        raise TypeError(f"connect_raw takes at most {len(names) + 2} positional arguments")
    given: dict[str, Any] = dict(zip(names, args, strict=False))  # fewer args than names is fine
    for name in names:
        if name in kwargs:
            if name in given:
                raise TypeError(f"connect_raw got {name!r} twice")
            given[name] = kwargs.pop(name)

    server: MariaDBServer | None = None
    if isinstance(target, str):
        host, port = target, given.get("port")
        if port is None:
            raise TypeError("connect_raw(driver, host, port, ...) needs the port")
    elif isinstance(target, MariaDBServer):
        host, port, server = target.host, target.port, target
    elif isinstance(target, FaultProxy):
        host, port, server = target.host, target.port, target.server
    else:
        host, port = target
    user, password, database = given.get("user"), given.get("password"), given.get("database")
    if server is not None:
        if user is None or user == server.user:
            user = server.user
            password = server.password if password is None else password
        if database is None:
            database = server.database
    if user is None:
        raise TypeError("connect_raw needs a user when the target is not a server")
    kwargs.setdefault("connect_timeout", 10)

    if driver == "pymysql":
        import pymysql

        return pymysql.connect(
            host=host,
            port=int(port),
            user=user,
            password=password or "",
            database=database,
            **kwargs,
        )
    if driver == "mysqlclient":
        import MySQLdb

        if database:
            kwargs["database"] = database
        return MySQLdb.connect(
            host=host, port=int(port), user=user, password=password or "", **kwargs
        )
    raise ValueError(f"unknown driver {driver!r}; expected one of {', '.join(DRIVERS)}")
