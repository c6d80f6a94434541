"""AsyncPool stays consistent whatever await a cancellation lands on (DESIGN sections 7, 8).

Each scenario is a path through the pool: check-out (trusted, polled, pinged, opened, replaced,
waited for, timed out, backed off), statements, fetches (buffered and streamed), give-backs
that clean, replays, transactions, a lost transaction, a garbage-collected connection,
maintenance, close. It runs once to count the times its task suspends, then once per
suspension with the task cancelled there (as ``task.cancel()`` or ``asyncio.timeout()`` does).
After each run:

- what escaped is the caller's own ``CancelledError`` (never swallowed, never replaced);
- every open connection is accounted for: idle exactly when nobody holds it, none held once the
  caller has left, no waiter queued and no slot reserved for a caller that is gone, no server
  connection open that the pool does not know (a session whose call was cut short is killed);
- no idle connection is out of step with its server, and the pool then serves ``max_size``
  connections that all run a statement.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

import tether
from tether import policy
from tether.entry import Entry
from tether.policy import Backoff

from .aioinjection import cancel_at, count_points
from .asyncfake import FakeAsyncDriver, FakeSSCursor
from .budgetfake import MemoryStore
from .fakedriver import FakeOperationalError

DSN = "mysql://app:s3cret-pw@127.0.0.1:3306/app"

Setup = Callable[[tether.AsyncPool, FakeAsyncDriver], Awaitable[Any]]
Action = Callable[[tether.AsyncPool, FakeAsyncDriver, Any], Awaitable[None]]


@dataclass
class Scenario:
    name: str
    action: Action
    setup: Setup | None = None
    options: dict[str, Any] | None = None
    after: Callable[[Any], Awaitable[None]] | None = None
    timed: bool = False  # its path depends on a timer: the last points may not be reached


def only(pool: tether.AsyncPool) -> Entry:
    (entry,) = pool._state.entries
    return entry


async def run_query(conn: Any, sql: str = "SELECT 1") -> None:
    cur = conn.cursor()
    await cur.execute(sql)
    await cur.fetchall()
    await cur.close()


async def warm(pool: tether.AsyncPool, fake: FakeAsyncDriver) -> None:
    async with pool.connection() as conn:
        await run_query(conn)


def aged(seconds: float) -> Setup:
    async def setup(pool: tether.AsyncPool, fake: FakeAsyncDriver) -> None:
        await warm(pool, fake)
        only(pool).returned_at = time.monotonic() - seconds

    return setup


async def dead(pool: tether.AsyncPool, fake: FakeAsyncDriver) -> None:
    await aged(7200)(pool, fake)
    fake.connections[-1].kill()


async def checkout_only(pool: tether.AsyncPool, fake: FakeAsyncDriver, ctx: Any) -> None:
    async with pool.connection():
        pass


async def checkout_query(pool: tether.AsyncPool, fake: FakeAsyncDriver, ctx: Any) -> None:
    async with pool.connection() as conn:
        await run_query(conn)


def statements(*sql: str, begin: bool = False) -> Action:
    async def action(pool: tether.AsyncPool, fake: FakeAsyncDriver, ctx: Any) -> None:
        async with pool.connection() as conn:
            if begin:
                await conn.begin()
            for one in sql:
                await run_query(conn, one)

    return action


async def streamed(pool: tether.AsyncPool, fake: FakeAsyncDriver, ctx: Any) -> None:
    async with pool.connection() as conn:
        cur = conn.cursor(FakeSSCursor)
        await cur.execute("SELECT n FROM big")
        await cur.fetchone()
        await cur.close()


async def streamed_unread(pool: tether.AsyncPool, fake: FakeAsyncDriver, ctx: Any) -> None:
    async with pool.connection() as conn:
        cur = conn.cursor(FakeSSCursor)
        await cur.execute("SELECT n FROM big")
        await cur.fetchone()  # given back with rows unread: closed, not reused


async def replayed_read(pool: tether.AsyncPool, fake: FakeAsyncDriver, ctx: Any) -> None:
    async with pool.connection() as conn:
        fake.connections[-1].kill()
        await run_query(conn)


async def lost_transaction(pool: tether.AsyncPool, fake: FakeAsyncDriver, ctx: Any) -> None:
    async with pool.connection() as conn:
        await conn.begin()
        fake.connections[-1].kill()
        with pytest.raises(tether.TransactionLost):
            await run_query(conn, "UPDATE t SET n = n + 1")
        await conn.rollback()


async def transaction(pool: tether.AsyncPool, fake: FakeAsyncDriver, ctx: Any) -> None:
    async with pool.transaction() as conn:
        await run_query(conn, "INSERT INTO t VALUES (1)")


async def run_transaction(pool: tether.AsyncPool, fake: FakeAsyncDriver, ctx: Any) -> None:
    async def fn(conn: Any) -> None:
        await run_query(conn, "UPDATE t SET n = n + 1")

    await pool.run_transaction(fn)


async def held_elsewhere(pool: tether.AsyncPool, fake: FakeAsyncDriver) -> dict[str, Any]:
    """The only connection held by another task, which gives it back as soon as someone
    waits for it."""
    await warm(pool, fake)
    taken = asyncio.Event()
    finished = asyncio.Event()

    async def holder() -> None:
        async with pool.connection():
            taken.set()
            for _ in range(100_000):
                if pool._state.waiters or finished.is_set():
                    break
                await asyncio.sleep(0)

    task = asyncio.get_running_loop().create_task(holder())
    await taken.wait()
    return {"task": task, "finished": finished}


async def join(ctx: dict[str, Any]) -> None:
    ctx["finished"].set()
    await asyncio.wait_for(ctx["task"], 10)


async def held_here(pool: tether.AsyncPool, fake: FakeAsyncDriver) -> dict[str, Any]:
    await warm(pool, fake)
    return {"conn": await pool.connection()}


async def release_held(ctx: dict[str, Any]) -> None:
    await ctx["conn"].close()


async def times_out(pool: tether.AsyncPool, fake: FakeAsyncDriver, ctx: Any) -> None:
    with pytest.raises(tether.PoolTimeout):
        await pool.connection(timeout=0.02)


async def capped_once(pool: tether.AsyncPool, fake: FakeAsyncDriver) -> None:
    fake.failures.append(FakeOperationalError(1040, "Too many connections"))
    pool._state.backoff = Backoff(first=0.002)


async def collected(pool: tether.AsyncPool, fake: FakeAsyncDriver, ctx: Any) -> None:
    conn = await pool.connection()
    await run_query(conn)
    del conn
    gc.collect()
    async with pool.connection() as again:  # a check-out takes it back (or maintenance)
        await run_query(again)


async def maintenance_round(pool: tether.AsyncPool, fake: FakeAsyncDriver) -> None:
    """Idle connections to retire (expired, dead) and to ping; min_size to refill."""
    conns = [await pool.connection() for _ in range(3)]
    for conn in conns:
        await conn.close()
    expired, killed, stale = pool._state.idle
    expired.expires = 0.0
    next(c for c in fake.connections if c.id == killed.session_id).kill()
    stale.last_used -= 3600


async def maintain(pool: tether.AsyncPool, fake: FakeAsyncDriver, ctx: Any) -> None:
    await pool._housekeeper.maintain()


async def close(pool: tether.AsyncPool, fake: FakeAsyncDriver, ctx: Any) -> None:
    await pool.close()


async def two_idle(pool: tether.AsyncPool, fake: FakeAsyncDriver) -> None:
    conns = [await pool.connection() for _ in range(2)]
    for conn in conns:
        await conn.close()


SCENARIOS = [
    # A trusted or polled check-out alone never suspends (nothing to cancel): with a query.
    Scenario("check-out, trusted", checkout_query, warm),
    Scenario("check-out, polled", checkout_query, aged(7200), {"ping_after": 10_000}),
    Scenario("check-out, pinged", checkout_only, aged(7200)),
    Scenario("check-out, opened", checkout_query),
    Scenario("check-out, dead one replaced", checkout_query, dead, {"ping_after": 10_000}),
    Scenario("statements and fetch", statements("SELECT 1", "SELECT 2"), warm),
    Scenario("streamed fetch", streamed, warm),
    Scenario("streamed, given back unread", streamed_unread, warm),
    Scenario("give-back, session reset", statements("SET @x = 1"), warm),
    Scenario("give-back, rollback", statements("SELECT 1", begin=True), warm),
    Scenario("transaction", transaction, warm),
    Scenario("run_transaction", run_transaction, warm),
    Scenario("read replayed after a lost connection", replayed_read, warm),
    Scenario("connection lost in a transaction", lost_transaction, warm),
    Scenario("waited for", checkout_only, held_elsewhere, {"max_size": 1}, join),
    Scenario("timed out", times_out, held_here, {"max_size": 1}, release_held),
    Scenario("backed off at a cap", checkout_query, capped_once, timed=True),
    Scenario("garbage-collected", collected, warm, {"max_size": 1}),
    Scenario("maintenance", maintain, maintenance_round, {"min_size": 4, "max_size": 4}),
    Scenario("close", close, two_idle),
]


async def wanted_elsewhere(pool: tether.AsyncPool, fake: FakeAsyncDriver) -> MemoryStore:
    """Two idle connections, the whole cap held, and another process waiting for two."""
    await two_idle(pool, fake)
    store = store_of(pool)
    store.held["elsewhere"] = 0
    store.expiry["elsewhere"] = time.monotonic() + 3600
    store.waiting["elsewhere"] = 2
    return store


async def served_elsewhere(store: MemoryStore) -> None:
    store.waiting.pop("elsewhere")


def store_of(pool: tether.AsyncPool) -> MemoryStore:
    gate = pool._connector.gate
    assert gate is not None
    return gate.store  # type: ignore[return-value]


BUDGET = {"budget": True}

# The paths that take, settle or renew a lease of a fleet-wide budget (an in-memory store with
# the Redis store's semantics), whose store calls run on worker threads.
BUDGET_SCENARIOS = [
    Scenario("budget: opened", checkout_query, None, BUDGET),
    Scenario("budget: dead one replaced", checkout_query, dead, {**BUDGET, "ping_after": 10_000}),
    Scenario("budget: lost transaction", lost_transaction, warm, BUDGET),
    Scenario(
        "budget: idle closed for another process",
        maintain,
        wanted_elsewhere,
        BUDGET,
        served_elsewhere,
    ),
    Scenario("budget: close", close, two_idle, BUDGET),
]


async def check_budget(pool: tether.AsyncPool) -> None:
    """One renewal (which waits for store calls still running on worker threads) puts the
    store right: one lease per open connection, nothing leaked, nothing freed twice."""
    gate = pool._connector.gate
    if gate is None:
        return
    gc.collect()
    store = store_of(pool)
    entries = pool._state.entries
    assert store.held.get(gate.holder, 0) >= len(entries), "a lease freed early"
    if not pool.closed:
        # A store call cut short by the cancellation finishes on its thread; what it
        # returned is dropped once the loop has run its callbacks.
        for _ in range(3):  # a round or two at most
            await asyncio.to_thread(lambda: None)
            await asyncio.sleep(0)
            gc.collect()
            await pool._housekeeper.maintain()
            if store.held.get(gate.holder, 0) == len(entries):
                break
        assert store.held.get(gate.holder, 0) == len(entries), "the store disagrees"
    assert all(entry.budget is not None for entry in entries), "a connection without a lease"
    assert gate.held == len(entries), f"{gate.held} leases held for {len(entries)} connections"
    assert store.total <= store.cap


def make_pool(fake: FakeAsyncDriver, scenario: Scenario) -> tether.AsyncPool:
    options: dict[str, Any] = {
        "driver": fake,
        "max_size": 2,
        "timeout": 2,
        "watchdog": None,
        "maintenance_interval": 3600,  # rounds run only where a scenario runs one
    }
    options.update(scenario.options or {})
    if options.get("budget"):
        options.update(budget=MemoryStore(), budget_cap=options["max_size"], budget_ttl=7200.0)
    return tether.AsyncPool(DSN, **options)


async def settle(pool: tether.AsyncPool) -> None:
    """Let the pool's own tasks (kills of sessions cut short) finish."""
    for _ in range(3):
        await pool._connector.settle(5)
        await asyncio.sleep(0)


