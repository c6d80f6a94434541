"""The Redis store's Lua scripts and the in-memory store the unit tests use agree, answer
for answer, on one sequence of operations (so the unit tests' store is a faithful one)."""

from __future__ import annotations

from typing import Any

from tether.budget import RedisStore
from tether.testing import RedisServer

from ..unit.budgetfake import MemoryStore

TTL = 60.0


def script(store: Any) -> list[Any]:
    out: list[Any] = []

    def acquire(
        holder: str, limit: int = 100, cap: int = 0, waiting: int = 0, grace: float = 0.0
    ) -> None:
        out.append(
            store.acquire(
                holder, limit=limit, cap=cap, ttl=TTL, waiting=waiting, info="{}", grace=grace
            )
        )

    def renew(holder: str, held: int, waiting: int = 0) -> None:
        out.append(store.renew(holder, held=held, waiting=waiting, cap=0, ttl=TTL, info="{}"))

    acquire("a", grace=60)  # new keys: nothing granted before the holders re-registered
    acquire("a")  # cap unknown: one lease in all
    acquire("b")  # refused, b waits
    acquire("a", cap=4)
    acquire("b")
    acquire("b")
    acquire("c", waiting=2)  # refused: cap reached, c waits for 3
    acquire("a", limit=2)  # refused on its limit
    store.release("a", 1)
    store.release("zz", 1)  # unknown holder: nothing
    acquire("c")
    renew("b", held=5, waiting=1)  # re-states more than it had (a lost store: re-registers)
    renew("a", held=0)
    store.release("b", 10)  # never below zero
    renew("c", held=1)
    store.leave("b")
    acquire("d", waiting=1)
    out.append(
        (
            store.status().cap,
            store.status().total,
            store.status().demand,
            [(h.holder, h.held, h.waiting) for h in store.status().holders],
        )
    )
    return out


def test_the_lua_scripts_and_the_memory_store_agree(redis_server: RedisServer) -> None:
    redis = RedisStore(redis_server.url, "agree")
    try:
        assert script(redis) == script(MemoryStore("agree", fresh=True))
    finally:
        redis.close()
