"""Counters, gauges and timing percentiles of a pool."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

__all__ = ["PoolStats"]

# How many recent wait and hold times the percentiles are computed from.
SAMPLES = 2048


class Samples(Protocol):
    """The last SAMPLES durations: a deque(maxlen=SAMPLES), or the compiled ring of doubles
    (tether._speedups.Samples) that behaves the same."""

    def append(self, value: float, /) -> None: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[float]: ...


@dataclass(frozen=True)
class PoolStats:
    """A snapshot of a pool, taken under its lock. Times are in seconds."""

    name: str
    max_size: int
    min_size: int
    size: int
    idle: int
    in_use: int
    waiting: int
    opening: int
    counters: dict[str, int] = field(default_factory=dict)
    closed_by_reason: dict[str, int] = field(default_factory=dict)
    wait_time: dict[str, float] = field(default_factory=dict)
    hold_time: dict[str, float] = field(default_factory=dict)
    server: dict[str, Any] = field(default_factory=dict)
    last_connect_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __getitem__(self, key: str) -> Any:
        # stats()["checkouts"] reads a counter or a gauge, whichever has that name.
        if key in self.counters:
            return self.counters[key]
        return getattr(self, key)


def percentiles(samples: Samples) -> dict[str, float]:
    if not samples:
        return {"count": 0}
    ordered = sorted(samples)
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
