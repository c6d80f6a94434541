"""What a MySQL/MariaDB error means for the pool: the one table every decision reads.

``classify(exc, driver)`` maps a driver exception to an :class:`ErrorKind`. The table covers
both drivers (they share the server's error numbers and the client library's 2xxx numbers);
``Pool(error_kinds={errno: ErrorKind.X})`` extends or overrides it per pool.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .drivers import DriverBase

__all__ = ["ERROR_KINDS", "ErrorKind", "classify"]


class ErrorKind(enum.Enum):
    DISCONNECT = "disconnect"  # the connection is gone; the session and its transaction too
    CAPACITY = "capacity"  # a connection cap was reached: back off, don't fail
    READ_ONLY = "read_only"  # a demoted primary after failover: evict the connection
    RETRY_TRANSACTION = "retry_transaction"  # deadlock / lock wait: the whole transaction may rerun
    AUTHENTICATION = "authentication"  # wrong credentials or database: fail fast, never retry
    OTHER = "other"  # the statement's own error: the connection is fine


ERROR_KINDS: Mapping[int, ErrorKind] = {
    # Connection lost or impossible.
    2002: ErrorKind.DISCONNECT,  # can't connect through socket
    2003: ErrorKind.DISCONNECT,  # can't connect to server (refused, unreachable)
    2006: ErrorKind.DISCONNECT,  # server has gone away
    2013: ErrorKind.DISCONNECT,  # lost connection during query
    2026: ErrorKind.DISCONNECT,  # TLS error
    2055: ErrorKind.DISCONNECT,  # lost connection at 'reading ...', system error
    4031: ErrorKind.DISCONNECT,  # disconnected by the server because of inactivity
    1927: ErrorKind.DISCONNECT,  # connection was killed
    1053: ErrorKind.DISCONNECT,  # server shutdown in progress
    1152: ErrorKind.DISCONNECT,  # aborted connection
    1159: ErrorKind.DISCONNECT,  # got timeout reading communication packets
    1161: ErrorKind.DISCONNECT,  # got timeout writing communication packets
    # Connection caps.
    1040: ErrorKind.CAPACITY,  # too many connections
    1203: ErrorKind.CAPACITY,  # user already has more than max_user_connections
    1226: ErrorKind.CAPACITY,  # user has exceeded a resource limit
    # Read-only after failover.
    1290: ErrorKind.READ_ONLY,  # running with --read-only
    1792: ErrorKind.READ_ONLY,  # cannot execute statement in a READ ONLY transaction
    1836: ErrorKind.READ_ONLY,  # running in read-only mode
    # The transaction lost a race; rerunning it whole is safe.
    1205: ErrorKind.RETRY_TRANSACTION,  # lock wait timeout
    1213: ErrorKind.RETRY_TRANSACTION,  # deadlock
    # Credentials or target wrong: waiting will not help.
    1044: ErrorKind.AUTHENTICATION,  # access denied to database
    1045: ErrorKind.AUTHENTICATION,  # access denied for user
    1049: ErrorKind.AUTHENTICATION,  # unknown database
    1130: ErrorKind.AUTHENTICATION,  # host not allowed to connect
    1251: ErrorKind.AUTHENTICATION,  # client does not support authentication protocol
    1698: ErrorKind.AUTHENTICATION,  # access denied (unix_socket / plugin)
    1862: ErrorKind.AUTHENTICATION,  # password expired
    2005: ErrorKind.AUTHENTICATION,  # unknown server host: a typo, not an outage
    2059: ErrorKind.AUTHENTICATION,  # authentication plugin cannot be loaded
}


def classify(
    exc: BaseException, driver: DriverBase, extra: Mapping[int, ErrorKind] | None = None
) -> ErrorKind:
    """The kind of ``exc``. Socket errors and the drivers' "connection closed" interface
    errors count as disconnects."""
    if isinstance(exc, (ConnectionError, TimeoutError, BrokenPipeError)):
        return ErrorKind.DISCONNECT
    code = driver.error_code(exc)
    if code is not None:
        if extra and code in extra:
            return extra[code]
        kind = ERROR_KINDS.get(code)
        if kind is not None:
            return kind
    # PyMySQL raises InterfaceError(0, "") and mysqlclient InterfaceError(0, "") or
    # OperationalError(2006) on a connection that is already closed.
    if isinstance(exc, driver.InterfaceError) and not code:
        return ErrorKind.DISCONNECT
    if isinstance(exc, OSError):
        return ErrorKind.DISCONNECT
    return ErrorKind.OTHER
