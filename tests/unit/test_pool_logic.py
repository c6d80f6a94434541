"""Pool logic against the scripted fake driver: bounds, waiting, deadlines, fairness,
health checks at checkout, return cleaning, errors and leaks."""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest

import tether

from .fakedriver import FakeDriver, FakeOperationalError


def run_threads(target: Callable[..., None], args: Sequence[tuple[Any, ...]]) -> None:
    """Run ``target(*a)`` for each ``a`` on its own thread, all at once; wait (bounded)."""
    threads = [threading.Thread(target=target, args=a) for a in args]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "a thread is still running after 30 s"


def test_checkout_reuses_the_threads_last_connection(make_pool: Any, fake: FakeDriver) -> None:
    pool = make_pool(max_size=4)
    with pool.connection() as a:
        first = a.thread_id()
    for _ in range(100):
        with pool.connection() as c:
            assert c.thread_id() == first
    assert fake.connects == 1
    assert pool.stats()["checkouts"] == 101


def test_never_more_than_max_size_under_contention(make_pool: Any, fake: FakeDriver) -> None:
    fake.connect_delay = 0.002
    pool = make_pool(max_size=4, timeout=10)
    errors: list[BaseException] = []
    in_use_max = 0
    lock = threading.Lock()
    current = 0

    def work() -> None:
        nonlocal in_use_max, current
        try:
            for _ in range(50):
                with pool.connection() as conn:
                    with lock:
                        current += 1
                        in_use_max = max(in_use_max, current)
                    conn.cursor().execute("SELECT 1")
                    time.sleep(0.0002)
                    with lock:
                        current -= 1
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    run_threads(work, [()] * 32)
    assert not errors
    assert fake.max_open <= 4
    assert in_use_max <= 4
    stats = pool.stats()
    assert stats.size <= 4 and stats.in_use == 0 and stats.waiting == 0
    assert stats["waits"] > 0


def test_waiters_are_served_in_arrival_order(make_pool: Any) -> None:
    pool = make_pool(max_size=1, timeout=10)
    holder = pool.connection()
    order: list[int] = []
    started: list[threading.Event] = []

    def wait_for(i: int, ready: threading.Event) -> None:
        ready.set()
        with pool.connection():
            order.append(i)

    threads = []
    for i in range(5):
        ready = threading.Event()
        t = threading.Thread(target=wait_for, args=(i, ready))
        t.start()
        ready.wait()
        # Let the thread get in line before the next one starts.
        deadline = time.monotonic() + 2
        while pool.stats().waiting < i + 1 and time.monotonic() < deadline:
            time.sleep(0.001)
        threads.append(t)
        started.append(ready)
    holder.close()
    for t in threads:
        t.join(10)
    assert order == [0, 1, 2, 3, 4]


def test_timeout_error_says_who_holds_the_connections(make_pool: Any) -> None:
    pool = make_pool(max_size=2, timeout=0.3, name="orders")
    held = []

    def grab() -> None:
        held.append(pool.connection())  # a line the error must point at

    t = threading.Thread(target=grab, name="worker-7")
    t.start()
    t.join()
    held.append(pool.connection())
    start = time.monotonic()
    with pytest.raises(tether.PoolTimeout) as info:
        pool.connection()
    elapsed = time.monotonic() - start
    assert 0.25 <= elapsed < 1.5
    message = str(info.value)
    assert "orders" in message
    assert "size 2/2" in message and "in use 2" in message and "idle 0" in message
    assert "worker-7" in message
    assert "test_pool_logic.py" in message and "in grab" in message
    assert "s3cret-pw" not in message
    assert pool.stats()["timeouts"] == 1
    for c in held:
        c.close()


def test_closed_pool_refuses_and_wakes_waiters(make_pool: Any) -> None:
    pool = make_pool(max_size=1, timeout=10)
    held = pool.connection()
    outcome: list[BaseException] = []

    def wait() -> None:
        try:
            pool.connection()
        except BaseException as exc:
            outcome.append(exc)

    t = threading.Thread(target=wait)
    t.start()
    while pool.stats().waiting < 1:
        time.sleep(0.001)
    pool.close()
    t.join(5)
    assert not t.is_alive()
    assert isinstance(outcome[0], tether.PoolClosed)
    with pytest.raises(tether.PoolClosed):
        pool.connection()
    held.close()  # returned to a closed pool: closed, no error
    assert pool.stats().size == 0


