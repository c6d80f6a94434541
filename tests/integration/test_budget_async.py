"""AsyncPool on a fleet-wide budget, against a real server and a private Redis: the cap holds
across two pools of one process (two holders), the store's calls never block the loop for
long, and the leases go back when the pools close."""

from __future__ import annotations

import asyncio
import time

import pytest

import tether
from tether.budget import RedisStore, default_key
from tether.dsn import parse_dsn
from tether.testing import MariaDBServer, RedisServer


@pytest.mark.parametrize("async_driver", ["asyncmy", "aiomysql"])
def test_async_pools_share_a_budget(
    db: MariaDBServer, redis_server: RedisServer, async_driver: str
) -> None:
    pytest.importorskip(async_driver)
    store = RedisStore(redis_server.url, default_key(parse_dsn(db.dsn())))
    peak = 0
    stalls: list[float] = []

    async def main() -> None:
        nonlocal peak
        options = {"budget": redis_server.url, "budget_cap": 3, "maintenance_interval": 0.25}
        pools = [
            tether.AsyncPool(db.dsn(), driver=async_driver, max_size=5, **options) for _ in range(2)
        ]

        async def request(pool: tether.AsyncPool) -> None:
            async with pool.connection(timeout=20) as conn:
                cur = conn.cursor()
                await cur.execute("SELECT 1")
                await cur.fetchall()
                await asyncio.sleep(0.02)

        async def ticker() -> None:  # the loop keeps turning while leases are taken
            last = time.monotonic()
            while True:
                await asyncio.sleep(0.01)
                now = time.monotonic()
                stalls.append(now - last)
                last = now

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, await asyncio.to_thread(db.connections_of))
                await asyncio.sleep(0.05)

        tick, watcher = asyncio.create_task(ticker()), asyncio.create_task(watch())
        try:
            await asyncio.gather(*[request(pools[i % 2]) for i in range(60)])
            status = await asyncio.to_thread(store.status)
            assert 0 < status.total <= 3
        finally:
            tick.cancel()
            watcher.cancel()
            for pool in pools:
                await pool.close()

    asyncio.run(main())
    assert peak <= 3
    assert max(stalls) < 0.5  # no store call held the loop
    assert store.status().total == 0  # closed pools left the budget
    store.close()
