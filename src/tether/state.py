"""The pool's bookkeeping: which connections exist, which are idle, who holds the rest, who
waits. No I/O and no lock of its own: every method is called under the pool flavour's lock,
and returns what the caller must then do outside it (close a connection, wake a waiter that
was already notified, open in a reserved slot).

The accounting cannot drift, because the numbers are not stored: ``size`` is the open
connections plus the slots reserved for connects in progress, ``in_use`` is the open ones that
are not idle. Every grant goes to a :class:`Lease`; a lease whose holder gives up is handed
to :meth:`PoolState.abandon`, which finds and takes back whatever was granted to it, however
far the grant got. That is how an exception or a cancellation anywhere leaves the pool
consistent.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable

from .entry import Entry, Lease
from .policy import Backoff
from .selection import RECLAIMED, Selection
from .stats import Counters

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
        self.last_connect_error: BaseException | None = None
        self.counters = Counters()
        self.closed_by: dict[str, int] = {}
        #: Leases whose connection proxy was garbage-collected while it held them, queued
        #: by the finalizer (which must not take the lock) until the lock's next holder.
        self.collected: deque[tuple[Lease, str]] = deque()

    # ------------------------------------------------------------------ gauges

    @property
    def size(self) -> int:
        return len(self.entries) + len(self.opening)

    @property
    def in_use(self) -> int:
        return len(self.entries) - len(self.idle)

    # ------------------------------------------------------------------ check-out

    def checkout(self, lease: Lease, last: Entry | None, now: float) -> Step:
        """A check-out for ``lease`` (by a thread whose last connection was ``last``)."""
        if self.closed:
            return Step.CLOSED
        entry = self.selection.choose(
            self.idle, last, lease.ident, at_bound=self.size >= self.max_size
        )
        if entry is not None:
            self._grant(entry, lease, now)
            return Step.TAKE
        if self.size < self.max_size and now >= self.blocked_until:
            self.opening[lease] = None
            return Step.OPEN
        self.counters.waits += 1
        self.waiters.append(lease)
        return Step.WAIT

    def _grant(self, entry: Entry, lease: Lease, now: float) -> None:
        """Give ``entry`` (idle, or just given back) to ``lease``."""
        lease.entry = entry
        lease.since = now
        entry.holder = lease
        self.idle.pop(entry, None)
        # The owner changes once the check-out succeeds (the health check resets another
        # thread's session first: see tether.policy.checkout_check).
        owner = entry.owner
        if self.selection.keeps_sessions and owner not in (None, RECLAIMED, lease.ident):
            self.counters.takeovers += 1
        self.counters.checkouts += 1

    def granted(self, lease: Lease) -> Step | None:
        """What a notified (or timed-out yet dequeued) waiter was granted."""
        if lease.error is not None:
            return Step.CLOSED
        if lease in self.opening:
            return Step.OPEN
        entry = lease.entry
        if entry is not None and entry.holder is lease and entry in self.entries:
            return Step.TAKE
        return None

    def stop_waiting(self, lease: Lease) -> bool:
        """A waiter's wait ended without a notification (its deadline, or a wake-up to look
        again): ``True`` if it was still queued (and now is not), ``False`` if it was granted
        something meanwhile."""
        try:
            self.waiters.remove(lease)
        except ValueError:
            return False
        return True

    # ------------------------------------------------------------------ opening

    def opened(self, lease: Lease, entry: Entry, now: float) -> None:
        """A connect in ``lease``'s reserved slot succeeded: the entry is the lease's."""
        lease.entry = entry
        self.entries[entry] = None
        self.opening.pop(lease, None)
        self.counters.opened += 1
        self.backoff.succeeded()
        self.blocked_until = 0.0
        if lease.ident:
            self._grant(entry, lease, now)
        else:
            entry.holder = lease  # maintenance opened it (a refill): no borrower yet

    def open_failed(self, lease: Lease, error: BaseException, *, wait_out: bool,
                    capacity: bool, now: float) -> None:
        """A connect in ``lease``'s slot failed. A cap or an outage (``wait_out``) blocks
        further connects for a jittered backoff; the slot goes to the next waiter."""
        self.opening.pop(lease, None)
        self.last_connect_error = error
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
        """``entry``'s holder gives it back, clean: to the first waiter, or idle. Returns
        why it must be closed instead (it is then unregistered; the caller closes it)."""
        if self.closed:
            reason = "pool closed"
        elif now >= entry.expires:
            reason = "max lifetime reached"
        elif entry.raw is None:
            reason = "connection lost"
        else:
            entry.returned_at = now
            while self.waiters:
                waiter = self.waiters.popleft()
                self._grant(entry, waiter, now)
                self._notify(waiter)
                return None
            entry.holder = None
            self.idle[entry] = None
            return None
        self.unregister(entry, reason, now)
        return reason

    def unregister(self, entry: Entry, reason: str, now: float) -> None:
        """``entry`` leaves the pool (its slot frees up); the caller closes it, outside the
        lock. Idempotent."""
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
            waiter = self.waiters.popleft()
            self.opening[waiter] = None
            self._notify(waiter)

    @staticmethod
    def _notify(lease: Lease) -> None:
        if lease.notify is not None:
            lease.notify()

    # ------------------------------------------------------------------ giving up

    def abandon(self, lease: Lease, now: float) -> Entry | None:
        """The holder of ``lease`` gave up during a check-out (an exception, a timeout, a
        cancellation), wherever it was: queued, opening, or holding a connection it had not
        yet handed to its caller. Takes back what was granted: the queue place, the reserved
        slot, the connection (back to the pool if nothing was done with it; to be closed,
        and returned for the caller to close, if a call on it did not finish). Idempotent,
        and never raises."""
        if lease in self.waiters:
            self.waiters.remove(lease)
        if lease in self.opening:
            del self.opening[lease]
            self._serve_waiters(now)
        entry = lease.entry
        if entry is None or entry.holder is not lease:
            return None
        self.idle.pop(entry, None)
        if entry not in self.entries:
            return entry  # opened but never registered: only its caller knew of it
        if entry.in_flight or entry.broken or entry.raw is None:
            self.unregister(entry, "check-out interrupted during a call", now)
            return entry
        self.checkin(entry, now)
        return None if entry in self.entries else entry

    def discard(self, entry: Entry, holder: Lease | None, reason: str, now: float) -> bool:
        """Unregister ``entry`` if ``holder`` (``None``: the pool itself) still has it;
        returns whether the caller should close it."""
        if entry.holder is not holder or entry not in self.entries:
            return False
        self.unregister(entry, reason, now)
        return True

    def collect(self, now: float) -> list[tuple[Entry, str]]:
        """Unregister the connections of garbage-collected proxies (queued by finalizers);
        returns them, with where they were acquired, for the caller to close: their state
        is unknown, maybe mid-transaction."""
        found: list[tuple[Entry, str]] = []
        while self.collected:
            lease, where = self.collected.popleft()
            entry = lease.entry
            if entry is not None and entry.holder is lease and entry in self.entries:
                self.unregister(entry, "garbage-collected while checked out", now)
                self.counters.reclaimed += 1
                found.append((entry, where))
        return found

    # ------------------------------------------------------------------ maintenance

    def retire_idle(
        self,
        now: float,
        *,
        idle_timeout: float | None,
        dead: Callable[[Entry], bool],
    ) -> list[tuple[Entry, str]]:
        """Unregister idle connections that are expired, idle too long above ``min_size``,
        or ``dead`` (their socket reads as closed); returns them for the caller to close."""
        retired: list[tuple[Entry, str]] = []
        for entry in list(self.idle):
            if now >= entry.expires:
                reason = "max lifetime reached"
            elif (
                idle_timeout is not None
                and now - entry.returned_at >= idle_timeout
                and self.size > self.min_size
            ):
                reason = "idle timeout"
            elif dead(entry):
                reason = "closed by the server"
            else:
                continue
            self.unregister(entry, reason, now)
            retired.append((entry, reason))
        return retired

    def take_for_keepalive(
        self, now: float, keepalive: float | None, make_lease: Callable[[], Lease]
    ) -> list[Entry]:
        """Idle connections the server has not heard from for ``keepalive`` seconds, taken
        out of the idle set (held by a maintenance lease) to be pinged."""
        if keepalive is None:
            return []
        taken: list[Entry] = []
        for entry in list(self.idle):
            if now - entry.last_used >= keepalive:
                lease = make_lease()
                lease.entry = entry
                entry.holder = lease
                del self.idle[entry]
                taken.append(entry)
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

    # ------------------------------------------------------------------ the whole pool

    def close(self, error: Callable[[], BaseException], now: float) -> list[Entry]:
        """Close the pool: waiters get ``error()``, idle connections are unregistered and
        returned for the caller to close; checked-out ones are closed when they come back."""
        self.closed = True
        idle = list(self.idle)
        for entry in idle:
            self.unregister(entry, "pool closed", now)
        while self.waiters:
            waiter = self.waiters.popleft()
            waiter.error = error()
            self._notify(waiter)
        return idle

    def evict_all(self, reason: str, now: float) -> list[Entry]:
        """Retire every connection (after a failover they all point at the demoted server):
        idle ones now (returned for the caller to close), checked-out ones when they come
        back."""
        idle = list(self.idle)
        for entry in idle:
            self.unregister(entry, reason, now)
        for entry in self.entries:
            entry.expires = 0.0
        return idle

    def forget_all(self) -> list[Entry]:
        """In a forked child: every connection belongs to the parent. Returns them all, to be
        dropped without a byte on their sockets; the bookkeeping starts over (waiters and
        reserved slots were the parent's threads')."""
        entries = list(self.entries)
        self.entries.clear()
        self.idle.clear()
        self.opening.clear()
        self.waiters.clear()
        self.collected.clear()
        self.blocked_until = 0.0
        self.backoff.succeeded()
        return entries