def test_use_after_return_and_double_return_are_clear_errors(make_pool: Any) -> None:
    pool = make_pool()
    conn = pool.connection()
    cur = conn.cursor()
    conn.close()
    with pytest.raises(tether.ConnectionReleased):
        conn.close()
    with pytest.raises(tether.ConnectionReleased):
        conn.cursor()
    with pytest.raises(tether.ConnectionReleased):
        cur.execute("SELECT 1")
    assert conn.closed


def test_dead_idle_connection_is_replaced_silently(make_pool: Any, fake: FakeDriver) -> None:
    pool = make_pool()
    with pool.connection() as c:
        first = c.thread_id()
    fake.connections[0].kill()
    time.sleep(0.01)  # past the millisecond in which a just-returned connection is trusted
    with pool.connection() as c:
        c.cursor().execute("SELECT 1")
        assert c.thread_id() != first
    assert pool.stats()["replaced"] == 1
    assert pool.stats().closed_by_reason == {"closed by the server": 1}


def test_connection_back_for_under_a_millisecond_is_trusted(
    make_pool: Any, fake: FakeDriver
) -> None:
    # A tight loop skips the socket poll; a connection that died in that gap is found by its
    # first statement, which is replayed if nothing can have run twice (a read here).
    pool = make_pool()
    with pool.connection() as c:
        first = c.thread_id()
        fake.connections[0].kill()
    with pool.connection() as c:
        c.cursor().execute("SELECT 1")
        assert c.thread_id() != first
    stats = pool.stats()
    # Replayed (trusted, the usual case) or, on a machine that stalled over a millisecond
    # between the two lines, replaced at checkout: never an error.
    assert stats["replays"] + stats["replaced"] == 1


def test_idle_connection_is_pinged_only_after_ping_after(make_pool: Any, fake: FakeDriver) -> None:
    pool = make_pool(ping_after=0.2)
    for _ in range(20):
        with pool.connection():
            pass
    assert fake.connections[0].pings == 0
    time.sleep(0.25)
    with pool.connection():
        pass
    assert fake.connections[0].pings == 1
    fake.ping_ok = False
    time.sleep(0.25)
    with pool.connection() as c:
        assert c.thread_id() != fake.connections[0].id
    assert pool.stats()["ping_failures"] == 1


def test_authentication_error_fails_fast(make_pool: Any, fake: FakeDriver) -> None:
    fake.failures.append(FakeOperationalError(1045, "Access denied for user 'app'"))
    pool = make_pool(timeout=10)
    start = time.monotonic()
    with pytest.raises(FakeOperationalError) as info:
        pool.connection()
    assert time.monotonic() - start < 1
    assert info.value.args[0] == 1045
    assert pool.stats().size == 0


def test_capacity_error_is_backpressure_not_failure(make_pool: Any, fake: FakeDriver) -> None:
    pool = make_pool(max_size=4, timeout=5)
    held = pool.connection()
    for _ in range(3):
        fake.failures.append(FakeOperationalError(1226, "max_user_connections"))
    result: list[Any] = []

    def borrow() -> None:
        with pool.connection() as c:
            result.append(c.thread_id())

    t = threading.Thread(target=borrow)
    t.start()
    time.sleep(0.3)
    held.close()  # the waiter gets this one
    t.join(5)
    assert result, "the waiter never got a connection"
    stats = pool.stats()
    assert stats["capacity_errors"] >= 1
    assert "1226" in (stats.last_connect_error or "")


def test_outage_is_waited_out_until_the_deadline(make_pool: Any, fake: FakeDriver) -> None:
    for _ in range(4):
        fake.failures.append(FakeOperationalError(2003, "Can't connect"))
    pool = make_pool(timeout=10)
    start = time.monotonic()
    with pool.connection() as c:
        c.cursor().execute("SELECT 1")
    assert time.monotonic() - start < 5
    assert pool.stats()["connect_errors"] == 4


def test_outage_past_the_deadline_names_the_last_error(make_pool: Any, fake: FakeDriver) -> None:
    for _ in range(1000):
        fake.failures.append(FakeOperationalError(2003, "Can't connect to server"))
    pool = make_pool(timeout=0.5)
    start = time.monotonic()
    with pytest.raises(tether.PoolTimeout) as info:
        pool.connection()
    assert time.monotonic() - start < 2
    assert "Can't connect to server" in str(info.value)