def check_consistent(pool: tether.AsyncPool, fake: FakeAsyncDriver) -> None:
    gc.collect(1)
    pool._take_back_collected()
    state = pool._state
    assert not state.waiters, "a waiter is queued for a caller that left"
    assert not state.opening, "a slot is reserved for a connect nobody runs"
    for entry in state.entries:
        assert entry.raw is not None, "a closed connection is still counted"
        assert (entry in state.idle) == (entry.holder is None), "idle and held disagree"
        assert entry.holder is None, "a connection is held after its caller left"
        assert not (entry.in_flight or entry.broken), "an interrupted connection is idle"
        assert not entry.raw.busy, "an idle connection is out of step with its server"
    assert state.size <= pool.config.max_size
    live = [conn for conn in fake.connections if not conn.closed]
    assert len(live) == len(state.entries), "a server connection is open the pool forgot"


async def check_serves(pool: tether.AsyncPool) -> None:
    if pool.closed:
        return
    conns = [await pool.connection(timeout=2) for _ in range(pool.config.max_size)]
    for conn in conns:
        await run_query(conn)
    for conn in conns:
        await conn.close()
    stats = pool.stats()
    assert stats.in_use == 0 and stats.size <= pool.config.max_size


def run_scenario(scenario: Scenario, at: int | None) -> tuple[int, str | None]:
    trusted, policy.TRUSTED = policy.TRUSTED, 3600.0
    try:
        return asyncio.run(_run_scenario(scenario, at))
    finally:
        policy.TRUSTED = trusted


