"""A threaded pool's budget work in each maintenance round: renew its leases, and give back
what others wait for (idle connections now, connections above its share at give-back)."""

from __future__ import annotations

import logging

from ..custody import Custody
from ..entry import Entry
from .gate import Gate

__all__ = ["Upkeep"]

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
        left = plan.shed_idle

        def select(entry: Entry) -> str | None:
            nonlocal left
            if left <= 0 or state.size <= self.min_size:
                return None
            left -= 1
            return SHED

        logger.info("%s: closing %d idle connections: %s", self.gate.name, left, SHED)
        self.custody.retire_idle(select, lambda: None)

    def stop(self) -> None:
        self.gate.leave()
