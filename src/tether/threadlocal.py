"""``ThreadLocalPool``: the pool with thread-mapped connections."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from .pool import Pool
from .selection import Selection, ThreadMapped

__all__ = ["ThreadLocalPool"]


class ThreadLocalPool(Pool):
    """One connection per thread, kept between uses (what DBUtils' ``PersistentDB`` does),
    with the same health rules and a bound.

    A thread's session survives between its uses (variables, temporary tables); open
    transactions are still rolled back on return. Connections of ended threads are
    reclaimed, and at the bound an idle connection of another thread is taken over (its
    session reset first if it holds state), so the bound never deadlocks.

    Its default bound is 32, not 10: one connection per thread for thread pools up to 32
    threads (``ThreadPoolExecutor``'s largest default), as ``PersistentDB`` users expect; a
    lower bound makes threads share (and wait for) connections.
    """

    selection: ClassVar[type[Selection]] = ThreadMapped
    defaults: ClassVar[Mapping[str, Any]] = {"max_size": 32}
