"""Which idle connection a check-out gets when the thread's own last one is not idle: the
difference between the pool flavours (both prefer the thread's last connection first; see
:meth:`tether.state.PoolState.checkout`).

:class:`Shared` (``tether.Pool``) takes the one returned last (warmest; it lets surplus ones age
out). :class:`ThreadMapped` (``tether.ThreadLocalPool``) keeps each thread's session between
uses: it takes one nobody owns (or whose thread has ended), else opens one of the thread's own;
only at the bound does it take over another thread's idle connection (reset first if that
session holds state). Plain functions of the idle set, no I/O.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from .entry import Entry

__all__ = ["RECLAIMED", "Selection", "Shared", "ThreadMapped"]

#: ``entry.owner`` of a connection whose thread has ended: free for any thread.
RECLAIMED = -1


def alive_threads() -> set[int]:
    return {t.ident for t in threading.enumerate() if t.ident is not None}


class Selection:
    """Picks from the idle connections (insertion-ordered: least recently returned first)."""

    #: Whether a give-back keeps the session as its thread left it (no reset on return).
    keeps_sessions = False

    def choose(
        self,
        idle: dict[Entry, None],
        ident: int,
        at_bound: bool,
        alive: Callable[[], set[int]] = alive_threads,
    ) -> Entry | None:
        """The idle entry to hand to thread ``ident``, or ``None`` to open a new one (or
        wait, at the bound)."""
        raise NotImplementedError


class Shared(Selection):
    def choose(
        self,
        idle: dict[Entry, None],
        ident: int,
        at_bound: bool,
        alive: Callable[[], set[int]] = alive_threads,
    ) -> Entry | None:
        if idle:
            return next(reversed(idle))
        return None


class ThreadMapped(Selection):
    keeps_sessions = True

    def choose(
        self,
        idle: dict[Entry, None],
        ident: int,
        at_bound: bool,
        alive: Callable[[], set[int]] = alive_threads,
    ) -> Entry | None:
        if not idle:
            return None
        living: set[int] | None = None
        for entry in idle:
            if entry.owner is None or entry.owner in (RECLAIMED, ident):
                return entry
            if living is None:
                living = alive()
            if entry.owner not in living:
                return entry  # its thread has ended
        if not at_bound:
            return None  # a connection of its own rather than another thread's session
        # At the bound: take over the least recently returned one, so a bound never
        # deadlocks; its session is reset first if it holds state.
        return next(iter(idle))
