"""Cancel a task at one chosen await point, every point in turn.

:func:`count_points` runs a coroutine in the current task and counts the times it suspends
(every await that gives the loop control: waiting for a reply of the fake driver, for a
connection, for a timer). :func:`cancel_at` runs it again and, at the n-th suspension, cancels
the task the way ``task.cancel()`` and ``asyncio.timeout()`` do: the future it waits on is
cancelled and ``CancelledError`` is thrown in at that very await. Only the running task is
counted; other tasks (a holder giving a connection back, maintenance) run as they would.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Awaitable, Callable, Coroutine, Generator
from pathlib import Path
from typing import Any


class _Counter:
    def __init__(self, at: int | None) -> None:
        self.at = at
        self.count = 0
        self.fired: str | None = None


def _innermost(coro: Any) -> str:
    """Where ``coro`` is suspended: the innermost frame in tether or the fake driver."""
    where = "?"
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            name = Path(frame.f_code.co_filename)
            if "tether" in name.parts or name.name == "asyncfake.py":
                where = f"{name.name}:{frame.f_lineno}"
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return where


@types.coroutine
def _counted(coro: Coroutine[Any, Any, Any], counter: _Counter) -> Generator[Any, Any, Any]:
    send: Any = None
    throw: BaseException | None = None
    while True:
        try:
            yielded = coro.send(send) if throw is None else coro.throw(throw)
        except StopIteration as stop:
            return stop.value
        counter.count += 1
        if counter.count == counter.at:
            counter.fired = _innermost(coro)
            task = asyncio.current_task()
            assert task is not None
            task.cancel()  # lands on the await below, as a real cancellation would
        try:
            send, throw = (yield yielded), None
        except BaseException as exc:
            send, throw = None, exc


async def count_points(action: Callable[[], Awaitable[Any]]) -> int:
    """How many times ``action()`` suspends (it must not raise)."""
    counter = _Counter(None)
    await _counted(action(), counter)  # type: ignore[arg-type]
    return counter.count


async def cancel_at(action: Callable[[], Awaitable[Any]], at: int) -> tuple[str | None, str | None]:
    """Run ``action()`` cancelling the task at its ``at``-th suspension: returns what escaped
    (``None`` if nothing did) and where the cancellation landed (``None`` if the run ended
    before it)."""
    counter = _Counter(at)
    escaped: str | None = None
    task = asyncio.current_task()
    assert task is not None
    try:
        await _counted(action(), counter)  # type: ignore[arg-type]
    except asyncio.CancelledError:
        escaped = "CancelledError"
    except BaseException as exc:
        escaped = repr(exc)
    if counter.fired is not None:
        task.uncancel()  # the injected request is spent: later awaits run normally
    return escaped, counter.fired