async def _run_scenario(scenario: Scenario, at: int | None) -> tuple[int, str | None]:
    fake = FakeAsyncDriver()
    pool = make_pool(fake, scenario)
    try:
        ctx = await scenario.setup(pool, fake) if scenario.setup else None

        async def action() -> None:
            await scenario.action(pool, fake, ctx)

        fired = None
        if at is None:
            points = await count_points(action)
        else:
            points = at
            escaped, fired = await cancel_at(action, at)
            if fired is not None:
                assert escaped == "CancelledError", f"cancelled at {fired}, but {escaped} escaped"
            else:
                assert escaped is None, f"{escaped} escaped without a cancellation"
        if scenario.after:
            await scenario.after(ctx)
        await settle(pool)
        check_consistent(pool, fake)
        await check_budget(pool)
        await check_serves(pool)
        check_consistent(pool, fake)
        await check_budget(pool)
        return points, fired
    finally:
        await pool.close()
        await settle(pool)
        assert not [c for c in fake.connections if not c.closed], "open after close"


@pytest.mark.slow
@pytest.mark.parametrize(
    "scenario", SCENARIOS + BUDGET_SCENARIOS, ids=[s.name for s in SCENARIOS + BUDGET_SCENARIOS]
)
def test_a_cancellation_at_every_await_leaves_the_pool_consistent(scenario: Scenario) -> None:
    run_scenario(scenario, None)
    total, _ = run_scenario(scenario, None)
    assert total > 0
    missed = []
    for at in range(1, total + 1):
        try:
            _, fired = run_scenario(scenario, at)
        except AssertionError as exc:
            raise AssertionError(f"{scenario.name}, cancelled at point {at}: {exc}") from None
        if fired is None:
            missed.append(at)
    if scenario.timed:
        assert len(missed) <= 3 and all(at > total - 3 for at in missed), missed
    else:
        assert not missed, f"points never reached: {missed}"
    print(f"{scenario.name}: {total} await points")


def test_a_waiter_granted_then_cancelled_passes_the_connection_on() -> None:
    """The race a point-by-point run cannot produce: a connection is granted to a waiter
    (its future resolved), and the waiter is cancelled before it runs again. The grant is
    taken back and goes to the next waiter; nothing is lost."""

    async def main() -> None:
        fake = FakeAsyncDriver()
        pool = tether.AsyncPool(DSN, driver=fake, max_size=1, watchdog=None)
        held = await pool.connection()
        first = asyncio.ensure_future(pool.connection(timeout=5))
        second = asyncio.ensure_future(pool.connection(timeout=5))
        await asyncio.sleep(0)
        assert len(pool._state.waiters) == 2
        await held.close()  # granted to the first waiter, which has not run yet
        first.cancel()
        conn = await asyncio.wait_for(second, 5)
        with pytest.raises(asyncio.CancelledError):
            await first
        await run_query(conn)
        await conn.close()
        check_consistent(pool, fake)
        await pool.close()

    asyncio.run(main())
