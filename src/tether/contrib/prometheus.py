"""Prometheus metrics for tether pools (extra: ``tether[prometheus]``).

``register(pool)`` adds a collector to the default registry (or the one given); every scrape
reads ``pool.stats()``, so there is nothing to update on the hot path.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..stats import Counters, PoolStats

__all__ = ["PoolCollector", "register"]


class Pool(Protocol):
    """Any tether pool (``Pool``, ``ThreadLocalPool``, ``AsyncPool``): it has ``stats()``."""

    def stats(self) -> PoolStats: ...


_GAUGES = {
    "size": "Open (and opening) connections",
    "idle": "Idle connections",
    "in_use": "Checked-out connections",
    "waiting": "Threads waiting for a connection",
    "max_size": "The pool's bound",
}


class PoolCollector:
    """Collects the stats of the pools it was given (held weakly: a closed and dropped pool
    simply disappears from the metrics)."""

    def __init__(self, *pools: Pool) -> None:
        self._pools: weakref.WeakSet[Pool] = weakref.WeakSet(pools)

    def add(self, pool: Pool) -> None:
        self._pools.add(pool)

    def collect(self) -> Iterator[Metric]:
        snapshots = [pool.stats() for pool in list(self._pools)]
        for field, doc in _GAUGES.items():
            gauge = GaugeMetricFamily(f"tether_pool_{field}", doc, labels=["pool"])
            for stats in snapshots:
                gauge.add_metric([stats.name], float(getattr(stats, field)))
            yield gauge
        for name in Counters.names():
            counter = CounterMetricFamily(
                f"tether_pool_{name}", f"Pool events: {name.replace('_', ' ')}", labels=["pool"]
            )
            for stats in snapshots:
                counter.add_metric([stats.name], float(getattr(stats.counters, name)))
            yield counter
        closed = CounterMetricFamily(
            "tether_pool_closed_by_reason",
            "Connections closed, by reason",
            labels=["pool", "reason"],
        )
        for stats in snapshots:
            for reason, count in stats.closed_by_reason.items():
                closed.add_metric([stats.name, reason], float(count))
        yield closed
        for kind, doc in (("wait_time", "Checkout wait"), ("hold_time", "Checkout hold")):
            gauge = GaugeMetricFamily(
                f"tether_pool_{kind}_seconds",
                f"{doc} time percentiles over recent checkouts",
                labels=["pool", "quantile"],
            )
            for stats in snapshots:
                values: dict[str, Any] = getattr(stats, kind)
                for key, quantile in (("p50", "0.5"), ("p90", "0.9"), ("p99", "0.99")):
                    if key in values:
                        gauge.add_metric([stats.name, quantile], float(values[key]))
            yield gauge


def register(pool: Pool, registry: CollectorRegistry = REGISTRY) -> PoolCollector:
    """Export ``pool``'s stats from ``registry``; returns the collector (``add`` more pools)."""
    collector = PoolCollector(pool)
    registry.register(collector)
    return collector