def test_return_rolls_back_only_an_open_transaction(make_pool: Any, fake: FakeDriver) -> None:
    pool = make_pool()
    with pool.connection() as c:
        c.cursor().execute("SELECT 1")
    with pool.connection() as c:
        c.begin()
        c.cursor().execute("INSERT 1")
    conn = fake.connections[0]
    assert conn.statements.count("ROLLBACK") == 1
    assert pool.stats()["rollbacks"] == 1


def test_changed_session_is_reset_on_return(make_pool: Any, fake: FakeDriver) -> None:
    pool = make_pool()
    with pool.connection() as c:
        c.cursor().execute("SET @x = 1")
    assert "<reset>" in fake.connections[0].statements
    with pool.connection() as c:
        c.cursor().execute("SELECT 1")
    assert fake.connections[0].statements.count("<reset>") == 1


def test_autocommit_flip_is_restored(make_pool: Any, fake: FakeDriver) -> None:
    pool = make_pool()
    with pool.connection() as c:
        c.autocommit(False)
    assert fake.connections[0].status & 0x2


def test_a_transaction_through_autocommit_needs_no_reset(make_pool: Any, fake: FakeDriver) -> None:
    # What an ORM does for each transaction (Django's atomic()): autocommit off, statements,
    # commit, autocommit on. The status bits track autocommit; the switch is no session state.
    pool = make_pool()
    for _ in range(3):
        with pool.connection() as c:
            c.autocommit(False)
            c.cursor().execute("UPDATE t SET n = n + 1")
            c.commit()
            c.autocommit(True)
    assert "<reset>" not in fake.connections[0].statements
    assert pool.stats()["resets"] == 0 and fake.connects == 1


def test_autocommit_left_off_is_restored_without_a_reset(make_pool: Any, fake: FakeDriver) -> None:
    pool = make_pool()
    with pool.connection() as c:
        c.autocommit(False)
    assert fake.connections[0].status & 0x2
    assert "<reset>" not in fake.connections[0].statements


def test_read_lost_with_autocommit_switched_off_is_not_replayed(
    make_pool: Any, fake: FakeDriver
) -> None:
    # No transaction is open yet, but a fresh session would have autocommit on: the read, and
    # what the caller runs after it, would run outside the transaction it asked for.
    pool = make_pool()
    with pool.connection() as c:
        c.autocommit(False)
        fake.connections[0].kill()
        with pytest.raises(FakeOperationalError):
            c.cursor().execute("SELECT 1")
    assert pool.stats()["replays"] == 0


def test_max_lifetime_retires_connections(make_pool: Any, fake: FakeDriver) -> None:
    pool = make_pool(max_lifetime=0.2)
    with pool.connection() as c:
        first = c.thread_id()
    time.sleep(0.25)
    with pool.connection() as c:
        assert c.thread_id() != first


def test_lifetimes_follow_the_servers_wait_timeout(make_pool: Any, fake: FakeDriver) -> None:
    fake.wait_timeout = 10
    pool = make_pool(max_lifetime=3600, idle_timeout=600)
    with pool.connection():
        pass
    assert pool.lifetimes.max_lifetime is not None and pool.lifetimes.max_lifetime < 10
    assert pool.lifetimes.idle_timeout is not None and pool.lifetimes.idle_timeout < 10
    assert pool.lifetimes.keepalive is not None and pool.lifetimes.keepalive < 10


def test_maintenance_refills_min_size_and_keeps_idle_alive(
    make_pool: Any, fake: FakeDriver
) -> None:
    pool = make_pool(min_size=2, max_size=4, keepalive=0.2, maintenance_interval=0.05)
    deadline = time.monotonic() + 3
    while pool.stats().idle < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert pool.stats().idle == 2
    time.sleep(0.5)
    assert pool.stats()["pings"] >= 2


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"max_size": 0}, "max_size"),
        ({"min_size": -1}, "min_size"),
        ({"min_size": 5, "max_size": 2}, "min_size"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": -1.0}, "timeout"),
        ({"connect_timeout": 0}, "connect_timeout"),
        ({"max_lifetime": -5}, "max_lifetime"),
        ({"ping_after": -1}, "ping_after"),
        ({"init_commands": "SET x=1"}, "init_commands"),
        ({"connect_args": {"password": "x"}}, "password"),
    ],
)
def test_impossible_options_name_the_option(
    make_pool: Any, options: dict[str, Any], name: str
) -> None:
    with pytest.raises(ValueError, match=name):
        make_pool(**options)


