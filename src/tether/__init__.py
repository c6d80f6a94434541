"""tether: MySQL/MariaDB connections that stay healthy.

A bounded pool (:class:`Pool`), thread-mapped connections (:class:`ThreadLocalPool`) and an
asyncio pool (:class:`AsyncPool`) whose
check-out and give-back cost no round trip on the hot path, with lifetimes derived from the
server's own timeouts, safe reconnects, clear errors, leak detection, fork safety and stats.
"""

from __future__ import annotations

import logging

from .aio import AsyncConnection, AsyncCursor, AsyncPool
from .classify import ErrorKind
from .config import PoolConfig, PoolOptions
from .connection import PooledConnection
from .cursor import Cursor, DBAPICursor
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
from .pool import Pool
from .stats import Counters, PoolStats
from .threadlocal import ThreadLocalPool

__version__ = "0.2.0"

__all__ = [
    "DSN",
    "AsyncConnection",
    "AsyncCursor",
    "AsyncPool",
    "ConnectionReleased",
    "Counters",
    "Cursor",
    "DBAPICursor",
    "DSNError",
    "Error",
    "ErrorKind",
    "OutcomeUnknown",
    "Pool",
    "PoolClosed",
    "PoolConfig",
    "PoolOptions",
    "PoolStats",
    "PoolTimeout",
    "PooledConnection",
    "ThreadLocalPool",
    "TransactionLost",
    "parse_dsn",
]

logging.getLogger("tether").addHandler(logging.NullHandler())
