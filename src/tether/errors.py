"""tether's exceptions.

Pool-level problems (timeout, closed pool, misuse) derive from :class:`Error`. Errors about what
happened to a statement or a transaction on a broken connection (:class:`TransactionLost`,
:class:`OutcomeUnknown`) are raised as subclasses of *both* the tether class and the driver's own
``OperationalError`` with the original errno, so ``except pymysql.OperationalError`` and
``except MySQLdb.OperationalError`` clauses written before tether keep working.
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


class PoolTimeout(Error):
    """No connection could be handed out before the deadline. The message says why."""


class PoolClosed(Error):
    """The pool was closed: it hands out no connection any more."""


class ConnectionReleased(Error):
    """A connection was used, or returned, after it went back to the pool."""


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
    kind: type[Error], operational: type[BaseException], errno: int, message: str
) -> BaseException:
    """Build an instance of ``kind`` that is also the driver's ``OperationalError``.

    ``args`` are ``(errno, message)`` like the drivers' own errors, so code reading
    ``e.args[0]`` finds the original error number.
    """
    key = (kind, operational)
    cls = _driver_classes.get(key)
    if cls is None:
        with _driver_classes_lock:
            cls = _driver_classes.get(key)
            if cls is None:
                cls = type(kind.__name__, (kind, operational), {"__module__": "tether"})
                _driver_classes[key] = cls
    err: Any = cls(errno, message)
    err.errno = errno
    return err  # type: ignore[no-any-return]