def test_a_bad_checkout_timeout_is_refused_also_with_an_idle_connection(make_pool: Any) -> None:
    pool = make_pool()
    with pool.connection():
        pass  # the thread's own connection is now idle: the fast path would hand it out
    for bad in (0, -1.0):
        with pytest.raises(ValueError, match="timeout"):
            pool.connection(timeout=bad)
    with pool.connection(timeout=1.0):
        pass
    assert pool.stats().in_use == 0


def test_the_fast_path_stays_fair_and_bounded_across_threads(
    make_pool: Any, fake: FakeDriver
) -> None:
    # Threads that keep reusing their own connection never take one another's, never exceed
    # the bound, and the counters add up.
    pool = make_pool(max_size=3, timeout=10)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(300):
                with pool.connection():
                    assert pool.stats().in_use <= 3
        except BaseException as exc:
            errors.append(exc)

    run_threads(worker, [()] * 6)
    assert not errors
    stats = pool.stats()
    assert stats["checkouts"] == 6 * 300 and stats.in_use == 0
    assert len(fake.connections) <= 3


def test_options_are_keyword_only(fake: FakeDriver) -> None:
    with pytest.raises(TypeError):
        tether.Pool("mysql://a@h/d", fake, 4)  # type: ignore[misc]


def test_password_never_shown(make_pool: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="tether")
    pool = make_pool()
    with pool.connection() as c:
        text = repr(pool) + repr(c) + repr(pool.stats()) + repr(pool.dsn) + str(pool.dsn)
    pool.close()
    text += caplog.text
    assert "s3cret-pw" not in text
    assert "app:***@" in repr(pool)


def test_garbage_collected_connection_is_reclaimed_with_a_warning(
    make_pool: Any, caplog: pytest.LogCaptureFixture
) -> None:
    pool = make_pool(max_size=1, timeout=2)

    def forgetful() -> None:
        conn = pool.connection()
        conn.cursor().execute("SELECT 1")

    forgetful()
    gc.collect()
    with pool.connection() as c:  # would time out if the leaked one were not reclaimed
        c.cursor().execute("SELECT 1")
    assert pool.stats()["reclaimed"] == 1
    assert "garbage-collected without being returned" in caplog.text
    assert "in forgetful" in caplog.text


def test_leak_threshold_logs_the_acquiring_stack(
    make_pool: Any, caplog: pytest.LogCaptureFixture
) -> None:
    pool = make_pool(leak_timeout=0.1, maintenance_interval=0.05)

    def hold_too_long() -> None:
        with pool.connection():
            time.sleep(0.4)

    hold_too_long()
    assert pool.stats()["leaks"] == 1
    assert "possible leak" in caplog.text
    assert "hold_too_long" in caplog.text


def test_threadlocal_pool_keeps_one_connection_per_thread(make_pool: Any) -> None:
    pool = make_pool(tether.ThreadLocalPool, max_size=8)
    seen: dict[str, set[int]] = {}

    def work(name: str) -> None:
        for _ in range(20):
            with pool.connection() as c:
                seen.setdefault(name, set()).add(c.thread_id())
            time.sleep(0.001)

    run_threads(work, [(f"t{i}",) for i in range(4)])
    assert all(len(ids) == 1 for ids in seen.values())
    assert len(set().union(*seen.values())) == 4


def test_threadlocal_pool_at_its_bound_takes_over_and_resets(
    make_pool: Any, fake: FakeDriver
) -> None:
    pool = make_pool(tether.ThreadLocalPool, max_size=1, timeout=2)
    done = threading.Event()
    release = threading.Event()

    def owner() -> None:
        with pool.connection() as c:
            c.cursor().execute("SET @secret = 1")
        done.set()
        release.wait(5)  # alive, but not using its connection

    t = threading.Thread(target=owner)
    t.start()
    done.wait(5)
    with pool.connection() as c:  # takes over the other thread's connection
        assert "<reset>" in fake.connections[0].statements
        c.cursor().execute("SELECT 1")
    release.set()
    t.join()
    assert pool.stats()["takeovers"] == 1


