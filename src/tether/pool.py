"""The threaded pool: a bounded set of healthy connections, handed out without round trips.

How a check-out stays cheap: the thread's last connection is preferred (warm, same session),
granted under one short hold of the lock; it is then checked with one ``poll()`` of its socket
(a server that timed the session out, restarted or ``KILL``-ed it has closed the socket, which
then reads as ready) unless it came back less than a millisecond ago, and pinged only when it
sat idle longer than ``ping_after``. A give-back costs no round trip unless the session is
dirty, which the server itself says in the status bits of its last reply.

Locking: one lock guards the bookkeeping (:class:`tether.state.PoolState`). Decisions are made
under it; connecting, pinging, rolling back and closing happen outside it, so one slow server
round trip never stalls the other threads. Every check-out is a :class:`tether.entry.Lease`:
whatever stops it (a timeout, Ctrl-C while it waits or pings, a signal handler's exception)
hands the lease to :meth:`PoolState.abandon`, which takes back everything granted to it.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar, Unpack

from . import lifecycle
from .budget.gate import BudgetFull
from .classify import ErrorKind, classify
from .config import Lifetimes, PoolConfig, PoolOptions, check_timeout
from .connection import PooledConnection
from .connector import Connector, ServerLimits
from .custody import Custody
from .drivers import Driver, resolve_driver
from .drivers.sockets import readable
from .dsn import DSN, parse_dsn
from .entry import Entry, Lease, Wake
from .errors import PoolClosed, PoolTimeout, driver_error
from .maintenance import Housekeeper
from .policy import Check, Cleanup, Rules
from .selection import Selection, Shared
from .state import PoolState, Step
from .statements import with_statement_timeout
from .stats import PoolStats, samples
from .transactions import run_transaction, transaction

__all__ = ["Pool"]

logger = logging.getLogger("tether")

T = TypeVar("T")

# Connect errors that are waited out (backoff, retry until the deadline) rather than raised.
_WAIT_OUT = (ErrorKind.CAPACITY, ErrorKind.DISCONNECT)

_pool_counter = itertools.count(1)


class Pool:
    """A bounded pool of MySQL/MariaDB connections.

    ``with pool.connection() as conn:`` hands out a DB-API connection (a proxy for it) that
    goes back when the block ends, also when it raises. Options are keyword-only, in seconds
    (see :class:`tether.config.PoolConfig` and the README).
    """

    #: Which idle connection a check-out gets (what the flavours differ in).
    selection: ClassVar[type[Selection]] = Shared
    #: Where the flavour's defaults differ from :data:`tether.config.DEFAULTS`.
    defaults: ClassVar[Mapping[str, Any]] = {}

    def __init__(
        self,
        dsn: str | DSN | None = None,
        *,
        driver: str | Driver | None = None,
        **options: Unpack[PoolOptions],
    ) -> None:
        self._dsn = parse_dsn(dsn)
        self._driver = resolve_driver(driver, self._dsn)
        self._config = PoolConfig.from_options({**self.defaults, **options})
        self._driver.check_connect_args(self._config.connect_args)
        self._name = self._config.name or f"pool-{next(_pool_counter)}"
        self._connector = Connector(
            name=self._name, driver=self._driver, dsn=self._dsn, config=self._config
        )
        self._rules = Rules(
            autocommit=self._config.autocommit,
            keeps_sessions=self.selection.keeps_sessions,
            ping_after=self._config.ping_after,
            status_after_results=self._driver.status_after_results,
            more_results_in_status=self._driver.more_results_in_status,
        )
        self._wait_times = samples()
        self._hold_times = samples()
        self._start()
        lifecycle.track(self)
        logger.info(
            "%s: created for %s (driver %s, max_size %d, min_size %d)",
            self._name,
            self._dsn.redacted(),
            self._driver.name,
            self._config.max_size,
            self._config.min_size,
        )

    def _start(self, state: PoolState | None = None) -> None:
        """The bookkeeping, lock and background work of this process (again in a forked
        child: the parent's lock may be held by a thread that does not exist here)."""
        config = self._config
        self._lock = threading.Lock()
        self._state = state or PoolState(
            max_size=config.max_size, min_size=config.min_size, selection=self.selection()
        )
        self._local = threading.local()  # each thread's last connection
        self._pid = os.getpid()
        self._custody = Custody(lock=self._lock, state=self._state, connector=self._connector)
        self._housekeeper = Housekeeper(name=self._name, custody=self._custody, config=config)
        self._housekeeper.start(self)

    # ------------------------------------------------------------------ public API

    def connection(self, timeout: float | None = None) -> PooledConnection:
        """Check out a connection: use it as ``with pool.connection() as conn:``.

        Without ``with``, call ``conn.close()`` to give it back. Raises
        :class:`tether.PoolTimeout` when none can be had within ``timeout`` (default: the
        pool's), :class:`tether.PoolClosed` after :meth:`close`, and the driver's error at
        once for wrong credentials.
        """
        wait = self._config.timeout if timeout is None else check_timeout(timeout)
        lease = Lease(threading.current_thread())
        try:
            self._acquire(lease, time.monotonic() + wait)
            # Where it was acquired, for leak reports and timeout messages: the code and the
            # instruction offset (the line number is worked out only when it is needed).
            caller = sys._getframe(1)
            if self._config.leak_timeout is None:
                lease.origin = (caller.f_code, caller.f_lasti)
            else:
                lease.origin = traceback.extract_stack(caller, limit=12)
            conn = PooledConnection(self, lease)
            lease.proxy = weakref.ref(conn)
            return conn
        except BaseException:
            self._custody.abandon(lease, "check-out interrupted")
            raise

    getconn = connection

    def transaction(
        self, timeout: float | None = None
    ) -> contextlib.AbstractContextManager[PooledConnection]:
        """A connection inside a transaction: committed when the block ends, rolled back
        when it raises."""
        return transaction(self, timeout)

    def run_transaction(
        self,
        fn: Callable[[PooledConnection], T],
        *,
        attempts: int = 3,
        timeout: float | None = None,
    ) -> T:
        """Run ``fn(conn)`` in a transaction, retrying all of it where that is safe: a
        disconnect before ``COMMIT`` was sent, a deadlock, a lock wait timeout (jittered
        backoff, at most ``attempts`` times). A connection lost while ``COMMIT`` was in
        flight raises :class:`tether.OutcomeUnknown`."""
        return run_transaction(self, fn, attempts=attempts, timeout=timeout)

    def stats(self) -> PoolStats:
        """A snapshot of counters, gauges and wait/hold time percentiles."""
        server = self._connector.server
        with self._lock:
            return self._state.snapshot(
                name=self._name,
                wait_times=self._wait_times,
                hold_times=self._hold_times,
                server=server.as_dict() if server else {},
            )

    def close(self, timeout: float = 5.0) -> None:
        """Close the pool: idle connections now, checked-out ones when they come back.
        Waiting threads get :class:`tether.PoolClosed`. Idempotent."""
        first = not self._state.closed
        self._custody.retire_idle(
            lambda entry: "pool closed", lambda: self._state.close(self._closed_error)
        )
        if first:
            self._housekeeper.stop(timeout)
            logger.info("%s: closed", self._name)

    @property
    def closed(self) -> bool:
        return self._state.closed

    @property
    def name(self) -> str:
        return self._name

    @property
    def dsn(self) -> DSN:
        return self._dsn

    @property
    def driver(self) -> Driver:
        return self._driver

    @property
    def config(self) -> PoolConfig:
        return self._config

    @property
    def lifetimes(self) -> Lifetimes:
        """The lifetimes in force: the configured ones, lowered under the server's
        ``wait_timeout`` once it is known."""
        return self._connector.lifetimes

    @property
    def server(self) -> ServerLimits | None:
        """What the server said about its limits on the first connect (``None`` before)."""
        return self._connector.server

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = self._state  # read without the lock: a repr may be asked for while it is held
        return (
            f"<{type(self).__name__} {self._name!r} {self._dsn.redacted()}"
            f" {'closed' if state.closed else 'open'} size={state.size}/{self._config.max_size}"
            f" idle={len(state.idle)} in_use={state.in_use} waiting={len(state.waiters)}>"
        )

    # ------------------------------------------------------------------ check-out

    def _acquire(self, lease: Lease, deadline: float, *, verify: bool = False) -> Entry:
        """Grant ``lease`` a healthy connection by ``deadline``; the caller abandons the
        lease if this raises. ``verify`` (a replay): a new connection is opened where the
        bound allows, else an idle one is pinged even if it would be trusted or polled
        (whatever just cost the caller its connection, a restart or a network blip, may have
        cost the others theirs)."""
        if os.getpid() != self._pid:
            lifecycle.after_fork_without_hooks(self)
        started = time.monotonic()  # for a timeout's message: the whole check-out's wait
        while True:
            # ``with``, not acquire() then ``try``: an exception landing between those two
            # would leave the lock held for good.
            step: Step | None
            with self._lock:
                step = self._state.checkout(
                    lease, getattr(self._local, "last", None), time.monotonic(), fresh=verify
                )
                if step is Step.WAIT:
                    _prepare_to_wait(lease)
            if step is Step.WAIT:
                step = self._wait(lease, deadline, started)
            if step is Step.TAKE:
                entry = lease.entry
                assert entry is not None
                now = time.monotonic()
                idle_limit = self._connector.lifetimes.idle_limit
                check = self._rules.check(entry, now, lease.ident, self._pid, idle_limit)
                if verify and (check is Check.TRUST or check is Check.POLL):
                    check = Check.PING
                if check is Check.TRUST or self._looked_at(lease, entry, check, now, deadline):
                    break
            elif step is Step.OPEN:
                opened = self._open(lease, deadline, started)
                if opened is not None:
                    entry = opened
                    break
            elif step is Step.CLOSED:
                raise self._closed_error()
        entry.owner = lease.ident
        self._local.last = entry
        return entry

    def _looked_at(
        self, lease: Lease, entry: Entry, check: Check | str, now: float, deadline: float
    ) -> bool:
        """The health check of a connection about to be handed out, beyond trusting it (see
        :meth:`tether.policy.Rules.check`): a poll of its socket, a ping, or a reset; an
        expired or dead one is retired (and counted) and ``False`` returned."""
        if not isinstance(check, Check):
            reason = check
        elif readable(entry.poller):
            reason = "closed by the server"
        elif check is Check.POLL:
            return True
        else:
            try:
                if check is Check.PING:
                    self.count("pings")
                    timeout = min(self._config.ping_timeout, deadline - now)
                    self._connector.ping(entry, max(0.05, timeout))
                else:
                    self._connector.reset(entry)
                    self.count("resets")
                return True
            except self._driver.Error as exc:
                if check is Check.PING:
                    self.count("ping_failures")
                reason = f"{check.value} failed: {_describe(exc)}"
        self.count("replaced")
        logger.info("%s: replacing connection %d: %s", self._name, entry.session_id, reason)
        self._custody.retire(entry, lease, reason)
        return False

    def _wait(self, lease: Lease, deadline: float, checkout_started: float) -> Step | None:
        """Block until ``lease`` is granted a connection or a slot, or its deadline passes
        (:class:`PoolTimeout`). ``None``: look again (growth may be possible now)."""
        assert lease.wake is not None
        signal = lease.wake.signal
        started = time.monotonic()
        while True:
            now = time.monotonic()
            wake = deadline - now
            state = self._state  # read as hints: decided under the lock below
            if state.blocked_until and state.size < self._config.max_size:
                # Queued with room to grow: growth is blocked (a cap or an outage). Wake
                # when it unblocks (at once if it already has) to retry the connect.
                wake = min(wake, state.blocked_until - now)
            notified = signal.acquire(timeout=max(0.0, wake))
            with self._lock:
                if not notified:
                    self._state.stop_waiting(lease)
                step = self._state.granted(lease)
                timed_out = step is None and time.monotonic() >= deadline
                if timed_out:
                    self._state.counters.timeouts += 1
            if timed_out:
                raise self._timeout_error(time.monotonic() - checkout_started)
            if step is not None or not notified:
                self._wait_times.append(time.monotonic() - started)
                return step

    def _open(self, lease: Lease, deadline: float, checkout_started: float) -> Entry | None:
        """Open a connection in ``lease``'s reserved slot. ``None`` after a cap or an outage,
        which blocks growth for a jittered backoff instead of failing the caller (until
        the deadline); other errors (wrong password, unknown database) raise at once."""
        try:
            entry = self._connector.open(deadline)
        except self._driver.Error as exc:
            kind = classify(exc, self._driver, self._config.error_kinds)
            with self._lock:
                self._state.open_failed(
                    lease,
                    _describe(exc),
                    self._driver.error_code(exc),
                    wait_out=kind in _WAIT_OUT,
                    capacity=kind is ErrorKind.CAPACITY,
                    now=time.monotonic(),
                )
            if kind not in _WAIT_OUT:
                raise
            # A full fleet budget is the budget working: not worth a warning per attempt.
            logger.log(
                logging.DEBUG if isinstance(exc, BudgetFull) else logging.WARNING,
                "%s: connect failed (%s), backing off %.2fs",
                self._name,
                _describe(exc),
                self._state.backoff.delay,
            )
            if time.monotonic() >= deadline:
                with self._lock:
                    self._state.counters.timeouts += 1
                raise self._timeout_error(time.monotonic() - checkout_started) from exc
            return None
        try:
            with self._lock:
                self._state.opened(lease, entry, time.monotonic())
        except BaseException:
            if lease.entry is not entry:  # never registered: nobody else knows of it
                self._connector.close(entry)
            raise
        logger.debug("%s: opened connection %d", self._name, entry.session_id)
        self._housekeeper.ensure_started(self)
        return entry

    # ------------------------------------------------------------------ give-back
    # (these, with count, evict_all and statement_timeout, are the
    # tether.lender.Lender interface the connections handed out use)

    def give_back(self, lease: Lease) -> None:
        """Take back the connection ``lease`` holds: cleaned only if the server says the
        session is dirty, then to the first waiter or idle. Idempotent."""
        entry = lease.entry
        if entry is None or entry.holder is not lease:
            return
        now = time.monotonic()
        self._hold_times.append(now - lease.since)
        try:
            if entry.leak_reported:
                entry.leak_reported = False
                logger.warning(
                    "%s: connection %d reported as a possible leak came back after %.1fs",
                    self._name,
                    entry.session_id,
                    now - lease.since,
                )
            read = entry.status
            bits = read() if read is not None and entry.raw is not None else None
            plan = self._rules.release(entry, bits)
            if plan is not Cleanup.NONE and not isinstance(plan, str):
                plan = self._clean(entry, plan)
            if isinstance(plan, str):
                reason: str | None = plan
            else:
                with self._lock:
                    reason = self._state.checkin(entry, time.monotonic())
            if reason is not None:
                self._custody.retire(entry, lease, reason)
        except BaseException:
            self._custody.retire(entry, lease, "give-back interrupted")
            self.count("interrupted")
            raise

    def _clean(self, entry: Entry, plan: Cleanup) -> Cleanup | str:
        """Carry out a give-back's cleanup; returns why to close the connection if the
        server did not go along."""
        try:
            self._connector.clean(entry, plan)
        except self._driver.Error as exc:
            logger.info("%s: cleanup of %d failed: %s", self._name, entry.session_id, exc)
            return f"cleanup failed: {_describe(exc)}"
        self.count("resets" if plan & Cleanup.RESET else "rollbacks")
        return plan

    def renew(self, lease: Lease) -> Entry:
        """Replace ``lease``'s lost connection with a healthy one, within the pool's
        timeout (the slot is given up and taken again, in turn with any waiters): a new
        connection where the bound allows (one opened after whatever lost the last one is
        safe from it), else an idle one pinged first."""
        old = lease.entry
        if old is not None:
            self._custody.retire(old, lease, "connection lost")
        try:
            return self._acquire(lease, time.monotonic() + self._config.timeout, verify=True)
        except BaseException:
            self._custody.abandon(lease, "check-out interrupted")
            raise

    def count(self, event: str) -> None:
        with self._lock:
            counters = self._state.counters
            setattr(counters, event, getattr(counters, event) + 1)

    def evict_all(self, reason: str) -> None:
        self._custody.retire_idle(lambda entry: reason, self._state.expire_all)
        logger.warning("%s: evicted every connection: %s", self._name, reason)

    def statement_timeout(self, query: str | bytes, timeout: float) -> str | bytes:
        server = self._connector.server
        return with_statement_timeout(query, timeout, mariadb=server is None or server.mariadb)

    # ------------------------------------------------------------------ errors

    def _closed_error(self) -> BaseException:
        return driver_error(
            PoolClosed, self._driver.InterfaceError, 0, f"{self._name}: the pool is closed"
        )

    def _timeout_error(self, waited: float) -> BaseException:
        with self._lock:
            report = self._state.report(time.monotonic())
            errno = self._state.last_connect_errno
        message = f"{self._name}: no connection within {waited:.1f}s from {self._dsn.redacted()}"
        return driver_error(
            PoolTimeout, self._driver.OperationalError, errno or 0, f"{message}: {report}"
        )

    # ------------------------------------------------------------------ processes

    def _after_fork_in_child(self) -> None:
        """In a forked child: forget the parent's connections without a byte on their
        sockets; start over with a fresh lock, bookkeeping and background work."""
        old = self._state
        for entry in old.forget_all():
            entry.holder = None  # proxies held across the fork refuse to be used
            self._connector.abandon(entry)
        fresh = PoolState(
            max_size=self._config.max_size,
            min_size=self._config.min_size,
            selection=self.selection(),
        )
        fresh.closed = old.closed
        self._start(fresh)

    def _close_at_exit(self) -> None:
        """At interpreter exit: close without waiting on anything for long."""
        self.close(timeout=0.5)


def _prepare_to_wait(lease: Lease) -> None:
    """Give a queued lease its wake-up: a lock the waiter blocks on, released by whoever
    grants it a connection or a slot. Set under the pool's lock, in the same hold that
    queued the lease, so no grant can come before it."""
    signal = threading.Lock()
    signal.acquire()
    lease.wake = Wake(signal, signal.release)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
