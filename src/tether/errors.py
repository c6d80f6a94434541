"""tether's exceptions.

Every error tether raises about a connection is an instance of *both* its tether class and the
driver's matching DB-API class, so ``except pymysql.OperationalError`` and ``except
MySQLdb.InterfaceError`` clauses written before tether keep working:

============================  =====================================================
:class:`PoolTimeout`          the driver's ``OperationalError``; ``args[0]`` is the last
                              connect error's errno (0 when none failed)
:class:`TransactionLost`,     the driver's ``OperationalError`` with the original errno
:class:`OutcomeUnknown`
:class:`PoolClosed`,          the driver's ``InterfaceError`` (errno 0), like a closed
:class:`ConnectionReleased`   driver connection's
============================  =====================================================

:class:`DSNError` is a ``ValueError``: it is raised before any driver is involved.
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = [
    "ConnectionReleased",
    "DSNError",
    "Error",
    "OutcomeUnknown",
    "PoolClosed",
    "PoolTimeout",
    "TransactionLost",
]


class Error(Exception):
    """Base class of every error tether raises itself."""

    def __str__(self) -> str:
        # Raised with the drivers' (errno, message) args; shown as a message, not a tuple.
        if len(self.args) == 2 and isinstance(self.args[0], int):
            code, message = self.args
            return f"({code}) {message}" if code else str(message)
        return super().__str__()


class PoolTimeout(Error):
    """No connection could be handed out before the deadline. The message says why: size,
    in use, idle, waiting, the last connect error and who holds the connections."""

    errno: int


class PoolClosed(Error):
    """The pool was closed: it hands out no connection any more."""

    errno: int


class ConnectionReleased(Error):
    """A connection was used after it went back to the pool (or after the pool closed it)."""

    errno: int


class DSNError(Error, ValueError):
    """The DSN cannot be understood. The message names the part that is wrong."""


class TransactionLost(Error):
    """The connection broke while a transaction was open.

    The server rolled the transaction back; nothing of it was committed and the connection was
    discarded. Raised as a subclass of the driver's ``OperationalError`` too.
    """

    errno: int


class OutcomeUnknown(Error):
    """The connection broke after a write (or a ``COMMIT``) was sent, before its reply came.

    The write may or may not have happened; tether never replays it. Raised as a subclass of the
    driver's ``OperationalError`` too.
    """

    errno: int


_driver_classes: dict[tuple[type[Error], type[BaseException]], type[BaseException]] = {}
_driver_classes_lock = threading.Lock()


def driver_error(
    kind: type[Error], base: type[BaseException], errno: int, message: str
) -> BaseException:
    """Build an instance of ``kind`` that is also an instance of the driver's class ``base``
    (its ``OperationalError`` or ``InterfaceError``).

    ``args`` are ``(errno, message)`` like the drivers' own errors, so code reading
    ``e.args[0]`` finds the original error number.
    """
    key = (kind, base)
    cls = _driver_classes.get(key)
    if cls is None:
        with _driver_classes_lock:
            cls = _driver_classes.get(key)
            if cls is None:
                cls = type(kind.__name__, (kind, base), {"__module__": "tether"})
                _driver_classes[key] = cls
    err: Any = cls(errno, message)
    err.errno = errno
    return err  # type: ignore[no-any-return]
