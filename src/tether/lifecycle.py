"""A pool across the life of its process: forks and interpreter exit.

A forked child never uses, nor sends ``QUIT`` on, a socket inherited from its parent: every
live pool forgets its connections in the child (``os.register_at_fork``, and on the first
check-out for forks made from C, where Python's hooks do not run). At exit, pools close their
idle connections without waiting on anything for long; nothing here starts a thread.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
import weakref
from typing import Protocol

__all__ = ["after_fork_without_hooks", "track"]


class Tracked(Protocol):
    def _after_fork_in_child(self) -> None: ...

    def _close_at_exit(self) -> None: ...


_live: weakref.WeakSet[Tracked] = weakref.WeakSet()
_fork_lock = threading.Lock()
_pids: weakref.WeakKeyDictionary[Tracked, int] = weakref.WeakKeyDictionary()


def track(pool: Tracked) -> None:
    """Follow ``pool`` through forks and exit (held weakly)."""
    _live.add(pool)
    _pids[pool] = os.getpid()


def _forget_in_child() -> None:
    pid = os.getpid()
    for pool in list(_live):
        _pids[pool] = pid
        pool._after_fork_in_child()


def after_fork_without_hooks(pool: Tracked) -> None:
    """``pool`` is used in a process other than the one it was made (or last reset) in, and
    the fork hooks did not run (uWSGI forks its workers from C): reset it now, once."""
    with _fork_lock:
        if _pids.get(pool) != os.getpid():
            _pids[pool] = os.getpid()
            pool._after_fork_in_child()


def _close_at_exit() -> None:
    for pool in list(_live):
        with contextlib.suppress(Exception):
            pool._close_at_exit()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)
atexit.register(_close_at_exit)
