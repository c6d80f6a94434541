"""``Pool.run_transaction``: rerun a whole transaction where that is provably safe."""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .classify import ErrorKind, classify
from .errors import TransactionLost

if TYPE_CHECKING:
    from .connection import PooledConnection
    from .pool import Pool

logger = logging.getLogger("tether")


def run_transaction(
    pool: Pool,
    fn: Callable[[PooledConnection], Any],
    *,
    attempts: int,
    timeout: float | None,
) -> Any:
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
        raise ValueError(f"attempts must be an integer >= 1, not {attempts!r}")
    backoff = 0.05
    for attempt in range(1, attempts + 1):
        try:
            with pool.connection(timeout) as conn:
                conn.begin()
                try:
                    result = fn(conn)
                except BaseException:
                    with contextlib.suppress(Exception):
                        conn.rollback()
                    raise
                # A lost COMMIT that was sent raises OutcomeUnknown: never retried. One that
                # could not be sent raises TransactionLost: retried below.
                conn.commit()
                return result
        except TransactionLost as exc:
            reason: BaseException = exc
        except pool.driver.Error as exc:
            if classify(exc, pool.driver, pool.error_kinds) is not ErrorKind.RETRY_TRANSACTION:
                raise
            reason = exc
        if attempt == attempts:
            raise reason
        pool._count("transaction_retries")
        logger.info(
            "%s: transaction attempt %d/%d failed (%s); retrying",
            pool.name,
            attempt,
            attempts,
            reason,
        )
        time.sleep(random.uniform(0.5, 1.0) * backoff)
        backoff = min(1.0, backoff * 2)
    raise AssertionError("unreachable")
