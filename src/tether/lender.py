"""The small interface between a checked-out connection and the pool it came from.

:class:`tether.PooledConnection` and ``run_transaction`` talk to this, never to a pool's
private members, so the proxy does not depend on which pool flavour lent it. :class:`Judge`
is the part that decides what a failed call means (:func:`tether.outcomes.failure_outcome`),
shared by the threaded and the asyncio connections; :class:`Lender` adds the threaded
give-back and renewal.
"""

from __future__ import annotations

from typing import Protocol

from .config import PoolConfig
from .drivers import Driver, DriverBase
from .entry import Entry, Lease

__all__ = ["Judge", "Lender"]


class Judge(Protocol):
    """What deciding the outcome of a failed call needs from a pool, whatever its flavour."""

    @property
    def name(self) -> str: ...

    @property
    def driver(self) -> DriverBase: ...

    @property
    def config(self) -> PoolConfig: ...

    def count(self, event: str) -> None:
        """Add one to the counter ``event`` (a :class:`tether.stats.Counters` field)."""

    def evict_all(self, reason: str) -> None:
        """Retire every connection (a failover: they all point at a demoted server)."""

    def statement_timeout(self, query: str | bytes, timeout: float) -> str | bytes:
        """``query`` bounded to ``timeout`` seconds on the server."""


class Lender(Judge, Protocol):
    """What a threaded pool offers the connections it hands out."""

    @property
    def driver(self) -> Driver: ...

    def give_back(self, lease: Lease) -> None:
        """Take back the connection ``lease`` holds (clean it first if it needs it).
        Idempotent: a lease that no longer holds it is ignored."""

    def renew(self, lease: Lease) -> Entry:
        """Replace ``lease``'s broken connection with a healthy one, within the pool's
        timeout; raises what a check-out raises."""
