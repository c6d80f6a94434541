"""The I/O the asyncio pool does on a connection, apart from running its holder's statements:
open it and set its session up, learn the server's limits, ping it, put a returned session back
to its baseline, close it. The same steps as :class:`tether.connector.Connector`, as
coroutines; each leaves ``entry.in_flight`` set while it talks to the server, so one cut short
by a cancellation leaves the connection marked as being in an unknown protocol state (and it is
then closed). Closing never awaits.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import Any

from ..config import PoolConfig
from ..connector import (
    ACCOUNT_LIMIT_QUERY,
    ConnectorBase,
    ServerLimits,
    session_ended,
    watch_session,
)
from ..drivers.sockets import poller, tune_socket
from ..dsn import DSN
from ..entry import Entry
from ..policy import Cleanup, expiry
from .drivers import AsyncDriver

__all__ = ["AsyncConnector"]

logger = logging.getLogger("tether")


class AsyncConnector(ConnectorBase):
    """Opens, checks, cleans and closes one asyncio pool's connections."""

    def __init__(self, *, name: str, driver: AsyncDriver, dsn: DSN, config: PoolConfig) -> None:
        super().__init__(name=name, driver=driver, dsn=dsn, config=config)
        self.driver = driver
        #: Kills of sessions whose call was cut short, under way.
        self._kills: set[asyncio.Task[None]] = set()
        #: Budget leases being settled on worker threads.
        self._settles: set[asyncio.Future[None]] = set()

    async def open(self, deadline: float) -> Entry:
        """A new connection, its session set up, within ``deadline`` (monotonic); with a
        budget, only with a lease (taken on a worker thread: the loop never waits on Redis),
        which the connection then holds."""
        token = None if self.gate is None else await asyncio.to_thread(self._take_lease)
        try:
            return await self._open(deadline, token)
        except BaseException:
            if token is not None and self.gate is not None:
                self.gate.settle(token)
            raise

    async def _open(self, deadline: float, token: Any) -> Entry:
        config, driver = self.config, self.driver
        remaining = deadline - time.monotonic()
        raw = await driver.connect(
            self.dsn,
            connect_timeout=max(0.05, min(config.connect_timeout, remaining)),
            autocommit=config.autocommit,
            connect_args=config.connect_args,
        )
        try:
            fd = driver.fileno(raw)
            tune_socket(fd)
            await self._set_up(raw)
            if self.server is None:
                row = (await driver.execute(raw, ServerLimits.QUERY))[0]
                self._adopt(ServerLimits(row))
                if self.gate is not None:
                    self._learn_cap(await self._account_limit(raw))
            now = time.monotonic()
            entry = Entry(
                raw,
                status=driver.status_reader(raw),
                fd=fd,
                poller=poller(fd),
                session_id=driver.thread_id(raw),
                pid=os.getpid(),
                now=now,
                expires=expiry(now, self.lifetimes.max_lifetime),
                cursor_class=driver.default_cursor(),
                baseline=driver.session_baseline(raw, self.dsn, self.config.connect_args),
            )
            entry.budget = token
            return entry
        except BaseException:
            driver.close(raw)
            raise

    async def _set_up(self, raw: Any) -> None:
        """Per-session set-up (see :meth:`tether.connector.Connector._set_up`)."""
        cur = self.driver.cursor(raw, None)
        try:
            await cur.execute("SET " + self._session_settings(raw))
            for statement in self.config.init_commands:
                await cur.execute(statement)
        finally:
            await cur.close()
        self.driver.clear_state_flag(raw)

    async def ping(self, entry: Entry, timeout: float) -> None:
        """A round trip with a hard timeout; raises the driver's error if it fails."""
        entry.in_flight = time.monotonic()
        await self.driver.ping(entry.raw, timeout)
        entry.in_flight = 0.0
        entry.last_used = time.monotonic()

    async def clean(self, entry: Entry, plan: Cleanup) -> None:
        """Carry out a give-back's cleanup; raises if the server does not go along (the
        caller then closes the connection)."""
        raw = entry.raw
        entry.in_flight = time.monotonic()
        if plan & Cleanup.RESET:
            await self.reset(entry)
        else:
            if plan & Cleanup.ROLLBACK:
                await raw.rollback()
            if plan & Cleanup.AUTOCOMMIT:
                await raw.autocommit(self.config.autocommit)
        entry.in_flight = 0.0
        self._note_status(entry)

    async def reset(self, entry: Entry) -> None:
        """Put the session back where opening it left it (see
        :meth:`tether.connector.Connector.reset`)."""
        raw, driver = entry.raw, self.driver
        entry.in_flight = time.monotonic()
        await driver.reset(raw)
        cur = self.driver.cursor(raw, None)
        try:
            for sql, args in entry.baseline:
                await cur.execute(sql, args or None)
            autocommit = 1 if self.config.autocommit else 0
            await cur.execute(
                f"SET {self._session_settings(raw)}, SESSION autocommit = {autocommit}"
            )
            if self.dsn.database:
                await raw.select_db(self.dsn.database)
            for statement in self.config.init_commands:
                await cur.execute(statement)
        finally:
            await cur.close()
        driver.clear_state_flag(raw)
        entry.in_flight = 0.0
        entry.dirty = False
        self._note_status(entry)

    def close(self, entry: Entry) -> None:
        """Close ``entry``'s connection without awaiting anything: politely (``QUIT``) in
        the process that opened it, without a byte on its socket in any other. Idempotent.

        A connection closed while a call was in flight (cancelled mid-query) may still have
        a statement running on the server, which keeps its session until the statement ends
        (a ``SLEEP``, a long report): the session is killed from a short-lived connection,
        on a task of the pool's own, so the caller's cancellation does not wait for it."""
        raw = entry.raw
        watch = None
        if raw is not None:
            token = None
            if entry.pid == os.getpid():
                if entry.budget is not None and not entry.in_flight:
                    # The lease is freed once the server has ended the session.
                    watch = watch_session(self.driver.fileno(raw))
                self.driver.close(raw)
                if entry.in_flight:
                    # Its session may live on until killed: the lease goes with the kill.
                    token, entry.budget = entry.budget, None
                    self._kill_later(entry.session_id, token)
            else:
                self.driver.abandon(raw)
            entry.raw = None
        if entry.budget is not None:
            token, entry.budget = entry.budget, None
            self._settle_later(token, watch)
        elif watch is not None:
            watch.close()

    def _settle_later(self, token: Any, watch: socket.socket | None = None) -> None:
        """Settle a lease once the server has ended the session, without the loop waiting
        on either: on a worker thread (at once where no loop runs, at exit)."""
        gate = self.gate
        if gate is None or token is None:
            if watch is not None:
                watch.close()
            return

        def settle() -> None:
            session_ended(watch)
            gate.settle(token)

        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            if watch is not None:
                watch.close()
            gate.settle(token)
            return
        future = loop.run_in_executor(None, settle)
        self._settles.add(future)
        future.add_done_callback(self._settles.discard)

    async def _account_limit(self, raw: Any) -> int | None:
        """The account's own ``MAX_USER_CONNECTIONS``, if it may read ``mysql.user``."""
        try:
            rows = await self.driver.execute(raw, ACCOUNT_LIMIT_QUERY)
        except self.driver.Error:
            return None
        return int(rows[0][0]) if rows else None

    def _kill_later(self, session_id: int, token: Any = None) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            # No loop (at exit): the server ends the session when the statement does.
            self._settle_later(token)
            return
        task = loop.create_task(self._kill(session_id, token), name=f"tether-kill-{session_id}")
        self._kills.add(task)
        task.add_done_callback(self._kills.discard)

    async def _kill(self, session_id: int, token: Any = None) -> None:
        try:
            await self._kill_session(session_id)
        finally:
            self._settle_later(token)

    async def _kill_session(self, session_id: int) -> None:
        driver = self.driver
        timeout = min(self.config.connect_timeout, 5.0)
        try:
            raw = await driver.connect(
                self.dsn,
                connect_timeout=timeout,
                autocommit=True,
                connect_args=self.config.connect_args,
            )
        except Exception as exc:
            logger.info("%s: could not kill session %d: %s", self.name, session_id, exc)
            return
        try:
            async with asyncio.timeout(timeout):
                await driver.execute(raw, f"KILL {int(session_id)}")
            logger.debug("%s: killed session %d (a call was cut short)", self.name, session_id)
        except Exception as exc:  # 1094: the session had already ended
            logger.debug("%s: kill of session %d: %s", self.name, session_id, exc)
        finally:
            driver.close(raw)

    async def settle(self, timeout: float) -> None:
        """Wait (at most ``timeout`` seconds) for the kills under way."""
        if self._kills:
            await asyncio.wait(list(self._kills), timeout=timeout)
        if self._settles:
            await asyncio.wait(list(self._settles), timeout=timeout)

    def abandon(self, entry: Entry) -> None:
        """Drop ``entry``'s connection without a byte on its socket."""
        if entry.raw is not None:
            self.driver.abandon(entry.raw)
        entry.raw = None
