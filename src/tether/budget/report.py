"""What ``tether doctor --budget`` shows of a budget: its cap, the leases by host and by
process, the idle connections that hold leases, who waits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .store import Status

__all__ = ["BudgetReport", "budget_report"]


@dataclass(frozen=True)
class HolderRow:
    host: str
    pid: int | None
    pool: str
    held: int
    idle: int
    waiting: int
    expires_in: float


@dataclass(frozen=True)
class BudgetReport:
    store: str
    key: str
    cap: int
    total: int
    idle: int
    demand: int
    holders: list[HolderRow]

    def by_host(self) -> list[tuple[str, int, int, int]]:
        """(host, processes, leases, idle), the busiest host first."""
        hosts: dict[str, tuple[set[Any], int, int]] = {}
        for row in self.holders:
            pids, held, idle = hosts.get(row.host, (set(), 0, 0))
            pids.add(row.pid)
            hosts[row.host] = (pids, held + row.held, idle + row.idle)
        rows = [(host, len(p), held, idle) for host, (p, held, idle) in hosts.items()]
        return sorted(rows, key=lambda r: (-r[2], r[0]))

    def as_dict(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "key": self.key,
            "cap": self.cap,
            "leases": self.total,
            "idle": self.idle,
            "waiting": self.demand,
            "by_host": [
                {"host": h, "processes": n, "leases": held, "idle": idle}
                for h, n, held, idle in self.by_host()
            ],
            "holders": [row.__dict__ for row in self.holders],
        }


def budget_report(status: Status, store: str) -> BudgetReport:
    rows = [
        HolderRow(
            host=str(h.info.get("host", "?")),
            pid=h.info.get("pid"),
            pool=str(h.info.get("pool", "?")),
            held=h.held,
            idle=min(h.held, int(h.info.get("idle", 0))),
            waiting=h.waiting,
            expires_in=round(h.expires_in, 1),
        )
        for h in status.holders
    ]
    rows.sort(key=lambda r: (-r.held, r.host, r.pid or 0))
    return BudgetReport(
        store=store,
        key=status.key,
        cap=status.cap,
        total=status.total,
        idle=sum(r.idle for r in rows),
        demand=status.demand,
        holders=rows,
    )
