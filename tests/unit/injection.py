"""Raise an exception at one chosen point of tether's code, every point in turn.

:func:`trace_points` runs an action under ``sys.settrace`` and counts the points it passes in
tether's modules (and the fake driver's, where a real driver's own code would be cut short):
every line, and every call into one of their functions. :func:`inject_at` runs the action again
and raises an exception at the n-th of those points, as a signal handler's exception (Ctrl-C's
``KeyboardInterrupt``, an alarm's error) may land between any two of them. Only the calling
thread is traced.

That is stricter than CPython, which runs signal handlers only at function entries, after
calls and at backward jumps, with two exceptions, points no signal can reach and where an
exception raised by a tracer escapes the handlers that are there for it:

- the line events CPython reports on a ``with`` statement's line once the block is entered:
  where the block ends and ``__exit__`` is about to be called (normally, on a return, on an
  exception); an exception there would skip ``__exit__`` and leave the lock held;
- the line event of a ``try:``, a ``NOP`` outside the exception table of the blocks around it.

Those points are not counted.
"""

from __future__ import annotations

import dis
import functools
import gc
import sys
from collections.abc import Callable
from pathlib import Path
from types import CodeType, FrameType
from typing import Any

import tether

from . import fakedriver

_PACKAGE = Path(tether.__file__).parent
# The library's own code; not the test helpers or the command line that ship with it.
_SKIP = ("testing", "demo", "cli", "contrib")
_FAKE = str(Path(fakedriver.__file__).resolve())


class Interrupt(BaseException):
    """Like ``KeyboardInterrupt``: not an ``Exception``, so ``except Exception`` lets it by."""


class AlarmError(Exception):
    """Like the exception a signal handler raises (an alarm's timeout): an ``Exception``,
    but not the driver's, so it must not pass for a database error."""


def traced(filename: str) -> bool:
    path = Path(filename)
    if str(path) == _FAKE:
        return True
    try:
        relative = path.relative_to(_PACKAGE)
    except ValueError:
        return False
    return relative.parts[0] not in _SKIP


@functools.cache
def _unreachable(code: CodeType) -> frozenset[int]:
    """Offsets of line events no signal can raise at: those CPython attributes to a ``with``
    statement's line after it entered the block (the exits that call ``__exit__``, on a
    normal end, a return, an exception), and the ``NOP`` of a ``try:``."""
    instructions = list(dis.get_instructions(code))
    skipped = {ins.offset for ins in instructions if ins.opname == "NOP"}
    for entered in instructions:
        if entered.opname not in ("BEFORE_WITH", "BEFORE_ASYNC_WITH"):
            continue
        line = entered.positions.lineno if entered.positions else None
        skipped.update(
            ins.offset
            for ins in instructions
            if ins.offset > entered.offset and ins.positions and ins.positions.lineno == line
        )
    return frozenset(skipped)


class _Tracer:
    def __init__(self, at: int | None, error: type[BaseException]) -> None:
        self.at = at
        self.error = error
        self.count = 0
        self.fired: str | None = None

    def _point(self, frame: FrameType, event: str) -> None:
        self.count += 1
        if self.count == self.at:
            self.fired = f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno} ({event})"
            if frame.f_code.co_name == "__del__":
                # Python reports an exception in a finalizer as unraisable: it never
                # reaches the code whose reference drop ran the finalizer.
                self.fired += " in a finalizer"
            sys.settrace(None)
            raise self.error(f"injected at point {self.count}: {self.fired}")

    def global_trace(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event != "call" or not traced(frame.f_code.co_filename):
            return None
        if self.fired is not None:
            return None
        self._point(frame, event)
        return self.local_trace

    def local_trace(self, frame: FrameType, event: str, arg: Any) -> Any:
        if (
            event == "line"
            and self.fired is None
            and frame.f_lasti not in _unreachable(frame.f_code)
        ):
            self._point(frame, event)
        return self.local_trace


def _run(action: Callable[[], None], tracer: _Tracer) -> None:
    # Automatic garbage collection would run finalizers at points that differ from run to
    # run; a scenario that needs one collects explicitly.
    collecting = gc.isenabled()
    gc.disable()
    previous = sys.gettrace()
    sys.settrace(tracer.global_trace)
    try:
        action()
    finally:
        sys.settrace(previous)
        if collecting:
            gc.enable()


def trace_points(action: Callable[[], None]) -> int:
    """How many points ``action`` passes in tether's code (it must not raise)."""
    tracer = _Tracer(None, Interrupt)
    _run(action, tracer)
    return tracer.count


def inject_at(
    action: Callable[[], None], at: int, error: type[BaseException]
) -> tuple[str | None, str | None]:
    """Run ``action`` raising ``error`` at point ``at``: returns what escaped ``action``
    (the exception's repr; ``None`` if nothing did: the exception itself is not kept, as a
    caller that handled it would not keep it, with the frames and connections it holds)
    and where the injection fired (``None`` if it never did: the run took a shorter path)."""
    tracer = _Tracer(at, error)
    escaped: str | None = None
    try:
        _run(action, tracer)
    except error as exc:
        escaped = f"{error.__name__}: {exc}"
    except BaseException as exc:
        escaped = repr(exc)
    return escaped, tracer.fired
