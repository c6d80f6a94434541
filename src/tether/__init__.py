"""tether: MySQL/MariaDB connections that stay healthy.

A bounded pool (:class:`Pool`) and thread-mapped connections (:class:`ThreadLocalPool`) whose
checkout and return cost no round trip on the hot path, with lifetimes derived from the server's
own timeouts, safe reconnects, clear errors, leak detection, fork safety and stats.
"""

from __future__ import annotations

import logging

from .classify import ErrorKind
from .connection import Cursor, PooledConnection
from .dsn import DSN, parse_dsn
from .errors import (
    ConnectionReleased,
    DSNError,
    Error,
    OutcomeUnknown,
    PoolClosed,
    PoolTimeout,
    TransactionLost,
)
from .pool import Pool, ThreadLocalPool
from .stats import PoolStats

__version__ = "0.1.0"

__all__ = [
    "DSN",
    "ConnectionReleased",
    "Cursor",
    "DSNError",
    "Error",
    "ErrorKind",
    "OutcomeUnknown",
    "Pool",
    "PoolClosed",
    "PoolStats",
    "PoolTimeout",
    "PooledConnection",
    "ThreadLocalPool",
    "TransactionLost",
    "parse_dsn",
]

logging.getLogger("tether").addHandler(logging.NullHandler())
