"""Transactions on a pool: ``pool.transaction()`` and ``pool.run_transaction(fn)``, which
reruns a whole transaction where that is provably safe. Written against the pool's public
check-out and the :class:`tether.lender.Lender` interface only."""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterator
from typing import Protocol, TypeVar

from .classify import ErrorKind, classify
from .connection import PooledConnection
from .errors import Error, TransactionLost, driver_error
from .lender import Judge, Lender

__all__ = ["lost_at_begin", "run_transaction", "transaction"]

logger = logging.getLogger("tether")

T = TypeVar("T")


class _Source(Lender, Protocol):
    def connection(self, timeout: float | None = None) -> PooledConnection: ...


@contextlib.contextmanager
def transaction(pool: _Source, timeout: float | None = None) -> Iterator[PooledConnection]:
    """A connection inside a transaction: committed when the block ends, rolled back when
    it raises."""
    with pool.connection(timeout) as conn:
        try:
            conn.begin()
        except pool.driver.Error as exc:
            lost = lost_at_begin(pool, exc)
            if lost is None:
                raise
            raise lost from exc
        try:
            yield conn
        except BaseException:
            with contextlib.suppress(pool.driver.Error):
                conn.rollback()
            raise
        conn.commit()


def lost_at_begin(pool: Judge, exc: BaseException) -> BaseException | None:
    """What ``BEGIN`` failing with ``exc`` means for a transaction: if the connection was
    lost (on the first try and on the replay a ``BEGIN`` gets: a fault that takes sessions
    one after another, a KILL of each or a restart), the transaction never started and
    nothing of it ran, so it is lost (:class:`tether.TransactionLost`, which
    :func:`run_transaction` reruns), not a bare error of unknown meaning; ``None``: ``exc``
    stands as it is."""
    if isinstance(exc, Error):
        return None  # tether's own (a connection taken back, the pool closed)
    driver = pool.driver
    if classify(exc, driver, pool.config.error_kinds) is not ErrorKind.DISCONNECT:
        return None
    return driver_error(
        TransactionLost,
        driver.OperationalError,
        driver.error_code(exc) or 2013,
        f"connection lost at BEGIN: the transaction never started, nothing of it ran ({exc})",
    )


def run_transaction(
    pool: _Source,
    fn: Callable[[PooledConnection], T],
    *,
    attempts: int = 3,
    timeout: float | None = None,
) -> T:
    """Run ``fn(conn)`` in a transaction, retrying all of it where that is safe.

    Retried: a disconnect before ``COMMIT`` was sent (the server rolled everything back), a
    deadlock, a lock wait timeout; with jittered backoff, at most ``attempts`` times. A
    connection lost while ``COMMIT`` was in flight raises :class:`tether.OutcomeUnknown`.
    """
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
        raise ValueError(f"attempts must be an integer >= 1, not {attempts!r}")
    backoff = 0.05
    for attempt in range(1, attempts + 1):
        try:
            with transaction(pool, timeout) as conn:
                return fn(conn)
        except TransactionLost as exc:
            reason: BaseException = exc
        except pool.driver.Error as exc:
            if classify(exc, pool.driver, pool.config.error_kinds) is not (
                ErrorKind.RETRY_TRANSACTION
            ):
                raise
            reason = exc
        if attempt == attempts:
            raise reason
        pool.count("transaction_retries")
        logger.info(
            "%s: transaction attempt %d/%d failed (%s); retrying",
            pool.name,
            attempt,
            attempts,
            reason,
        )
        time.sleep((0.5 + 0.5 * random.random()) * backoff)
        backoff = min(1.0, backoff * 2)
    raise AssertionError("unreachable")
