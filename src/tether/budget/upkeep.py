"""A pool's budget work in each maintenance round: renew its leases, and give back what others
wait for (idle connections now, connections above its share at give-back). :class:`Upkeep`
for the threaded pools; :func:`upkeep_async` for the asyncio one, whose store calls run on a
worker thread so the event loop never waits on Redis."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from ..custody import Custody
from ..entry import Entry, Round
from ..state import PoolState
from .gate import Gate

__all__ = ["Upkeep", "upkeep_async"]

logger = logging.getLogger("tether")

#: Why a connection closed for another process's sake.
SHED = "wanted elsewhere in the fleet"


class Upkeep:
    def __init__(self, custody: Custody, gate: Gate, min_size: int) -> None:
        self.custody = custody
        self.gate = gate
        self.min_size = min_size
        state = custody.state
        gate.waiting = lambda: len(state.waiters)

    def run(self) -> None:
        state = self.custody.state
        with self.custody.lock:
            if state.closed:
                return
            idle, waiting = len(state.idle), len(state.waiters)
        plan = self.gate.renew(idle=idle, waiting=waiting, min_size=self.min_size)
        with self.custody.lock:
            state.surplus = plan.surplus
        if not plan.shed_idle:
            return
        logger.info("%s: closing %d idle connections: %s", self.gate.name, plan.shed_idle, SHED)
        self.custody.retire_idle(_shedding(state, plan.shed_idle, self.min_size), lambda: None)

    def stop(self) -> None:
        self.gate.leave()


def _shedding(state: PoolState, count: int, min_size: int) -> Callable[[Entry], str | None]:
    """Selects up to ``count`` idle connections (the oldest first), never below ``min_size``."""
    left = count

    def select(entry: Entry) -> str | None:
        nonlocal left
        if left <= 0 or state.size <= min_size:
            return None
        left -= 1
        return SHED

    return select


async def upkeep_async(
    state: PoolState,
    gate: Gate,
    min_size: int,
    work: Round,
    retire: Callable[[Entry, str], None],
) -> None:
    """The asyncio pool's round: the renewal on a worker thread, the rest on the loop."""
    if state.closed:
        return
    gate.waiting = lambda: len(state.waiters)
    plan = await asyncio.to_thread(
        gate.renew, idle=len(state.idle), waiting=len(state.waiters), min_size=min_size
    )
    state.surplus = plan.surplus
    if plan.shed_idle:
        logger.info("%s: closing %d idle connections: %s", gate.name, plan.shed_idle, SHED)
        select = _shedding(state, plan.shed_idle, min_size)
        for entry, reason in state.take_idle(time.monotonic(), select, work.lease):
            retire(entry, reason)
