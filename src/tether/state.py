"""The pool's bookkeeping: which connections exist, which are idle, who holds the rest, who
waits. No I/O and no lock of its own: every method is called under the pool flavour's lock,
and returns what the caller must then do outside it.

The accounting cannot drift, because the numbers are not stored: ``size`` is the open
connections plus the slots reserved for connects in progress, ``in_use`` the open ones that
are not idle. Everything the pool grants goes to a :class:`Lease`, and every connection is
either idle (``holder is None``, in ``idle``) or held by exactly one lease, whoever holds it:
a borrower, a check-out checking it, a give-back cleaning it, maintenance pinging or retiring
it, ``close()`` closing it. Two orders keep that true at every step, so that an exception (or
a cancellation) anywhere leaves nothing the lease's holder cannot take back
(:meth:`PoolState.abandon`):

- taking a connection sets its holder before it leaves ``idle``; giving it back puts it in
  ``idle`` before it clears the holder;
- a connection leaves the pool held: its holder closes it, then unregisters it.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from .entry import Entry, Lease
from .policy import Backoff
from .selection import RECLAIMED, Selection
from .stats import Counters, PoolStats, percentiles

__all__ = ["PoolState", "Step"]


class Step(enum.Enum):
    """What a check-out does next."""

    TAKE = "take"  # an idle connection was granted: check it, then hand it out
    OPEN = "open"  # a slot was reserved: open a connection in it
    WAIT = "wait"  # queued: wait to be granted one of the above
    CLOSED = "closed"  # the pool is closed


class PoolState:
    def __init__(self, *, max_size: int, min_size: int, selection: Selection) -> None:
        self.max_size = max_size
        self.min_size = min_size
        self.selection = selection
        #: Every open connection the pool owns.
        self.entries: dict[Entry, None] = {}
        #: The idle ones, least recently returned first (entry in idle <=> holder is None).
        self.idle: dict[Entry, None] = {}
        #: Slots reserved for connects in progress, by the lease that opens in it.
        self.opening: dict[Lease, None] = {}
        #: Check-outs waiting, first come first served.
        self.waiters: deque[Lease] = deque()
        self.closed = False
        #: Connects are not attempted before this (monotonic): a cap or an outage backs off.
        self.blocked_until = 0.0
        self.backoff = Backoff()
        #: What the last failed connect said, and its error number: kept as text, not as
        #: the exception, whose traceback would keep the failed check-out's frames (and
        #: what they hold) alive.
        self.last_connect_error: str | None = None
        self.last_connect_errno: int | None = None
        self.counters = Counters()
        self.closed_by: dict[str, int] = {}
        #: Connections above this process's share of a fleet-wide budget, while other
        #: processes wait: that many give-backs close their connection (set by maintenance).
        self.surplus = 0

    # ------------------------------------------------------------------ gauges

    @property
    def size(self) -> int:
        return len(self.entries) + len(self.opening)

    @property
    def in_use(self) -> int:
        return len(self.entries) - len(self.idle)

    # ------------------------------------------------------------------ check-out

    def checkout(
        self, lease: Lease, last: Entry | None, now: float, *, fresh: bool = False
    ) -> Step:
        """A check-out for ``lease``, by a thread whose last connection was ``last``: that one
        if it is idle and still the thread's (warm, same session), else what the selection
        picks, else a slot to open one in, else a place in the queue. ``fresh`` (a replay
        after a lost connection): a slot to open one in first, where the bound and backoff
        allow; whatever lost the last connection (a KILL of every session, a restart, every
        connection cut) may be taking the idle ones one after another, and only a
        connection opened after it is safe from it."""
        if self.closed:
            return Step.CLOSED
        if (
            fresh
            and len(self.entries) + len(self.opening) < self.max_size
            and now >= self.blocked_until
        ):
            self.opening[lease] = None
            return Step.OPEN
        if last is not None and last.owner == lease.ident and last in self.idle:
            self._grant(last, lease, now)
            return Step.TAKE
        at_bound = len(self.entries) + len(self.opening) >= self.max_size
        entry = self.selection.choose(self.idle, lease.ident, at_bound)
        if entry is not None:
            if self.selection.keeps_sessions and entry.owner not in (None, RECLAIMED):
                self.counters.takeovers += 1
            self._grant(entry, lease, now)
            return Step.TAKE
        if not at_bound and now >= self.blocked_until:
            self.opening[lease] = None
            return Step.OPEN
        self.counters.waits += 1
        self.waiters.append(lease)
        return Step.WAIT

    def _grant(self, entry: Entry, lease: Lease, now: float) -> None:
        """Give ``entry`` (idle, or just given back) to ``lease``. Its owner changes once
        the check-out succeeds (the health check resets another thread's session first)."""
        lease.entry = entry
        lease.since = now
        entry.holder = lease
        self.idle.pop(entry, None)
        self.counters.checkouts += 1

    def granted(self, lease: Lease) -> Step | None:
        """What a waiter was granted (``None``: nothing; it may look again)."""
        if lease.wake is not None and lease.wake.error is not None:
            return Step.CLOSED
        if lease in self.opening:
            return Step.OPEN
        entry = lease.entry
        if entry is not None and entry.holder is lease and entry in self.entries:
            return Step.TAKE
        return None

    def stop_waiting(self, lease: Lease) -> None:
        """A waiter's wait ended without a notification (its deadline, or a wake-up to look
        again): it leaves the queue, if it is still in it."""
        if lease in self.waiters:
            self.waiters.remove(lease)

    # ------------------------------------------------------------------ opening

    def opened(self, lease: Lease, entry: Entry, now: float) -> None:
        """A connect in ``lease``'s reserved slot succeeded: the entry is the lease's."""
        entry.holder = lease
        lease.entry = entry
        self.entries[entry] = None
        self.opening.pop(lease, None)
        self.counters.opened += 1
        self.backoff.succeeded()
        self.blocked_until = 0.0
        if lease.ident:
            self._grant(entry, lease, now)

    def open_failed(
        self,
        lease: Lease,
        error: str,
        errno: int | None,
        *,
        wait_out: bool,
        capacity: bool,
        now: float,
    ) -> None:
        """A connect in ``lease``'s slot failed (``error`` says how). A cap or an outage
        (``wait_out``) blocks further connects for a jittered backoff; the slot goes to the
        next waiter."""
        self.opening.pop(lease, None)
        self.last_connect_error = error
        self.last_connect_errno = errno
        self.counters.connect_errors += 1
        if capacity:
            self.counters.capacity_errors += 1
        if wait_out:
            self.blocked_until = self.backoff.failed(now)
        self._serve_waiters(now)

    def reserve_refill(self, make_lease: Callable[[], Lease], now: float) -> list[Lease]:
        """Slots maintenance should open connections in to keep ``min_size`` open."""
        leases: list[Lease] = []
        if self.closed or now < self.blocked_until:
            return leases
        while self.size < self.min_size:
            lease = make_lease()
            self.opening[lease] = None
            leases.append(lease)
        return leases

    # ------------------------------------------------------------------ give-back

    def checkin(self, entry: Entry, now: float) -> str | None:
        """``entry``'s holder gives it back, clean: to the first waiter, or idle. Returns why
        it must leave the pool instead (it stays held: the holder closes it, then
        :meth:`unregister`\\ s it)."""
        if self.closed:
            return "pool closed"
        if now >= entry.expires:
            return "max lifetime reached"
        if entry.raw is None:
            return "connection lost"
        if self.surplus > 0:
            self.surplus -= 1
            return "over its share of the fleet's budget"
        entry.returned_at = now
        if self.waiters:
            waiter = self.waiters[0]
            self._grant(entry, waiter, now)
            self.waiters.popleft()
            self._notify(waiter)
            return None
        self.idle[entry] = None
        entry.holder = None
        return None

    def unregister(self, entry: Entry, reason: str, now: float) -> None:
        """``entry``, closed by its holder, leaves the pool: its slot frees up. Idempotent."""
        if entry not in self.entries:
            return
        self.idle.pop(entry, None)
        del self.entries[entry]
        self.counters.closed += 1
        self.closed_by[reason] = self.closed_by.get(reason, 0) + 1
        self._serve_waiters(now)

    def _serve_waiters(self, now: float) -> None:
        """A slot came free: let the first waiter open a connection in it."""
        if (
            self.waiters
            and not self.closed
            and self.size < self.max_size
            and now >= self.blocked_until
        ):
            waiter = self.waiters[0]
            self.opening[waiter] = None
            self.waiters.popleft()
            self._notify(waiter)

    @staticmethod
    def _notify(lease: Lease) -> None:
        if lease.wake is not None:
            lease.wake.notify()

    # ------------------------------------------------------------------ giving up

    def abandon(self, lease: Lease, now: float) -> Entry | None:
        """The holder of ``lease`` gave up during a check-out (an exception, a timeout, a
        cancellation), wherever it was: queued, opening, or holding a connection it had not
        handed to its caller yet. Takes back what was granted: the queue place, the reserved
        slot, the connection: back to the pool if nothing is unknown about it, else returned
        (still held) for the caller to close and unregister. Idempotent; never raises."""
        if lease in self.waiters:
            self.waiters.remove(lease)
        if lease in self.opening:
            del self.opening[lease]
            self._serve_waiters(now)
        entry = lease.entry
        if entry is None or entry.holder is not lease:
            return None
        if entry not in self.entries:
            # Opened but never registered, or closed but not yet unregistered.
            return entry if entry.raw is not None else None
        self.idle.pop(entry, None)
        if entry.in_flight or entry.broken or entry.raw is None:
            return entry
        if self.checkin(entry, now) is not None:
            return entry
        return None

    def collect(self) -> list[Entry]:
        """Checked-out connections whose proxy was garbage-collected without giving them
        back: for the caller to close and unregister (their state is unknown, maybe
        mid-transaction; each stays held by its lease, which says where it was acquired).
        No finalizer is involved: the proxy's weak reference is enough, and nothing can
        interrupt it being cleared."""
        found: list[Entry] = []
        for entry in self.entries:
            lease = entry.holder
            if lease is not None and lease.proxy is not None and lease.proxy() is None:
                lease.proxy = None  # taken back once
                self.counters.reclaimed += 1
                found.append(entry)
        return found

    # ------------------------------------------------------------------ maintenance

    def take_idle(
        self, now: float, select: Callable[[Entry], str | None], make_lease: Callable[[], Lease]
    ) -> list[tuple[Entry, str]]:
        """Take the idle connections ``select`` names a reason for (held by a lease of the
        pool's own, out of ``idle``): to retire them, or ping them."""
        taken: list[tuple[Entry, str]] = []
        for entry in list(self.idle):
            reason = select(entry)
            if reason is None:
                continue
            lease = make_lease()
            lease.entry = entry
            entry.holder = lease
            del self.idle[entry]
            taken.append((entry, reason))
        return taken

    def reclaim_orphans(self, alive: set[int]) -> int:
        """Idle connections of threads that have ended become anyone's (thread-mapped
        pools; their session is reset before another thread uses it)."""
        reclaimed = 0
        for entry in self.idle:
            if entry.owner is not None and entry.owner != RECLAIMED and entry.owner not in alive:
                entry.owner = RECLAIMED
                reclaimed += 1
        self.counters.reclaimed += reclaimed
        return reclaimed

    def held_too_long(self, now: float, leak_timeout: float | None) -> list[Entry]:
        """Checked-out connections held past ``leak_timeout``, each reported once."""
        if leak_timeout is None:
            return []
        leaks: list[Entry] = []
        for entry in self.entries:
            lease = entry.holder
            if (
                lease is not None
                and lease.ident
                and not entry.leak_reported
                and now - lease.since >= leak_timeout
            ):
                entry.leak_reported = True
                self.counters.leaks += 1
                leaks.append(entry)
        return leaks

    def report(self, now: float, holder: str = "thread") -> str:
        """What a check-out that timed out is told: the gauges, the last connect error, and
        who holds the connections (the longest held first): the ``holder`` (a thread, a
        task), for how long, where acquired."""
        lines = [
            f"size {self.size}/{self.max_size}, in use {self.in_use}, idle {len(self.idle)},"
            f" waiting {len(self.waiters)}"
        ]
        if self.last_connect_error is not None:
            lines.append(f"last connect error: {self.last_connect_error}")
        holders = sorted(
            (e.holder for e in self.entries if e.holder is not None and e.holder.ident),
            key=lambda lease: lease.since,
        )
        if holders:
            lines.append("held by:")
            for lease in holders[:10]:
                name = lease.thread.name if lease.thread is not None else "?"
                lines.append(
                    f"  {holder} {name!r} for {now - lease.since:.1f}s, acquired at {lease.where()}"
                )
            if len(holders) > 10:
                lines.append(f"  ... and {len(holders) - 10} more")
        return "\n".join(lines)

    def snapshot(
        self,
        *,
        name: str,
        wait_times: Iterable[float],
        hold_times: Iterable[float],
        server: dict[str, Any],
    ) -> PoolStats:
        """The pool's stats: these gauges and counters (copied), the wait and hold times'
        percentiles, what the server said of its limits."""
        return PoolStats(
            name=name,
            max_size=self.max_size,
            min_size=self.min_size,
            size=self.size,
            idle=len(self.idle),
            in_use=self.in_use,
            waiting=len(self.waiters),
            opening=len(self.opening),
            counters=Counters(**self.counters.as_dict()),
            closed_by_reason=dict(self.closed_by),
            wait_time=percentiles(list(wait_times)),
            hold_time=percentiles(list(hold_times)),
            server=server,
            last_connect_error=self.last_connect_error,
        )

    # ------------------------------------------------------------------ the whole pool

    def close(self, error: Callable[[], BaseException]) -> None:
        """Close the pool: waiters get ``error()``; the caller takes the idle connections
        (:meth:`take_idle`) to close them; checked-out ones are closed when they come back."""
        self.closed = True
        while self.waiters:
            waiter = self.waiters[0]
            if waiter.wake is not None:
                waiter.wake.error = error()
            self.waiters.popleft()
            self._notify(waiter)

    def expire_all(self) -> None:
        """Every connection retires at its next give-back (after a failover they all point
        at the demoted server); the caller takes the idle ones to close now."""
        for entry in self.entries:
            entry.expires = 0.0

    def forget_all(self) -> list[Entry]:
        """In a forked child: every connection belongs to the parent. Returns them all, to be
        dropped without a byte on their sockets; the bookkeeping starts over (waiters and
        reserved slots were the parent's threads')."""
        entries = list(self.entries)
        self.entries.clear()
        self.idle.clear()
        self.opening.clear()
        self.waiters.clear()
        return entries
