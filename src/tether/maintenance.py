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
from typing import Any

from .classify import ErrorKind, classify
from .config import PoolConfig
from .connector import Connector
from .drivers.sockets import break_socket, readable
from .entry import Entry, Lease
from .selection import alive_threads
from .state import PoolState
from .watchdog import probe_sessions

__all__ = ["Housekeeper"]

logger = logging.getLogger("tether")


class Housekeeper:
    """The background work of one pool in one process."""

    def __init__(
        self,
        *,
        name: str,
        lock: threading.Lock,
        state: PoolState,
        connector: Connector,
        config: PoolConfig,
    ) -> None:
        self.name = name
        self.lock = lock
        self.state = state
        self.connector = connector
        self.config = config
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started = False

    # ------------------------------------------------------------------ threads

    def ensure_started(self, pool: object) -> None:
        """Start the threads, once (they watch ``pool`` weakly)."""
        if self._started:
            return
        with self.lock:
            if self._started or self.state.closed:
                return
            self._started = True
        ref = weakref.ref(pool)
        self._spawn(ref, "maintenance", self._maintenance_interval, self.maintain)
        if self.config.watchdog is not None:
            # Looks often enough to see a stuck call soon after it crosses the threshold.
            every = min(0.5, self.config.watchdog / 4)
            self._spawn(ref, "watchdog", lambda: every, self.watch)

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
        thread = threading.Thread(
            target=_background,
            args=(ref, self._stop, interval, work, f"{self.name}: {what}", self._orphaned),
            name=f"tether-{what}-{self.name}",
            daemon=True,
        )
        self._threads.append(thread)
        thread.start()

    def _maintenance_interval(self) -> float:
        limit = self.connector.lifetimes.idle_limit
        interval = self.config.maintenance_interval
        return interval if limit is None else min(interval, max(0.1, limit / 4))

    def stop(self, timeout: float) -> None:
        """Stop the threads, waiting for each at most ``timeout`` seconds."""
        self._stop.set()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout)

    def _orphaned(self) -> None:
        """The pool was garbage-collected without being closed: close what is idle."""
        with self.lock:
            if self.state.closed:
                return
            idle = self.state.close(lambda: RuntimeError("pool collected"), time.monotonic())
        for entry in idle:
            self.connector.close(entry)

    # ------------------------------------------------------------------ maintenance

    def maintain(self) -> None:
        """One round of maintenance."""
        state, config = self.state, self.config
        lifetimes = self.connector.lifetimes
        now = time.monotonic()
        with self.lock:
            if state.closed:
                return
            collected = state.collect(now)
            retired = state.retire_idle(
                now, idle_timeout=lifetimes.idle_timeout, dead=lambda e: readable(e.poller)
            )
            to_ping = state.take_for_keepalive(now, lifetimes.keepalive, _own_lease)
            leaks = state.held_too_long(now, config.leak_timeout)
            refills = state.reserve_refill(_own_lease, now)
            if state.selection.keeps_sessions:
                state.reclaim_orphans(alive_threads())
        self.close_collected(collected)
        for entry, _reason in retired:
            self.connector.close(entry)
        for entry in to_ping:
            self._keepalive(entry)
        for entry in leaks:
            holder = entry.holder
            logger.warning(
                "%s: connection %d held for over %.1fs (possible leak); acquired at:\n%s",
                self.name,
                entry.session_id,
                config.leak_timeout,
                holder.where() if holder is not None else "unknown",
            )
        for index, lease in enumerate(refills):
            if not self._refill(lease):
                self._give_up(refills[index + 1 :])
                break

    def _keepalive(self, entry: Entry) -> None:
        lease = entry.holder
        assert lease is not None
        try:
            try:
                self.connector.ping(entry, self.config.ping_timeout)
                alive = True
            except self.connector.driver.Error as exc:
                alive = False
                logger.debug("%s: keepalive of %d failed: %s", self.name, entry.session_id, exc)
            with self.lock:
                counters = self.state.counters
                counters.pings += 1
                if alive:
                    close = self.state.checkin(entry, time.monotonic()) is not None
                else:
                    counters.ping_failures += 1
                    close = self.state.discard(
                        entry, lease, "no answer to keepalive ping", time.monotonic()
                    )
        except BaseException:
            self._give_up([lease])
            raise
        if close:
            self.connector.close(entry)

    def _refill(self, lease: Lease) -> bool:
        """Open a connection in a slot reserved for ``min_size``; ``False`` if it failed."""
        try:
            try:
                entry = self.connector.open(time.monotonic() + self.config.connect_timeout)
            except Exception as exc:
                kind = classify(exc, self.connector.driver, self.config.error_kinds)
                with self.lock:
                    self.state.open_failed(
                        lease,
                        exc,
                        wait_out=kind in (ErrorKind.CAPACITY, ErrorKind.DISCONNECT),
                        capacity=kind is ErrorKind.CAPACITY,
                        now=time.monotonic(),
                    )
                logger.warning("%s: refill failed: %s: %s", self.name, type(exc).__name__, exc)
                return False
            with self.lock:
                self.state.opened(lease, entry, time.monotonic())
                close = self.state.checkin(entry, time.monotonic()) is not None
        except BaseException:
            self._give_up([lease])
            raise
        if close:
            self.connector.close(entry)
        return True

    def _give_up(self, leases: list[Lease]) -> None:
        """Take back what was granted to leases of this round's work."""
        closing = []
        with self.lock:
            for lease in leases:
                entry = self.state.abandon(lease, time.monotonic())
                if entry is not None:
                    closing.append(entry)
        for entry in closing:
            self.connector.close(entry)

    def close_collected(self, found: list[tuple[Entry, str]]) -> None:
        """Close the connections of garbage-collected proxies, with a warning each."""
        for entry, where in found:
            logger.warning(
                "%s: connection %d was garbage-collected without being returned;"
                " acquired at %s",
                self.name,
                entry.session_id,
                where,
            )
            # Its state is unknown (maybe mid-transaction): closed rather than reused.
            self.connector.close(entry)

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
                if entry.in_flight != since or entry not in self.state.entries:
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


def _own_lease() -> Lease:
    """A lease for the pool's own work (ident 0: never a borrower)."""
    return Lease(None)


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
