"""An asyncio check-out from the outside: who it is for (:class:`TaskBorrower`), what
``pool.connection()`` returns (:class:`Checkout`), and how a queued check-out waits for its
lease to be granted (a future, resolved by whoever grants it or by its timer)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Generator
from typing import Any

from ..entry import Lease, Wake
from .connection import AsyncConnection

__all__ = ["Checkout", "TaskBorrower", "expire", "prepare_to_wait"]


class TaskBorrower:
    """Who a check-out is for: the task, named in messages (a :class:`tether.entry.Borrower`)."""

    __slots__ = ("ident", "task")

    def __init__(self, task: asyncio.Task[Any] | None) -> None:
        self.task = task
        self.ident = id(task) if task is not None else id(self)

    @property
    def name(self) -> str:
        return self.task.get_name() if self.task is not None else "?"


class Checkout:
    """What :meth:`tether.AsyncPool.connection` returns: ``async with`` it, or ``await`` it."""

    __slots__ = ("_conn", "_start")

    def __init__(self, start: Callable[[], Awaitable[AsyncConnection]]) -> None:
        self._start = start  # the check-out itself, run when awaited or entered
        self._conn: AsyncConnection | None = None

    async def __aenter__(self) -> AsyncConnection:
        self._conn = await self._start()
        return self._conn

    async def __aexit__(self, *exc: object) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and conn._lease is not None:
            await conn.close()

    def __await__(self) -> Generator[Any, None, AsyncConnection]:
        return self._start().__await__()


def prepare_to_wait(lease: Lease) -> None:
    """Give a queued lease its wake-up: a future resolved ``True`` by whoever grants it a
    connection or a slot (``False``: its timer ran out first)."""
    future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def notify() -> None:
        if not future.done():
            future.set_result(True)

    lease.wake = Wake(future, notify)


def expire(future: asyncio.Future[bool]) -> None:
    if not future.done():
        future.set_result(False)
