"""How the threaded pool lets go of what it holds: retiring a connection, taking back what a
lease or a stretch of its own work was granted, closing the idle ones.

Shared by the check-out and give-back paths (:mod:`tether.pool`) and the background work
(:mod:`tether.maintenance`), so that each is written once. Every method decides under the
pool's lock and talks to the server outside it; every one leaves a connection that leaves the
pool closed first and unregistered after (see :mod:`tether.state`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from .connector import Connector
from .entry import Entry, Lease, Round
from .state import PoolState

__all__ = ["Custody"]


class Custody:
    """The lock, the bookkeeping and the connector of one pool in one process."""

    def __init__(self, *, lock: threading.Lock, state: PoolState, connector: Connector) -> None:
        self.lock = lock
        self.state = state
        self.connector = connector

    def retire(self, entry: Entry, holder: Lease | None, reason: str) -> None:
        """Close ``entry`` and take it out of the pool, if ``holder`` still holds it: closed
        first, then unregistered, so that a retirement cut short is finished by its holder
        (the next call with the same holder)."""
        if holder is None or entry.holder is not holder:
            return
        with self.lock:
            # From here on it never goes back to the pool, and the watchdog leaves its
            # descriptor alone.
            entry.broken = True
            entry.fd = -1
        self.connector.close(entry)
        with self.lock:
            self.state.unregister(entry, reason, time.monotonic())

    def abandon(self, lease: Lease, reason: str) -> None:
        """``lease``'s holder gave up: take back what was granted to it (see
        :meth:`PoolState.abandon`); a connection whose state is unknown is retired."""
        with self.lock:
            entry = self.state.abandon(lease, time.monotonic())
        if entry is not None:
            self.retire(entry, lease, reason)

    def give_up(self, work: Round, reason: str) -> None:
        """A stretch of the pool's own work was cut short (or is over): take back what its
        leases still hold or reserve."""
        for lease in work.leases:
            self.abandon(lease, reason)

    def retire_idle(
        self, select: Callable[[Entry], str | None], before: Callable[[], None]
    ) -> None:
        """Retire the idle connections ``select`` names a reason for, after ``before()`` ran
        in the same hold of the lock (closing the pool, expiring every connection)."""
        work = Round()
        try:
            with self.lock:
                before()
                taken = self.state.take_idle(time.monotonic(), select, work.lease)
            for entry, reason in taken:
                self.retire(entry, entry.holder, reason)
        except BaseException:
            self.give_up(work, "closing interrupted")
            raise
