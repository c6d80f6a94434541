"""What a pool counts, and the snapshot ``pool.stats()`` returns."""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Counters", "PoolStats"]

# How many recent wait and hold times the percentiles are computed from.
SAMPLES = 2048


@dataclass
class Counters:
    """Events since the pool was created. Changed only under the pool's lock."""

    opened: int = 0  # connections opened
    closed: int = 0  # connections closed (by reason: PoolStats.closed_by_reason)
    checkouts: int = 0  # connections handed out
    waits: int = 0  # check-outs that had to wait
    timeouts: int = 0  # check-outs that gave up (PoolTimeout)
    pings: int = 0  # health-check and keepalive pings
    ping_failures: int = 0
    replaced: int = 0  # found expired or dead at check-out and replaced
    rollbacks: int = 0  # give-backs that rolled back an open transaction
    resets: int = 0  # sessions reset (give-back of a changed session, takeover)
    connect_errors: int = 0
    capacity_errors: int = 0  # 1040 / 1226 / 1203: the pool backed off
    replays: int = 0  # statements run again on a fresh connection
    transactions_lost: int = 0
    outcomes_unknown: int = 0
    transaction_retries: int = 0  # run_transaction attempts after the first
    leaks: int = 0  # connections held past leak_timeout
    reclaimed: int = 0  # garbage-collected without a give-back, or of an ended thread
    takeovers: int = 0  # thread-mapped: another thread's idle connection taken at the bound
    watchdog_breaks: int = 0  # calls broken by the watchdog
    interrupted: int = 0  # check-outs, calls or give-backs cut short by an exception

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]


def samples() -> deque[float]:
    """The last SAMPLES durations (waits, holds); appending is atomic, no lock needed."""
    return deque(maxlen=SAMPLES)


@dataclass(frozen=True)
class PoolStats:
    """A snapshot of a pool, taken under its lock. Times are in seconds."""

    name: str
    max_size: int
    min_size: int
    size: int  # open + opening, never above max_size
    idle: int
    in_use: int
    waiting: int
    opening: int
    counters: Counters = field(default_factory=Counters)
    closed_by_reason: dict[str, int] = field(default_factory=dict)
    wait_time: dict[str, float] = field(default_factory=dict)
    hold_time: dict[str, float] = field(default_factory=dict)
    server: dict[str, Any] = field(default_factory=dict)
    last_connect_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __getitem__(self, key: str) -> Any:
        # stats()["checkouts"] reads a counter or a gauge, whichever has that name.
        if hasattr(self.counters, key):
            return getattr(self.counters, key)
        return getattr(self, key)


def percentiles(values: Iterable[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {"count": 0}
    last = len(ordered) - 1

    def pick(q: float) -> float:
        return ordered[min(last, int(q * len(ordered)))]

    return {
        "count": len(ordered),
        "p50": pick(0.50),
        "p90": pick(0.90),
        "p99": pick(0.99),
        "max": ordered[last],
    }