def test_threadlocal_pool_reclaims_connections_of_ended_threads(make_pool: Any) -> None:
    pool = make_pool(tether.ThreadLocalPool, max_size=2, maintenance_interval=0.05)

    def once() -> None:
        with pool.connection() as c:
            c.cursor().execute("SELECT 1")

    t = threading.Thread(target=once)
    t.start()
    t.join()
    deadline = time.monotonic() + 2
    while pool.stats()["reclaimed"] < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert pool.stats()["reclaimed"] == 1


def test_error_table_can_be_extended_per_pool(make_pool: Any, fake: FakeDriver) -> None:
    # A proxy in front of the server answers 9001 while its backends restart: treat it as
    # a capacity error (back off and wait), not as a failure.
    fake.failures.extend(FakeOperationalError(9001, "proxy: no backend") for _ in range(3))
    pool = make_pool(timeout=5, error_kinds={9001: tether.ErrorKind.CAPACITY})
    with pool.connection() as c:
        c.cursor().execute("SELECT 1")
    assert pool.stats()["capacity_errors"] == 3


def test_unknown_connect_error_is_raised_not_retried(make_pool: Any, fake: FakeDriver) -> None:
    fake.failures.append(FakeOperationalError(9001, "proxy: no backend"))
    pool = make_pool(timeout=5)
    with pytest.raises(FakeOperationalError):
        pool.connection()
    assert fake.connects == 1


def test_stats_percentiles_and_repr(make_pool: Any) -> None:
    pool = make_pool(max_size=2, name="reports")
    for _ in range(10):
        with pool.connection():
            time.sleep(0.001)
    stats = pool.stats()
    assert stats.hold_time["count"] == 10
    assert 0.001 <= stats.hold_time["p50"] < 1
    assert stats.wait_time == {"count": 0}
    assert stats.as_dict()["counters"]["checkouts"] == 10
    assert repr(pool).startswith("<Pool 'reports' mysql://app:***@127.0.0.1:3306/app open size=1/2")


def test_prometheus_collector_exports_pool_stats(make_pool: Any) -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    from tether.contrib.prometheus import register

    pool = make_pool(name="orders")
    with pool.connection():
        pass
    registry = prometheus_client.CollectorRegistry()
    register(pool, registry)
    text = prometheus_client.generate_latest(registry).decode()
    assert 'tether_pool_checkouts_total{pool="orders"} 1.0' in text
    assert 'tether_pool_idle{pool="orders"} 1.0' in text
    assert "s3cret" not in text


def test_cursors_extend_the_drivers_own_class(make_pool: Any, fake: FakeDriver) -> None:
    from tether.connection import cursor_class

    from .fakedriver import FakeCursor

    class SlottedCursor:
        __slots__ = ("conn",)

        def __init__(self, conn: Any) -> None:
            self.conn = conn

    pool = make_pool()
    with pool.connection() as c:
        cur = c.cursor()
        assert type(cur) is cursor_class(FakeCursor, False)  # made once per class
        assert isinstance(cur, FakeCursor) and isinstance(cur, tether.Cursor)
        assert cur.execute("SELECT 1") == 1 and cur.fetchone() == (1,)
        assert cursor_class(type(cur), False) is type(cur)  # already tether's
        with pytest.raises(TypeError, match="__slots__"):
            c.cursor(SlottedCursor)
        with pytest.raises(TypeError, match="cursor class"):
            c.cursor(FakeCursor, 1)
        with pytest.raises(TypeError, match="cursor class"):
            c.cursor(buffered=False)
        assert type(c.cursor(None)) is type(c.cursor(cursor=None)) is type(cur)
    with pytest.raises(tether.ConnectionReleased):
        cur.execute("SELECT 1")


def test_return_reads_the_status_afresh(make_pool: Any, fake: FakeDriver) -> None:
    # A transaction opened behind the cursors' back (the driver's connection used directly)
    # is seen by the return: the bits it decides on are read when the connection comes back.
    pool = make_pool()
    with pool.connection() as c:
        c.cursor().execute("SELECT 1")
        fake.connections[0].status |= 0x1  # SERVER_STATUS_IN_TRANS
    assert fake.connections[0].statements[-1] == "ROLLBACK"
    with pool.connection() as c:
        c.cursor().execute("SELECT 1")
        fake.connections[0].status |= 0x8  # more results, never read
    assert pool.stats().closed_by_reason == {"unread results": 1}
    with pool.connection() as c:
        c.cursor().execute("SELECT 1")
    assert pool.stats()["opened"] == 2
