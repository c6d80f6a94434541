"""A fleet-wide connection budget on Redis: many processes, one cap.

Every open connection of a pool created with ``budget="redis://..."`` holds a lease in a
budget shared by every pool with the same key (by default the server's address and the
account: one budget per account, as the server's ``max_user_connections`` is one cap per
account). The cap is the account's binding limit read from the server, less
``budget_reserve``, or ``budget_cap``. See docs/budget.md.

- :mod:`.rules`: the decisions (cap, fair share, what to give back), plain functions;
- :mod:`.store`: the leases in Redis, changed only by Lua scripts;
- :mod:`.gate`: what a pool calls on connect, close and maintenance.
"""

from __future__ import annotations

from typing import Any

from ..dsn import DSN
from .gate import BudgetFull, Gate, Token
from .rules import Plan, Snapshot
from .store import RedisStore, Status, Store, redact_url

__all__ = [
    "BudgetFull",
    "Gate",
    "Plan",
    "RedisStore",
    "Snapshot",
    "Status",
    "Store",
    "Token",
    "default_key",
    "make_gate",
    "redact_url",
]


def default_key(dsn: DSN) -> str:
    """One budget per account on one server: ``user@host:port``."""
    return f"{dsn.user}@{dsn.address}"


def make_gate(budget: Any, *, dsn: DSN, name: str, config: Any) -> Gate:
    """The gate of a pool whose ``budget=`` is a Redis URL or a :class:`Store`."""
    key = config.budget_key or default_key(dsn)
    store: Store = RedisStore(budget, key) if isinstance(budget, str) else budget
    return Gate(
        store=store,
        name=name,
        cap=config.budget_cap,
        reserve=config.budget_reserve,
        ttl=config.budget_ttl,
        grace=2 * config.maintenance_interval,
    )
