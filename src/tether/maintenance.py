"""A pool's background work, on two named daemon threads per pool.

Maintenance (every second, sooner under a short ``wait_timeout``): retire expired, surplus-idle
and dead idle connections, ping idle ones before the server would drop them, refill
``min_size``, report leaks, take back connections of garbage-collected proxies and of ended
threads. The watchdog (its own thread: maintenance may itself be waiting on a silent server)
looks at calls stuck waiting on the server (:mod:`tether.watchdog`).

The threads hold the pool only weakly and stop when it is closed or collected; a failing round
is logged and the thread lives on. Threads start with the pool's first connection (or at
construction with ``min_size``), never from a finalizer.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .classify import ErrorKind, classify
from .config import PoolConfig
from .custody import Custody
from .drivers.sockets import break_socket, readable
from .entry import Entry, Lease, Round
from .selection import alive_threads
from .watchdog import probe_sessions

if TYPE_CHECKING:
    from .budget.upkeep import Upkeep

__all__ = ["Housekeeper"]

logger = logging.getLogger("tether")

# Why maintenance takes an idle connection that it does not retire: to ping it.
_KEEPALIVE = "keepalive"


class Housekeeper:
    """The background work of one pool in one process."""

    def __init__(self, *, name: str, custody: Custody, config: PoolConfig) -> None:
        self.name = name
        self.custody = custody
        self.lock = custody.lock
        self.state = custody.state
        self.connector = custody.connector
        self.config = config
        self._stop = threading.Event()
        self._spawn_lock = threading.Lock()
        self._threads: dict[str, threading.Thread] = {}
        self._running = False
        #: A fleet-wide budget's renewals and give-backs (see :mod:`tether.budget`).
        self.budget: Upkeep | None = None
        if self.connector.gate is not None:
            from .budget.upkeep import Upkeep

            self.budget = Upkeep(custody, self.connector.gate, config.min_size)

    # ------------------------------------------------------------------ threads

    def ensure_started(self, pool: object) -> None:
        """Start the threads, once (they watch ``pool`` weakly)."""
        if self._running:
            return
        with self._spawn_lock:
            if self._running or self._stop.is_set():
                return
            ref = weakref.ref(pool)
            self._spawn(ref, "maintenance", self._maintenance_interval, self.maintain)
            if self.config.watchdog is not None:
                # Looks often enough to see a stuck call soon after it crosses the threshold.
                every = min(0.5, self.config.watchdog / 4)
                self._spawn(ref, "watchdog", lambda: every, self.watch)
            self._running = True

    def start(self, pool: object) -> None:
        """Start now if the pool keeps connections open even when unused (``min_size``)."""
        if self.config.min_size:
            self.ensure_started(pool)

    def _spawn(
        self,
        ref: weakref.ref[Any],
        what: str,
        interval: Callable[[], float],
        work: Callable[[], None],
    ) -> None:
        if what in self._threads:
            return
        thread = threading.Thread(
            target=_background,
            args=(ref, self._stop, interval, work, f"{self.name}: {what}", self._orphaned),
            name=f"tether-{what}-{self.name}",
            daemon=True,
        )
        thread.start()
        self._threads[what] = thread

    def _maintenance_interval(self) -> float:
        limit = self.connector.lifetimes.idle_limit
        interval = self.config.maintenance_interval
        return interval if limit is None else min(interval, max(0.1, limit / 4))

    def stop(self, timeout: float) -> None:
        """Stop the threads, waiting for each at most ``timeout`` seconds."""
        self._stop.set()
        for thread in list(self._threads.values()):
            if thread is not threading.current_thread():
                thread.join(timeout)
        if self.budget is not None:
            self.budget.stop()

    def _orphaned(self) -> None:
        """The pool was garbage-collected without being closed: close what is idle."""
        self.custody.retire_idle(
            lambda entry: "pool closed",
            lambda: self.state.close(lambda: RuntimeError("pool collected")),
        )

    # ------------------------------------------------------------------ maintenance

    def maintain(self) -> None:
        """One round of maintenance. Cut short anywhere, it gives back what it took."""
        work = Round()
        try:
            self._maintain(work)
        except BaseException:
            self.custody.give_up(work, "maintenance interrupted")
            raise

    def _maintain(self, work: Round) -> None:
        state, config = self.state, self.config
        lifetimes = self.connector.lifetimes
        now = time.monotonic()

        def retire(entry: Entry) -> str | None:
            if now >= entry.expires:
                return "max lifetime reached"
            if (
                lifetimes.idle_timeout is not None
                and now - entry.returned_at >= lifetimes.idle_timeout
                and state.size > state.min_size
            ):
                return "idle timeout"
            if readable(entry.poller):
                return "closed by the server"
            if lifetimes.keepalive is not None and now - entry.last_used >= lifetimes.keepalive:
                return _KEEPALIVE
            return None

        with self.lock:
            if state.closed:
                return
            collected = state.collect()
            taken = state.take_idle(now, retire, work.lease)
            leaks = state.held_too_long(now, config.leak_timeout)
            refills = state.reserve_refill(work.lease, now)
            if state.selection.keeps_sessions:
                state.reclaim_orphans(alive_threads())
        for entry in collected:
            holder = entry.holder
            logger.warning(
                "%s: connection %d was garbage-collected without being returned; acquired at %s",
                self.name,
                entry.session_id,
                holder.where() if holder is not None else "unknown",
            )
            # Its state is unknown (maybe mid-transaction): closed rather than reused.
            self.custody.retire(entry, holder, "garbage-collected while checked out")
        for entry, reason in taken:
            if reason is _KEEPALIVE:
                self._keepalive(entry)
            else:
                self.custody.retire(entry, entry.holder, reason)
        for entry in leaks:
            holder = entry.holder
            logger.warning(
                "%s: connection %d held for over %.1fs (possible leak); acquired at:\n%s",
                self.name,
                entry.session_id,
                config.leak_timeout,
                holder.where() if holder is not None else "unknown",
            )
        for lease in refills:
            if not self._refill(lease):
                break  # backing off: the slots left are given back below
        # What is still held or reserved: the slots of refills not attempted.
        self.custody.give_up(work, "maintenance interrupted")
        if self.budget is not None:
            self.budget.run()

    def _keepalive(self, entry: Entry) -> None:
        try:
            self.connector.ping(entry, self.config.ping_timeout)
        except self.connector.driver.Error as exc:
            logger.debug("%s: keepalive of %d failed: %s", self.name, entry.session_id, exc)
            with self.lock:
                self.state.counters.pings += 1
                self.state.counters.ping_failures += 1
            self.custody.retire(entry, entry.holder, "no answer to keepalive ping")
            return
        with self.lock:
            self.state.counters.pings += 1
            holder, reason = entry.holder, self.state.checkin(entry, time.monotonic())
        if reason is not None:
            self.custody.retire(entry, holder, reason)

    def _refill(self, lease: Lease) -> bool:
        """Open a connection in a slot reserved for ``min_size``; ``False`` if it failed."""
        try:
            entry = self.connector.open(time.monotonic() + self.config.connect_timeout)
        except self.connector.driver.Error as exc:
            kind = classify(exc, self.connector.driver, self.config.error_kinds)
            with self.lock:
                self.state.open_failed(
                    lease,
                    f"{type(exc).__name__}: {exc}",
                    self.connector.driver.error_code(exc),
                    wait_out=kind in (ErrorKind.CAPACITY, ErrorKind.DISCONNECT),
                    capacity=kind is ErrorKind.CAPACITY,
                    now=time.monotonic(),
                )
            logger.warning("%s: refill failed: %s: %s", self.name, type(exc).__name__, exc)
            return False
        try:
            with self.lock:
                self.state.opened(lease, entry, time.monotonic())
                reason = self.state.checkin(entry, time.monotonic())
        except BaseException:
            if lease.entry is not entry:  # never registered: nobody else knows of it
                self.connector.close(entry)
            raise
        if reason is not None:
            self.custody.retire(entry, lease, reason)
        return True

    # ------------------------------------------------------------------ watchdog

    def watch(self) -> None:
        """Break calls that have waited on the server for ``watchdog`` seconds when the
        server, or their session, is gone."""
        limit = self.config.watchdog
        if limit is None:
            return
        now = time.monotonic()
        with self.lock:
            if self.state.closed:
                return
            stuck = [
                (entry, entry.in_flight)
                for entry in self.state.entries
                if entry.in_flight and now - entry.in_flight >= limit
            ]
        if not stuck:
            return
        connector = self.connector
        verdicts = probe_sessions(
            connector.driver,
            connector.dsn,
            self.config.connect_args,
            [entry.session_id for entry, _ in stuck],
            max(0.5, min(2.0, limit)),
            self.config.error_kinds,
        )
        for entry, since in stuck:
            reason = verdicts(entry.session_id)
            if reason is None:
                continue
            with self.lock:
                # Still the same call on the same connection: broken under the lock, so its
                # descriptor cannot be closed and reused meanwhile.
                if entry.in_flight != since or entry not in self.state.entries or entry.fd < 0:
                    continue
                entry.watchdog_fired = True
                self.state.counters.watchdog_breaks += 1
                break_socket(entry.fd)
            logger.warning(
                "%s: watchdog broke connection %d after %.1fs waiting: %s",
                self.name,
                entry.session_id,
                time.monotonic() - since,
                reason,
            )


def _background(
    pool_ref: weakref.ref[Any],
    stop: threading.Event,
    interval: Callable[[], float],
    work: Callable[[], None],
    what: str,
    orphaned: Callable[[], None],
) -> None:
    """Run ``work()`` every ``interval()`` seconds until ``stop`` is set or the pool is
    collected. A failing round is logged and the loop lives on."""
    while not stop.wait(interval()):
        if pool_ref() is None:
            orphaned()
            return
        try:
            work()
        except Exception:
            logger.exception("%s failed", what)
