"""Transactions on an asyncio pool: ``pool.transaction()`` and ``pool.run_transaction(fn)``, as
:mod:`tether.transactions` does them for the threaded pool, written against the pool's public
check-out only."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from ..classify import ErrorKind, classify
from ..errors import TransactionLost
from ..transactions import lost_at_begin
from .connection import AsyncConnection

if TYPE_CHECKING:
    from .pool import AsyncPool

__all__ = ["run_transaction", "transaction"]

logger = logging.getLogger("tether")

T = TypeVar("T")


@contextlib.asynccontextmanager
async def transaction(
    pool: AsyncPool, timeout: float | None = None
) -> AsyncIterator[AsyncConnection]:
    """A connection inside a transaction: committed when the block ends, rolled back when
    it raises. Cancelled, it is not rolled back here (a round trip a second cancellation
    could cut short): the give-back rolls back, or closes the connection."""
    async with pool.connection(timeout) as conn:
        try:
            await conn.begin()
        except pool.driver.Error as exc:
            lost = lost_at_begin(pool, exc)
            if lost is None:
                raise
            raise lost from exc
        try:
            yield conn
        except Exception:
            with contextlib.suppress(pool.driver.Error):
                await conn.rollback()
            raise
        await conn.commit()


async def run_transaction(
    pool: AsyncPool,
    fn: Callable[[AsyncConnection], Awaitable[T]],
    *,
    attempts: int = 3,
    timeout: float | None = None,
) -> T:
    """Run ``await fn(conn)`` in a transaction, retrying all of it where that is safe: a
    disconnect before ``COMMIT`` was sent, a deadlock, a lock wait timeout (jittered
    backoff, at most ``attempts`` times). A connection lost while ``COMMIT`` was in flight
    raises :class:`tether.OutcomeUnknown`; a cancellation is never retried."""
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
        raise ValueError(f"attempts must be an integer >= 1, not {attempts!r}")
    backoff = 0.05
    for attempt in range(1, attempts + 1):
        try:
            async with transaction(pool, timeout) as conn:
                return await fn(conn)
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
        await asyncio.sleep((0.5 + 0.5 * random.random()) * backoff)
        backoff = min(1.0, backoff * 2)
    raise AssertionError("unreachable")
