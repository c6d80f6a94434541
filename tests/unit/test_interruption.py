"""The pool stays consistent whatever point an exception lands on (DESIGN section 7).

Each scenario is a path through the pool: check-out (trusted, polled, pinged, opened, replaced,
waited for, timed out, backed off), statements, fetches, give-backs that clean, replays,
transactions, a lost transaction, takeovers, garbage-collected connections, maintenance,
close; and the paths of a fleet-wide budget (a lease taken before each connect, settled after
each close, renewed by maintenance, over an in-memory store), where no lease may leak or be
freed twice. It runs once to count its points (every line and call in tether's code and the fake
driver's), then once per point with an exception raised there: ``Interrupt`` (like Ctrl-C,
not an ``Exception``) and ``AlarmError`` (an ``Exception`` a signal handler raises, not the
driver's). After each run:

- the exception that escaped is the injected one (never swallowed, never replaced);
- every open connection is accounted for: idle exactly when nobody holds it, none held once
  the caller has left, no waiter queued and no slot reserved for a caller that is gone, no
  server connection open that the pool does not know;
- no idle connection is out of step with its server (a call cut short between request and
  reply), and the pool then serves ``max_size`` connections that all run a statement.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

import tether
from tether import policy
from tether.entry import Entry
from tether.policy import Backoff

from .budgetfake import MemoryStore
from .fakedriver import FakeDriver, FakeOperationalError
from .injection import AlarmError, Interrupt, inject_at, trace_points

DSN = "mysql://app:s3cret-pw@127.0.0.1:3306/app"

Setup = Callable[[tether.Pool, FakeDriver], Any]
Action = Callable[[tether.Pool, FakeDriver, Any], None]


@dataclass
class Scenario:
    name: str
    action: Action
    setup: Setup | None = None
    options: dict[str, Any] | None = None
    after: Callable[[Any], None] | None = None  # undo the setup's side work (threads, holds)
    # Its path depends on how long a wait lasts: it runs on a clock that advances by a fixed
    # step per reading, so that the path (how often a wait loop goes round) is the same in
    # every run.
    clocked: bool = False


def only(pool: tether.Pool) -> Entry:
    (entry,) = pool._state.entries
    return entry


def run_query(conn: Any, sql: str = "SELECT 1") -> None:
    cur = conn.cursor()
    cur.execute(sql)
    cur.fetchall()
    cur.close()


def warm(pool: tether.Pool, fake: FakeDriver) -> None:
    with pool.connection() as conn:
        run_query(conn)


def aged(seconds: float) -> Setup:
    def setup(pool: tether.Pool, fake: FakeDriver) -> None:
        warm(pool, fake)
        only(pool).returned_at = time.monotonic() - seconds

    return setup


def dead(pool: tether.Pool, fake: FakeDriver) -> None:
    aged(7200)(pool, fake)  # looked at (polled) before it is handed out
    fake.connections[-1].kill()


def checkout_only(pool: tether.Pool, fake: FakeDriver, ctx: Any) -> None:
    with pool.connection():
        pass


def checkout_query(pool: tether.Pool, fake: FakeDriver, ctx: Any) -> None:
    with pool.connection() as conn:
        run_query(conn)


def statements(*sql: str, begin: bool = False) -> Action:
    def action(pool: tether.Pool, fake: FakeDriver, ctx: Any) -> None:
        with pool.connection() as conn:
            if begin:
                conn.begin()
            for one in sql:
                run_query(conn, one)

    return action


def replayed_read(pool: tether.Pool, fake: FakeDriver, ctx: Any) -> None:
    with pool.connection() as conn:
        fake.connections[-1].kill()
        run_query(conn)


def lost_transaction(pool: tether.Pool, fake: FakeDriver, ctx: Any) -> None:
    with pool.connection() as conn:
        conn.begin()
        fake.connections[-1].kill()
        with pytest.raises(tether.TransactionLost):
            run_query(conn, "UPDATE t SET n = n + 1")
        conn.rollback()


def transaction(pool: tether.Pool, fake: FakeDriver, ctx: Any) -> None:
    with pool.transaction() as conn:
        run_query(conn, "INSERT INTO t VALUES (1)")


def held_elsewhere(pool: tether.Pool, fake: FakeDriver) -> dict[str, Any]:
    """The only connection held by another thread, which gives it back as soon as someone
    waits for it."""
    warm(pool, fake)
    taken = threading.Event()
    finished = threading.Event()  # the action is over (it may have stopped before waiting)

    def holder() -> None:
        with pool.connection():
            taken.set()
            deadline = time.monotonic() + 5
            while not (pool._state.waiters or finished.is_set()) and time.monotonic() < deadline:
                time.sleep(0.0002)

    thread = threading.Thread(target=holder)
    thread.start()
    taken.wait(5)
    return {"thread": thread, "finished": finished}


def join(ctx: dict[str, Any]) -> None:
    ctx["finished"].set()
    ctx["thread"].join(10)
    assert not ctx["thread"].is_alive()


def held_here(pool: tether.Pool, fake: FakeDriver) -> dict[str, Any]:
    warm(pool, fake)
    return {"conn": pool.connection()}


def release_held(ctx: dict[str, Any]) -> None:
    ctx["conn"].close()


def times_out(pool: tether.Pool, fake: FakeDriver, ctx: Any) -> None:
    with pytest.raises(tether.PoolTimeout):
        pool.connection(timeout=0.02)


class FixedBackoff(Backoff):
    """Backs off 2 ms: no jitter, so that every run follows the same path."""

    def failed(self, now: float, rand: Callable[[], float] = lambda: 0.0) -> float:
        return now + 0.002


def capped_once(pool: tether.Pool, fake: FakeDriver) -> None:
    fake.failures.append(FakeOperationalError(1040, "Too many connections"))
    pool._state.backoff = FixedBackoff()


class SteppingClock:
    """``time.monotonic`` for a run: starts at the real time and advances 0.5 ms per
    reading, whatever the machine is doing."""

    def __init__(self) -> None:
        self.now = time.monotonic()

    def __call__(self) -> float:
        self.now += 0.0005
        return self.now


def other_threads_session(pool: tether.Pool, fake: FakeDriver) -> dict[str, Any]:
    """Another thread, still alive, left a session with state in the only connection."""
    stop = threading.Event()
    ready = threading.Event()

    def owner() -> None:
        with pool.connection() as conn:
            run_query(conn, "SET @secret = 1")
        ready.set()
        stop.wait(10)

    thread = threading.Thread(target=owner)
    thread.start()
    ready.wait(5)
    return {"thread": thread, "stop": stop}


def stop_owner(ctx: dict[str, Any]) -> None:
    ctx["stop"].set()
    ctx["thread"].join(10)


def collected(pool: tether.Pool, fake: FakeDriver, ctx: Any) -> None:
    conn = pool.connection()
    run_query(conn)
    del conn
    gc.collect()


def maintenance_round(pool: tether.Pool, fake: FakeDriver) -> None:
    """Idle connections to retire (expired, dead) and to ping; min_size to refill."""
    conns = [pool.connection() for _ in range(3)]
    for conn in conns:
        conn.close()
    expired, killed, stale = pool._state.idle
    expired.expires = 0.0
    fake.connections[killed.session_id - fake.connections[0].id].kill()
    stale.last_used -= 3600


def maintain(pool: tether.Pool, fake: FakeDriver, ctx: Any) -> None:
    pool._housekeeper.maintain()


def close(pool: tether.Pool, fake: FakeDriver, ctx: Any) -> None:
    pool.close()


def two_idle(pool: tether.Pool, fake: FakeDriver) -> None:
    conns = [pool.connection() for _ in range(2)]
    for conn in conns:
        conn.close()


SCENARIOS = [
    Scenario("check-out, trusted", checkout_only, warm),
    Scenario("check-out, polled", checkout_only, aged(7200), {"ping_after": 10_000}),
    Scenario("check-out, pinged", checkout_only, aged(7200)),
    Scenario("check-out, opened", checkout_query),
    Scenario("check-out, dead one replaced", checkout_query, dead, {"ping_after": 10_000}),
    Scenario("statements and fetch", statements("SELECT 1", "SELECT 2"), warm),
    Scenario("give-back, session reset", statements("SET @x = 1"), warm),
    Scenario("give-back, rollback", statements("SELECT 1", begin=True), warm),
    Scenario("transaction", transaction, warm),
    Scenario("read replayed after a lost connection", replayed_read, warm),
    Scenario("connection lost in a transaction", lost_transaction, warm),
    Scenario("waited for", checkout_only, held_elsewhere, {"max_size": 1}, join),
    Scenario("timed out", times_out, held_here, {"max_size": 1}, release_held),
    Scenario("backed off at a cap", checkout_query, capped_once, clocked=True),
    Scenario(
        "another thread's session",
        checkout_query,
        other_threads_session,
        {"max_size": 1},
        stop_owner,
    ),
    Scenario("garbage-collected", collected, warm),
    Scenario("maintenance", maintain, maintenance_round, {"min_size": 4, "max_size": 4}),
    Scenario("close", close, two_idle),
]


class StingyStore(MemoryStore):
    """Refuses the next ``deny`` leases, as a full budget would."""

    deny = 0

    def acquire(self, holder: str, **kwargs: Any) -> Any:
        if self.deny > 0:
            self.deny -= 1
            return False, super().renew(
                holder,
                held=self.held.get(holder, 0),
                **{k: v for k, v in kwargs.items() if k in ("waiting", "cap", "ttl", "info")},
            )
        return super().acquire(holder, **kwargs)


def store_of(pool: tether.Pool) -> StingyStore:
    gate = pool._connector.gate
    assert gate is not None
    return gate.store  # type: ignore[return-value]


def budget_full_once(pool: tether.Pool, fake: FakeDriver) -> None:
    store_of(pool).deny = 1
    pool._state.backoff = FixedBackoff()


def over_share(pool: tether.Pool, fake: FakeDriver) -> None:
    warm(pool, fake)
    pool._state.surplus = 1


def wanted_elsewhere(pool: tether.Pool, fake: FakeDriver) -> StingyStore:
    """Two idle connections, the whole cap held, and another process waiting for two."""
    two_idle(pool, fake)
    store = store_of(pool)
    store.held["elsewhere"] = 0
    store.expiry["elsewhere"] = time.monotonic() + 3600
    store.waiting["elsewhere"] = 2
    return store


def served_elsewhere(store: StingyStore) -> None:
    store.waiting.pop("elsewhere")


def make_pool(flavour: type[tether.Pool], fake: FakeDriver, scenario: Scenario) -> tether.Pool:
    options: dict[str, Any] = {
        "driver": fake,
        "max_size": 2,
        "timeout": 2,
        "watchdog": None,
        "maintenance_interval": 3600,  # rounds run only where a scenario runs one
    }
    options.update(scenario.options or {})
    if options.get("budget"):
        options["budget"] = StingyStore()
        options["budget_cap"] = options["max_size"]
        options["budget_ttl"] = 7200.0
    return flavour(DSN, **options)


def check_consistent(pool: tether.Pool, fake: FakeDriver) -> None:
    gc.collect(1)  # proxies the run dropped (young) are queued by their finalizers...
    pool._housekeeper.maintain()  # ... and a maintenance round takes them back
    state = pool._state
    with pool._lock:
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


def check_budget_before_renewal(pool: tether.Pool) -> None:
    """Whatever was interrupted, the store never counts fewer leases than the connections
    open (a lease freed twice, or freed before its connection closed, would show here)."""
    gate = pool._connector.gate
    if gate is None:
        return
    gc.collect()
    store = store_of(pool)
    assert store.held.get(gate.holder, 0) >= len(pool._state.entries), "a lease freed early"
    assert gate.held >= len(pool._state.entries), "a connection open without its lease"


def check_budget(pool: tether.Pool) -> None:
    """After the renewal (check_consistent runs a maintenance round): one lease per open
    connection, in the gate and in the store; nothing leaked."""
    gate = pool._connector.gate
    if gate is None:
        return
    gc.collect()
    store = store_of(pool)
    entries = pool._state.entries
    assert all(entry.budget is not None for entry in entries), "a connection without a lease"
    assert gate.held == len(entries), f"{gate.held} leases held for {len(entries)} connections"
    if pool.closed:
        # No renewal any more: what an interrupted close left in the store lapses.
        assert store.expiry.get(gate.holder, 0) <= time.monotonic() + pool.config.budget_ttl
    else:
        assert store.held.get(gate.holder, 0) == len(entries), "the store disagrees after renewal"
    assert store.total <= store.cap


def check_serves(pool: tether.Pool) -> None:
    if pool.closed:
        return
    conns = [pool.connection(timeout=2) for _ in range(pool.config.max_size)]
    for conn in conns:
        run_query(conn)
    for conn in conns:
        conn.close()
    stats = pool.stats()
    assert stats.in_use == 0 and stats.size <= pool.config.max_size


def run_scenario(
    flavour: type[tether.Pool], scenario: Scenario, at: int | None, error: type[BaseException]
) -> tuple[int, str | None]:
    # A connection back for under TRUSTED seconds is handed out without a look at its
    # socket: how long a traced run takes must not decide which path it follows. Widened
    # here, so that only the scenarios that age a connection on purpose look.
    trusted, policy.TRUSTED = policy.TRUSTED, 3600.0
    try:
        return _run_scenario(flavour, scenario, at, error)
    finally:
        policy.TRUSTED = trusted


def _run_scenario(
    flavour: type[tether.Pool], scenario: Scenario, at: int | None, error: type[BaseException]
) -> tuple[int, str | None]:
    fake = FakeDriver()
    pool = make_pool(flavour, fake, scenario)
    try:
        ctx = scenario.setup(pool, fake) if scenario.setup else None

        def action() -> None:
            if not scenario.clocked:
                scenario.action(pool, fake, ctx)
                return
            real, time.monotonic = time.monotonic, SteppingClock()
            try:
                scenario.action(pool, fake, ctx)
            finally:
                time.monotonic = real

        if at is None:
            points = trace_points(action)
            fired = None
        else:
            points = at
            escaped, fired = inject_at(action, at, error)
            if fired is not None and not fired.endswith("in a finalizer"):
                assert escaped is not None and escaped.startswith(f"{error.__name__}: "), (
                    f"injected {error.__name__} at {fired}, but {escaped} escaped"
                )
            elif fired is None:
                assert escaped is None, f"{escaped} escaped without an injection"
        if scenario.after:
            scenario.after(ctx)
        check_budget_before_renewal(pool)
        check_consistent(pool, fake)
        check_budget(pool)
        check_serves(pool)
        check_consistent(pool, fake)
        check_budget(pool)
        return points, fired
    finally:
        pool.close()
        assert not [c for c in fake.connections if not c.closed], "open after close"


FLAVOURS = [tether.Pool, tether.ThreadLocalPool]

BUDGET = {"budget": True}

# The paths that take, settle or renew a lease of a fleet-wide budget (an in-memory store with
# the Redis store's semantics).
BUDGET_SCENARIOS = [
    Scenario("budget: opened", checkout_query, None, BUDGET),
    Scenario("budget: dead one replaced", checkout_query, dead, {**BUDGET, "ping_after": 10_000}),
    Scenario("budget: waited for", checkout_only, held_elsewhere, {**BUDGET, "max_size": 1}, join),
    Scenario(
        "budget: no lease, waited out", checkout_query, budget_full_once, BUDGET, clocked=True
    ),
    Scenario("budget: over its share, closed at give-back", checkout_query, over_share, BUDGET),
    Scenario(
        "budget: idle closed for another process",
        maintain,
        wanted_elsewhere,
        BUDGET,
        served_elsewhere,
    ),
    Scenario("budget: close", close, two_idle, BUDGET),
]


@pytest.mark.slow
@pytest.mark.parametrize("error", [Interrupt, AlarmError], ids=["interrupt", "alarm"])
@pytest.mark.parametrize("flavour", FLAVOURS, ids=["Pool", "ThreadLocalPool"])
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_an_exception_at_every_point_leaves_the_pool_consistent(
    scenario: Scenario, flavour: type[tether.Pool], error: type[BaseException]
) -> None:
    run_scenario(flavour, scenario, None, error)  # fills the caches a first run fills
    total, _ = run_scenario(flavour, scenario, None, error)
    assert total > 0
    missed = []
    for at in range(1, total + 1):
        try:
            _, fired = run_scenario(flavour, scenario, at, error)
        except AssertionError as exc:
            raise AssertionError(f"{scenario.name}, injection at point {at}: {exc}") from None
        if fired is None:
            missed.append(at)
    # Every point of the undisturbed run was reached (a run may branch away after the
    # injection point, but never before it).
    assert not missed, f"points never reached: {missed}"
    print(f"{scenario.name} [{flavour.__name__}, {error.__name__}]: {total} points")


@pytest.mark.slow
@pytest.mark.parametrize("scenario", BUDGET_SCENARIOS, ids=[s.name for s in BUDGET_SCENARIOS])
def test_an_exception_at_every_point_leaks_no_budget_lease(scenario: Scenario) -> None:
    # Interrupt only: the budget's paths handle every exception alike (BaseException).
    test_an_exception_at_every_point_leaves_the_pool_consistent(scenario, tether.Pool, Interrupt)
