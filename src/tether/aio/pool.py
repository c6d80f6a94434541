"""The asyncio pool: :class:`tether.Pool`'s guarantees, driven by the event loop.

The decisions are the threaded pool's, from the same code: the bookkeeping
(:class:`tether.state.PoolState`), what a connection needs before it is handed out and after it
comes back (:class:`tether.policy.Rules`), lifetimes, backoff, what a lost connection means
(:func:`tether.outcomes.failure_outcome`). What differs is the waiting (a queued check-out
awaits its lease's future) and the I/O (coroutines through :mod:`tether.aio.drivers`).

No lock: every piece of bookkeeping runs between two awaits, so nothing else on the loop can
see it half done. The threaded pool's order still holds: decide, then await the I/O; and every
check-out is a :class:`tether.entry.Lease`, so whatever stops it (a cancellation, a timeout, an
error) hands the lease to :meth:`PoolState.abandon`, which takes back what was granted.
Retiring a connection never awaits (the transport is closed at once, ``QUIT`` flushed by the
transport itself), so a cancellation cannot leave a session open on the server.

A pool belongs to the event loop it is first used in; a forked child forgets its parent's
connections without a byte on their sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import sys
import time
import traceback
import weakref
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar, Unpack

from .. import lifecycle
from ..budget.gate import BudgetFull
from ..classify import ErrorKind, classify
from ..config import Lifetimes, PoolConfig, PoolOptions, check_timeout
from ..connector import ServerLimits
from ..drivers.sockets import readable
from ..dsn import DSN, parse_dsn
from ..entry import Entry, Lease, Round
from ..errors import PoolClosed, PoolTimeout, driver_error
from ..policy import Check, Cleanup, Rules
from ..selection import Shared
from ..state import PoolState, Step
from ..statements import with_statement_timeout
from ..stats import PoolStats, samples
from .checkout import Checkout, TaskBorrower, expire, prepare_to_wait
from .connection import AsyncConnection
from .connector import AsyncConnector
from .drivers import AsyncDriver, resolve_async_driver
from .maintenance import AsyncHousekeeper
from .transactions import run_transaction, transaction

__all__ = ["AsyncPool"]

logger = logging.getLogger("tether")

T = TypeVar("T")

# Connect errors that are waited out (backoff, retry until the deadline) rather than raised.
_WAIT_OUT = (ErrorKind.CAPACITY, ErrorKind.DISCONNECT)

_pool_counter = itertools.count(1)


class AsyncPool:
    """A bounded pool of MySQL/MariaDB connections for asyncio (asyncmy or aiomysql).

    ``async with pool.connection() as conn:`` hands out a connection that goes back when the
    block ends, also when it raises or is cancelled. Options are :class:`tether.Pool`'s
    (keyword-only, seconds; see :class:`tether.config.PoolConfig`).
    """

    def __init__(
        self,
        dsn: str | DSN | None = None,
        *,
        driver: str | AsyncDriver | None = None,
        **options: Unpack[PoolOptions],
    ) -> None:
        self._dsn = parse_dsn(dsn)
        self._driver = resolve_async_driver(driver, self._dsn)
        self._config = PoolConfig.from_options(options)
        self._driver.check_connect_args(self._config.connect_args)
        self._name = self._config.name or f"async-pool-{next(_pool_counter)}"
        self._connector = AsyncConnector(
            name=self._name, driver=self._driver, dsn=self._dsn, config=self._config
        )
        self._rules = Rules(
            autocommit=self._config.autocommit,
            keeps_sessions=False,
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
        """The bookkeeping and background work of this process (again in a forked child)."""
        config = self._config
        self._state = state or PoolState(
            max_size=config.max_size, min_size=config.min_size, selection=Shared()
        )
        self._pid = os.getpid()
        #: The event loop this pool belongs to: the one it is first used in.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._housekeeper = AsyncHousekeeper(
            name=self._name, state=self._state, connector=self._connector, config=config
        )

    def _bind(self) -> asyncio.AbstractEventLoop:
        """The running loop, which must be this pool's (bound on first use)."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            if os.getpid() != self._pid:
                lifecycle.after_fork_without_hooks(self)
            if self._loop is None:
                self._loop = loop
                if self._config.min_size:
                    self._housekeeper.ensure_started(self)
            elif loop is not self._loop:
                raise RuntimeError(
                    f"{self._name} belongs to another event loop: an AsyncPool is used from"
                    " the loop it was first used in (create one per loop, e.g. in the"
                    " application's lifespan)"
                )
        return loop

    # ------------------------------------------------------------------ public API

    def connection(self, timeout: float | None = None) -> Checkout:
        """Check out a connection: ``async with pool.connection() as conn:`` (or
        ``conn = await pool.connection()``, then ``await conn.close()``).

        Raises :class:`tether.PoolTimeout` when none can be had within ``timeout`` (default:
        the pool's), :class:`tether.PoolClosed` after :meth:`close`, the driver's error at
        once for wrong credentials.
        """
        wait = self._config.timeout if timeout is None else check_timeout(timeout)
        caller = sys._getframe(1)
        if self._config.leak_timeout is None:
            origin: Any = (caller.f_code, caller.f_lasti)
        else:
            origin = traceback.extract_stack(caller, limit=12)
        return Checkout(partial(self._checkout, wait, origin))

    async def _checkout(self, wait: float, origin: Any) -> AsyncConnection:
        loop = self._bind()
        lease = Lease(TaskBorrower(asyncio.current_task(loop)))
        lease.origin = origin
        try:
            await self._acquire(lease, time.monotonic() + wait)
            conn = AsyncConnection(self, lease)
            lease.proxy = weakref.ref(conn)
            return conn
        except BaseException:
            self._abandon(lease)
            raise

    def transaction(
        self, timeout: float | None = None
    ) -> contextlib.AbstractAsyncContextManager[AsyncConnection]:
        """A connection inside a transaction: committed when the block ends, rolled back
        when it raises (or is cancelled)."""
        return transaction(self, timeout)

    async def run_transaction(
        self,
        fn: Callable[[AsyncConnection], Awaitable[T]],
        *,
        attempts: int = 3,
        timeout: float | None = None,
    ) -> T:
        """Run ``await fn(conn)`` in a transaction, retrying all of it where that is safe (see
        :meth:`tether.Pool.run_transaction`)."""
        return await run_transaction(self, fn, attempts=attempts, timeout=timeout)

    async def open(self) -> None:
        """Bind the pool to the running loop and open ``min_size`` connections now (else
        they are opened by maintenance, and others on demand)."""
        self._bind()
        await self._housekeeper.maintain()

    def stats(self) -> PoolStats:
        """A snapshot of counters, gauges and wait/hold time percentiles."""
        server = self._connector.server
        return self._state.snapshot(
            name=self._name,
            wait_times=self._wait_times,
            hold_times=self._hold_times,
            server=server.as_dict() if server else {},
        )

    async def close(self, timeout: float = 5.0) -> None:
        """Close the pool: idle connections now, checked-out ones when they come back.
        Waiting tasks get :class:`tether.PoolClosed`. Idempotent."""
        first = not self._state.closed
        self._close_now()
        if first:
            await self._housekeeper.stop(timeout)
        await self._connector.settle(timeout)
        if first:
            logger.info("%s: closed", self._name)

    def _close_now(self) -> None:
        """Everything of closing that needs no await."""
        work = Round()
        try:
            self._state.close(self._closed_error)
            taken = self._state.take_idle(time.monotonic(), lambda e: "pool closed", work.lease)
            for entry, reason in taken:
                self._retire(entry, entry.holder, reason)
        except BaseException:
            self._give_up(work)
            raise

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
    def driver(self) -> AsyncDriver:
        return self._driver

    @property
    def config(self) -> PoolConfig:
        return self._config

    @property
    def lifetimes(self) -> Lifetimes:
        return self._connector.lifetimes

    @property
    def server(self) -> ServerLimits | None:
        return self._connector.server

    async def __aenter__(self) -> AsyncPool:
        self._bind()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = self._state
        return (
            f"<{type(self).__name__} {self._name!r} {self._dsn.redacted()}"
            f" {'closed' if state.closed else 'open'} size={state.size}/{self._config.max_size}"
            f" idle={len(state.idle)} in_use={state.in_use} waiting={len(state.waiters)}>"
        )

    # ------------------------------------------------------------------ check-out

    async def _acquire(self, lease: Lease, deadline: float, *, verify: bool = False) -> Entry:
        """Grant ``lease`` a healthy connection by ``deadline``; the caller abandons the
        lease if this raises (or is cancelled). ``verify`` (a replay): a new connection is
        opened where the bound allows, else an idle one is pinged even if it would be trusted
        or polled (see :meth:`renew`)."""
        state = self._state
        started = time.monotonic()  # for a timeout's message: the whole check-out's wait
        while True:
            step: Step | None = state.checkout(lease, None, time.monotonic(), fresh=verify)
            if step is Step.WAIT:
                prepare_to_wait(lease)
                self._take_back_collected()  # may free a slot for this very wait
                step = await self._wait(lease, deadline, started)
            if step is Step.TAKE:
                entry = lease.entry
                assert entry is not None
                if await self._usable(lease, entry, deadline, verify):
                    break
            elif step is Step.OPEN:
                opened = await self._open(lease, deadline, started)
                if opened is not None:
                    entry = opened
                    break
            elif step is Step.CLOSED:
                raise self._closed_error()
        entry.owner = lease.ident
        return entry

    async def _usable(self, lease: Lease, entry: Entry, deadline: float, verify: bool) -> bool:
        """The health check of a connection about to be handed out (as the threaded pool's:
        nothing, a transport check, a ping or a reset; a ping at least with ``verify``). A
        dead one is retired, ``False``."""
        now = time.monotonic()
        idle_limit = self._connector.lifetimes.idle_limit
        check = self._rules.check(entry, now, lease.ident, self._pid, idle_limit)
        if verify and (check is Check.TRUST or check is Check.POLL):
            check = Check.PING
        if check is Check.TRUST:
            return True
        if not isinstance(check, Check):
            reason = check
        elif self._driver.broken(entry.raw) or readable(entry.poller):
            reason = "closed by the server"
        elif check is Check.POLL:
            return True
        else:
            try:
                if check is Check.PING:
                    self.count("pings")
                    timeout = min(self._config.ping_timeout, deadline - now)
                    await self._connector.ping(entry, max(0.05, timeout))
                else:
                    await self._connector.reset(entry)
                    self.count("resets")
                return True
            except self._driver.Error as exc:
                if check is Check.PING:
                    self.count("ping_failures")
                reason = f"{check.value} failed: {_describe(exc)}"
        self.count("replaced")
        logger.info("%s: replacing connection %d: %s", self._name, entry.session_id, reason)
        self._retire(entry, lease, reason)
        return False

    async def _wait(self, lease: Lease, deadline: float, checkout_started: float) -> Step | None:
        """Wait until ``lease`` is granted a connection or a slot, or its deadline passes
        (:class:`PoolTimeout`). ``None``: look again (growth may be possible now)."""
        assert lease.wake is not None
        future: asyncio.Future[bool] = lease.wake.signal
        state = self._state
        started = time.monotonic()
        wake = deadline - started
        if state.blocked_until and state.size < self._config.max_size:
            # Queued with room to grow: growth is blocked (a cap or an outage). Wake when it
            # unblocks to retry the connect.
            wake = min(wake, state.blocked_until - started)
        timer = future.get_loop().call_later(max(0.0, wake), expire, future)
        try:
            notified = await future
        finally:
            timer.cancel()
        if not notified:
            state.stop_waiting(lease)
        step = state.granted(lease)
        if step is None and time.monotonic() >= deadline:
            state.counters.timeouts += 1
            raise self._timeout_error(time.monotonic() - checkout_started)
        self._wait_times.append(time.monotonic() - started)
        return step

    async def _open(self, lease: Lease, deadline: float, checkout_started: float) -> Entry | None:
        """Open a connection in ``lease``'s reserved slot. ``None`` after a cap or an outage
        (growth blocked for a jittered backoff; the caller waits until its deadline); other
        errors (wrong password, unknown database) raise at once."""
        try:
            entry = await self._connector.open(deadline)
        except self._driver.Error as exc:
            kind = classify(exc, self._driver, self._config.error_kinds)
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
                self._state.counters.timeouts += 1
                raise self._timeout_error(time.monotonic() - checkout_started) from exc
            return None
        self._state.opened(lease, entry, time.monotonic())
        logger.debug("%s: opened connection %d", self._name, entry.session_id)
        self._housekeeper.ensure_started(self)
        return entry

    def _abandon(self, lease: Lease) -> None:
        """A check-out (or renewal) gave up: take back what was granted to ``lease``."""
        entry = self._state.abandon(lease, time.monotonic())
        if entry is not None:
            self._retire(entry, lease, "check-out interrupted")

    def _give_up(self, work: Round) -> None:
        for lease in work.leases:
            self._abandon(lease)

    # ------------------------------------------------------------------ give-back

    async def give_back(self, lease: Lease) -> None:
        """Take back the connection ``lease`` holds: cleaned only if the server says the
        session is dirty, then to the first waiter or idle. Idempotent. Cut short (a
        cancellation during the cleanup), the connection is closed, its slot freed."""
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
                plan = await self._clean(entry, plan)
            if isinstance(plan, str):
                reason: str | None = plan
            else:
                reason = self._state.checkin(entry, time.monotonic())
            if reason is not None:
                self._retire(entry, lease, reason)
        except BaseException:
            self._retire(entry, lease, "give-back interrupted")
            self.count("interrupted")
            raise

    async def _clean(self, entry: Entry, plan: Cleanup) -> Cleanup | str:
        try:
            await self._connector.clean(entry, plan)
        except self._driver.Error as exc:
            logger.info("%s: cleanup of %d failed: %s", self._name, entry.session_id, exc)
            return f"cleanup failed: {_describe(exc)}"
        self.count("resets" if plan & Cleanup.RESET else "rollbacks")
        return plan

    async def renew(self, lease: Lease) -> Entry:
        """Replace ``lease``'s lost connection with a healthy one, within the pool's
        timeout (the slot is given up and taken again, in turn with any waiters), as the
        threaded pool does: a new connection where the bound allows, else an idle one pinged
        first. Whatever just cost the caller its connection (a KILL of every session, a
        restart, a network blip) may have cost the idle ones theirs, or be about to, and
        their sockets may not say so yet; the one replay a read gets must not be spent on
        one of them."""
        old = lease.entry
        if old is not None:
            self._retire(old, lease, "connection lost")
        try:
            return await self._acquire(lease, time.monotonic() + self._config.timeout, verify=True)
        except BaseException:
            self._abandon(lease)
            raise

    def _retire(self, entry: Entry, holder: Lease | None, reason: str) -> None:
        """Close ``entry`` and take it out of the pool, if ``holder`` still holds it. Never
        awaits: nothing can cut it short."""
        if holder is None or entry.holder is not holder:
            return
        entry.broken = True
        entry.fd = -1
        self._connector.close(entry)
        self._state.unregister(entry, reason, time.monotonic())

    def count(self, event: str) -> None:
        counters = self._state.counters
        setattr(counters, event, getattr(counters, event) + 1)

    def evict_all(self, reason: str) -> None:
        work = Round()
        try:
            self._state.expire_all()
            taken = self._state.take_idle(time.monotonic(), lambda entry: reason, work.lease)
            for entry, why in taken:
                self._retire(entry, entry.holder, why)
        except BaseException:
            self._give_up(work)
            raise
        logger.warning("%s: evicted every connection: %s", self._name, reason)

    def _take_back_collected(self) -> None:
        """Connections whose proxy was garbage-collected without being given back are
        closed: their state is unknown, maybe mid-transaction."""
        for entry in self._state.collect():
            holder = entry.holder
            logger.warning(
                "%s: connection %d was garbage-collected without being returned; acquired at %s",
                self._name,
                entry.session_id,
                holder.where() if holder is not None else "unknown",
            )
            self._retire(entry, holder, "garbage-collected while checked out")

    def statement_timeout(self, query: str | bytes, timeout: float) -> str | bytes:
        server = self._connector.server
        return with_statement_timeout(query, timeout, mariadb=server is None or server.mariadb)

    # ------------------------------------------------------------------ errors

    def _closed_error(self) -> BaseException:
        return driver_error(
            PoolClosed, self._driver.InterfaceError, 0, f"{self._name}: the pool is closed"
        )

    def _timeout_error(self, waited: float) -> BaseException:
        state = self._state
        message = f"{self._name}: no connection within {waited:.1f}s from {self._dsn.redacted()}"
        report = state.report(time.monotonic(), holder="task")
        return driver_error(
            PoolTimeout,
            self._driver.OperationalError,
            state.last_connect_errno or 0,
            f"{message}: {report}",
        )

    # ------------------------------------------------------------------ processes

    def _after_fork_in_child(self) -> None:
        """In a forked child: forget the parent's connections without a byte on their
        sockets and without touching the parent's event loop; start over unbound."""
        old = self._state
        for entry in old.forget_all():
            entry.holder = None  # proxies held across the fork refuse to be used
            self._connector.abandon(entry)
        self._housekeeper.forget()
        fresh = PoolState(
            max_size=self._config.max_size, min_size=self._config.min_size, selection=Shared()
        )
        fresh.closed = old.closed
        self._start(fresh)

    def _close_at_exit(self) -> None:
        """At interpreter exit: close what is idle without awaiting anything."""
        self._close_now()


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
