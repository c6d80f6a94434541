"""An asyncio pool's background work, as two tasks on its loop (what
:mod:`tether.maintenance` does on two threads for the threaded pool).

Maintenance (every second, sooner under a short ``wait_timeout``): retire expired,
surplus-idle and dead idle connections, ping idle ones before the server would drop them,
refill ``min_size``, report leaks, take back connections of garbage-collected proxies. The
watchdog looks at calls stuck waiting on the server and breaks those whose server or session is
gone (:func:`tether.watchdog.session_verdict`, asked through a short-lived probe connection).

The tasks hold the pool only weakly and stop when it is closed or collected; a failing round is
logged and the task lives on. A round cut short (the task cancelled at close, mid-ping) gives
back what it took: a connection it was talking to is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from ..budget.upkeep import upkeep_async
from ..classify import ErrorKind, classify
from ..config import PoolConfig
from ..drivers.sockets import break_socket, readable
from ..entry import Entry, Lease, Round
from ..state import PoolState
from ..watchdog import session_verdict
from .connector import AsyncConnector

__all__ = ["AsyncHousekeeper"]

logger = logging.getLogger("tether")

_KEEPALIVE = "keepalive"


class AsyncHousekeeper:
    """The background work of one asyncio pool."""

    def __init__(
        self, *, name: str, state: PoolState, connector: AsyncConnector, config: PoolConfig
    ) -> None:
        self.name = name
        self.state = state
        self.connector = connector
        self.config = config
        self._tasks: list[asyncio.Task[None]] = []
        self._running = False
        self._stopped = False

    # ------------------------------------------------------------------ tasks

    def ensure_started(self, pool: object) -> None:
        """Start the tasks on the running loop, once (they watch ``pool`` weakly)."""
        if self._running or self._stopped:
            return
        self._running = True
        ref = weakref.ref(pool)
        self._spawn(ref, "maintenance", self._maintenance_interval, self.maintain)
        if self.config.watchdog is not None:
            every = min(0.5, self.config.watchdog / 4)
            self._spawn(ref, "watchdog", lambda: every, self.watch)

    def _spawn(
        self,
        ref: weakref.ref[Any],
        what: str,
        interval: Callable[[], float],
        work: Callable[[], Awaitable[None]],
    ) -> None:
        task = asyncio.get_running_loop().create_task(
            _background(ref, interval, work, f"{self.name}: {what}", self._orphaned),
            name=f"tether-{what}-{self.name}",
        )
        self._tasks.append(task)

    def _maintenance_interval(self) -> float:
        limit = self.connector.lifetimes.idle_limit
        interval = self.config.maintenance_interval
        return interval if limit is None else min(interval, max(0.1, limit / 4))

    async def stop(self, timeout: float) -> None:
        """Cancel the tasks and wait for them, at most ``timeout`` seconds."""
        self._stopped = True
        tasks = [t for t in self._tasks if not t.done()]
        current = asyncio.current_task()
        for task in tasks:
            if task is not current:
                task.cancel()
        waiting = [t for t in tasks if t is not current]
        if waiting:
            await asyncio.wait(waiting, timeout=timeout)
        if self.connector.gate is not None:
            await asyncio.to_thread(self.connector.gate.leave)

    def forget(self) -> None:
        """In a forked child: the tasks are the parent's loop's; drop them untouched."""
        self._tasks = []
        self._running = False

    def _orphaned(self) -> None:
        """The pool was garbage-collected without being closed: close what is idle."""
        work = Round()
        try:
            self.state.close(lambda: RuntimeError("pool collected"))
            taken = self.state.take_idle(time.monotonic(), lambda e: "pool closed", work.lease)
            for entry, reason in taken:
                self._retire(entry, reason)
        except BaseException:
            self._give_up(work)
            raise

    # ------------------------------------------------------------------ maintenance

    async def maintain(self) -> None:
        """One round of maintenance. Cut short anywhere, it gives back what it took."""
        work = Round()
        try:
            await self._maintain(work)
        except BaseException:
            self._give_up(work)
            raise

    async def _maintain(self, work: Round) -> None:
        state, config = self.state, self.config
        lifetimes = self.connector.lifetimes
        driver = self.connector.driver
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
            if driver.broken(entry.raw) or readable(entry.poller):
                return "closed by the server"
            if lifetimes.keepalive is not None and now - entry.last_used >= lifetimes.keepalive:
                return _KEEPALIVE
            return None

        if state.closed:
            return
        collected = state.collect()
        taken = state.take_idle(now, retire, work.lease)
        leaks = state.held_too_long(now, config.leak_timeout)
        refills = state.reserve_refill(work.lease, now)
        for entry in collected:
            holder = entry.holder
            logger.warning(
                "%s: connection %d was garbage-collected without being returned; acquired at %s",
                self.name,
                entry.session_id,
                holder.where() if holder is not None else "unknown",
            )
            self._retire(entry, "garbage-collected while checked out")
        for entry, reason in taken:
            if reason != _KEEPALIVE:
                self._retire(entry, reason)
        for entry, reason in taken:
            if reason == _KEEPALIVE:
                await self._keepalive(entry)
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
            if not await self._refill(lease):
                break  # backing off: the slots left are given back below
        self._give_up(work)  # what is still held or reserved: slots of failed refills
        gate = self.connector.gate
        if gate is not None:  # a fleet-wide budget: renew, give back what others wait for
            await upkeep_async(state, gate, config.min_size, work, self._retire)

    async def _keepalive(self, entry: Entry) -> None:
        try:
            await self.connector.ping(entry, self.config.ping_timeout)
        except self.connector.driver.Error as exc:
            logger.debug("%s: keepalive of %d failed: %s", self.name, entry.session_id, exc)
            self.state.counters.pings += 1
            self.state.counters.ping_failures += 1
            self._retire(entry, "no answer to keepalive ping")
            return
        self.state.counters.pings += 1
        reason = self.state.checkin(entry, time.monotonic())
        if reason is not None:
            self._retire(entry, reason)

    async def _refill(self, lease: Lease) -> bool:
        """Open a connection in a slot reserved for ``min_size``; ``False`` if it failed."""
        driver = self.connector.driver
        try:
            entry = await self.connector.open(time.monotonic() + self.config.connect_timeout)
        except driver.Error as exc:
            kind = classify(exc, driver, self.config.error_kinds)
            self.state.open_failed(
                lease,
                f"{type(exc).__name__}: {exc}",
                driver.error_code(exc),
                wait_out=kind in (ErrorKind.CAPACITY, ErrorKind.DISCONNECT),
                capacity=kind is ErrorKind.CAPACITY,
                now=time.monotonic(),
            )
            logger.warning("%s: refill failed: %s: %s", self.name, type(exc).__name__, exc)
            return False
        self.state.opened(lease, entry, time.monotonic())
        reason = self.state.checkin(entry, time.monotonic())
        if reason is not None:
            self._retire(entry, reason)
        return True

    def _retire(self, entry: Entry, reason: str) -> None:
        """Close a connection this round holds (never awaits), then take it out."""
        entry.broken = True
        entry.fd = -1
        self.connector.close(entry)
        self.state.unregister(entry, reason, time.monotonic())

    def _give_up(self, work: Round) -> None:
        """Take back what the round's leases still hold or reserve."""
        for lease in work.leases:
            entry = self.state.abandon(lease, time.monotonic())
            if entry is not None:
                self._retire(entry, "maintenance interrupted")

    # ------------------------------------------------------------------ watchdog

    async def watch(self) -> None:
        """Break calls that have waited on the server for ``watchdog`` seconds when the
        server, or their session, is gone."""
        limit = self.config.watchdog
        if limit is None or self.state.closed:
            return
        now = time.monotonic()
        stuck = [
            (entry, entry.in_flight)
            for entry in self.state.entries
            if entry.in_flight and now - entry.in_flight >= limit
        ]
        if not stuck:
            return
        verdicts = await self._probe([e.session_id for e, _ in stuck], max(0.5, min(2.0, limit)))
        for entry, since in stuck:
            reason = verdicts(entry.session_id)
            if reason is None:
                continue
            # Still the same call on the same connection (checked after the probe's awaits).
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

    async def _probe(self, session_ids: list[int], timeout: float) -> Callable[[int], str | None]:
        """Ask the server, on a short-lived connection bounded by ``timeout``, about the
        given sessions (see :func:`tether.watchdog.probe_sessions`)."""
        connector = self.connector
        driver = connector.driver
        try:
            raw = await driver.connect(
                connector.dsn,
                connect_timeout=timeout,
                autocommit=True,
                connect_args=self.config.connect_args,
            )
        except Exception as exc:
            if classify(exc, driver, self.config.error_kinds) is ErrorKind.CAPACITY:
                return lambda _sid: None  # the server answers; can't see sessions
            reason = f"server does not answer ({type(exc).__name__}: {exc})"
            return lambda _sid: reason
        try:
            ids = ",".join(str(int(sid)) for sid in session_ids)
            async with asyncio.timeout(timeout):
                rows = await driver.execute(
                    raw,
                    "SELECT ID, COMMAND, TIME FROM information_schema.PROCESSLIST"
                    f" WHERE ID IN ({ids})",
                )
        except Exception as exc:
            reason = f"server does not answer ({type(exc).__name__}: {exc})"
            return lambda _sid: reason
        finally:
            driver.close(raw)
        found = {int(r[0]): (str(r[1]), float(r[2] or 0)) for r in rows}
        return lambda sid: session_verdict(found.get(sid))


async def _background(
    pool_ref: weakref.ref[Any],
    interval: Callable[[], float],
    work: Callable[[], Awaitable[None]],
    what: str,
    orphaned: Callable[[], None],
) -> None:
    """Run ``await work()`` every ``interval()`` seconds until cancelled or the pool is
    collected. A failing round is logged and the loop lives on."""
    while True:
        await asyncio.sleep(interval())
        if pool_ref() is None:
            with contextlib.suppress(Exception):
                orphaned()
            return
        try:
            await work()
        except Exception:
            logger.exception("%s failed", what)
