"""The compiled fast paths (tether._speedups) are in place where they should be, and the
check-out call behaves the same with and without them: `make test` runs the pool suites a
second time with TETHER_NO_SPEEDUPS=1, so every behaviour test covers both."""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import sys
import threading
import weakref
from pathlib import Path
from typing import Any

import pytest

import tether
from tether import drivers as _drivers
from tether import pool as pool_module

from .conftest import DSN
from .fakedriver import FakeCursor, FakeDriver

PURE = os.environ.get("TETHER_NO_SPEEDUPS", "") not in ("", "0")
CPYTHON_311 = sys.implementation.name == "cpython" and sys.version_info >= (3, 11)


@pytest.mark.skipif(PURE or not CPYTHON_311, reason="compiled paths switched off or unsupported")
def test_the_compiled_fast_paths_are_in_use() -> None:
    # `make test` builds them (a C compiler and Python's headers are among its set-up): a
    # failed build must not pass unnoticed as a slower, untested configuration.
    assert pool_module.SPEEDUPS
    assert type(tether.Pool.connection).__name__ == "method_descriptor"
    assert type(tether.PooledConnection.__exit__).__name__ == "method_descriptor"


@pytest.mark.skipif(PURE or not CPYTHON_311, reason="compiled paths switched off or unsupported")
def test_the_compiled_module_is_built_from_this_source() -> None:
    # The build is optional: when a rebuild fails, pip only warns, and an older build left
    # beside the source would be tested in its place.
    source = Path(pool_module.__file__).with_name("_speedups.c")
    if not source.exists():
        pytest.skip("installed without its C source")
    built = _drivers.speedups.SOURCE_SHA256
    assert built == hashlib.sha256(source.read_bytes()).hexdigest(), (
        "tether._speedups was built from another version of _speedups.c: rebuild it"
        " (pip install -e .) and read the compiler's errors"
    )


@pytest.mark.skipif(not PURE, reason="only with TETHER_NO_SPEEDUPS=1")
def test_switched_off_the_python_methods_run() -> None:
    assert not pool_module.SPEEDUPS
    assert type(tether.Pool.connection).__name__ == "function"


def test_timeout_by_position_or_keyword(make_pool: Any) -> None:
    pool = make_pool(max_size=1)
    with pool.connection(5) as a:
        assert not a.closed
    with pool.connection(timeout=5.0) as b:
        assert not b.closed
    assert pool.stats()["checkouts"] == 2


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((1, 2), {}), ((), {"deadline": 1}), ((1,), {"timeout": 1})],
    ids=["two positional", "unknown keyword", "twice"],
)
def test_bad_checkout_arguments_are_a_type_error(
    make_pool: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    pool = make_pool(max_size=1)
    with pool.connection():
        pass
    with pytest.raises(TypeError):
        pool.connection(*args, **kwargs)
    assert pool.stats()["in_use"] == 0


@pytest.mark.parametrize("timeout", [0, -1.0])
def test_a_timeout_that_is_not_positive_is_a_value_error(make_pool: Any, timeout: float) -> None:
    pool = make_pool(max_size=1)
    with pool.connection():
        pass
    with pytest.raises(ValueError, match="timeout"):
        pool.connection(timeout)
    assert pool.stats()["in_use"] == 0


def test_where_a_connection_was_acquired_is_the_callers_line(make_pool: Any) -> None:
    pool = make_pool(max_size=2)
    for _ in range(2):  # the first check-out opens, the second takes the fast path
        with pool.connection() as conn:
            line = sys._getframe().f_lineno - 1
            where = conn._entry.where()
        assert where.endswith(f"test_speedups.py:{line} in {sys._getframe().f_code.co_name}")


def test_acquired_where_follows_each_call_site(make_pool: Any) -> None:
    # The compiled path keeps the (code, offset) already recorded when a loop checks out at
    # the same place again: a different place, or a different function, must replace it.
    pool = make_pool(max_size=1)

    def elsewhere() -> str:
        with pool.connection() as conn:
            return conn._entry.where()

    name = sys._getframe().f_code.co_name
    for _ in range(3):
        with pool.connection() as conn:
            line_a = sys._getframe().f_lineno - 1
            where_a = conn._entry.where()
        with pool.connection() as conn:
            line_b = sys._getframe().f_lineno - 1
            where_b = conn._entry.where()
        assert where_a.endswith(f"test_speedups.py:{line_a} in {name}")
        assert where_b.endswith(f"test_speedups.py:{line_b} in {name}")
        assert " in elsewhere" in elsewhere()


def test_leak_stack_and_place_are_recorded_on_the_fast_path(make_pool: Any) -> None:
    # With a leak threshold the place comes from the acquiring stack, not the caller's frame.
    pool = make_pool(max_size=1, leak_timeout=60)
    for _ in range(2):
        with pool.connection() as conn:
            line = sys._getframe().f_lineno - 1
            entry = conn._entry
            assert entry.acquired is not None
            assert entry.acquired[0] is sys._getframe().f_code
            assert f'test_speedups.py", line {line}, in {_name()}' in entry.where()


def _name() -> str:
    return sys._getframe(1).f_code.co_name


@pytest.mark.parametrize("attribute", ["_leaked", "_lock"])
def test_a_deleted_pool_attribute_is_named_in_the_error(make_pool: Any, attribute: str) -> None:
    # The compiled paths read the pool's slots directly: one that is gone is an
    # AttributeError naming it, as in Python, never a crash or a silent default (its
    # numbers, in PoolCore, cannot be deleted: a TypeError, tested below); and a
    # check-out that fails that way after taking its connection gives up the slot (the
    # pool of one serves the next check-out at once).
    pool = make_pool(max_size=1, timeout=2)
    with pool.connection():
        pass
    saved = getattr(pool, attribute)
    delattr(pool, attribute)
    try:
        with pytest.raises(AttributeError, match=attribute.lstrip("_")):
            with pool.connection():
                pass
    finally:
        setattr(pool, attribute, saved)
    with pool.connection():
        pass


def test_leak_stack_is_recorded_on_the_fast_path(make_pool: Any) -> None:
    pool = make_pool(max_size=1, leak_timeout=60)
    for _ in range(2):
        with pool.connection() as conn:
            stack = conn._entry.stack
            assert stack is not None
            assert stack[-1].name == "test_leak_stack_is_recorded_on_the_fast_path"


@pytest.mark.parametrize("on_the_slow_path", [False, True])
@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
def test_an_interrupted_health_check_does_not_cost_the_pool_a_slot(
    make_pool: Any,
    fake: FakeDriver,
    monkeypatch: pytest.MonkeyPatch,
    interrupt: type,
    on_the_slow_path: bool,
) -> None:
    # Ctrl-C (or sys.exit() from a signal handler) during the ping of a connection idle past
    # ping_after: nobody holds it, and its session may be mid-protocol, so it is closed and
    # its slot freed. (An Exception in a ping is a failed ping: replaced, not raised.)
    pool = make_pool(max_size=1, ping_after=0, timeout=2)
    with pool.connection() as conn:
        first = conn._entry
    real_ping = fake.ping

    def ping(raw: Any, timeout: float) -> None:
        raise interrupt()

    monkeypatch.setattr(fake, "ping", ping)
    if on_the_slow_path:
        # Another thread: it takes the idle connection over through _checkout.
        raised: list[BaseException] = []

        def other() -> None:
            try:
                pool.connection()
            except BaseException as exc:
                raised.append(exc)

        t = threading.Thread(target=other)
        t.start()
        t.join(10)
        assert [type(e) for e in raised] == [interrupt]
    else:
        with pytest.raises(interrupt):
            pool.connection()
    assert first.raw is None  # closed
    stats = pool.stats()
    assert (stats["size"], stats["in_use"]) == (0, 0)
    monkeypatch.setattr(fake, "ping", real_ping)
    with pool.connection() as conn:  # at once, on a new connection
        assert conn._entry is not first


def test_exit_twice_and_close_after_exit(make_pool: Any) -> None:
    pool = make_pool(max_size=1)
    conn = pool.connection()
    with conn:
        pass
    conn.__exit__(None, None, None)  # a second exit does nothing
    with pytest.raises(tether.ConnectionReleased):
        conn.close()
    assert pool.stats()["idle"] == 1


def test_collected_proxy_is_reclaimed(
    make_pool: Any, fake: FakeDriver, caplog: pytest.LogCaptureFixture
) -> None:
    pool = make_pool(max_size=1)
    with pool.connection():
        pass
    caplog.set_level(logging.WARNING, logger="tether")
    conn = pool.connection()  # the fast path: this thread's last connection
    del conn
    gc.collect()
    assert "garbage-collected without being returned" in caplog.text
    with pool.connection(timeout=2) as again:  # the slot came free
        assert not again.closed
    assert pool.stats()["reclaimed"] == 1


def test_a_connection_checked_out_on_one_path_goes_back_on_the_other(make_pool: Any) -> None:
    pool = make_pool(max_size=1)
    compiled = pool_module.SPEEDUPS
    try:
        conn = pool.connection()
        pool_module.use_speedups(not compiled)
        conn.cursor().execute("SELECT 1")
        conn.close()
        with pool.connection() as again:
            again.cursor().execute("SELECT 1")
        pool_module.use_speedups(compiled)
        with pool.connection() as third:
            third.cursor().execute("SELECT 1")
    finally:
        pool_module.use_speedups(compiled)
    assert pool.stats()["checkouts"] == 3
    assert pool.stats()["in_use"] == 0


def test_a_returned_connection_is_never_handed_out_again_while_referenced(
    make_pool: Any,
) -> None:
    pool = make_pool(max_size=1)
    with pool.connection() as first:
        first.cursor().execute("SELECT 1")
    with pool.connection() as second:
        assert second is not first
        second.cursor().execute("SELECT 2")
    assert first.closed
    with pytest.raises(tether.ConnectionReleased):
        first.cursor()
    assert repr(first).startswith("<tether.PooledConnection returned")


def test_an_unreferenced_returned_proxy_is_reused(make_pool: Any) -> None:
    # The compiled give-back keeps the proxy on its entry; the next check-out of that entry
    # hands it out again when nothing else can see it (no allocation per request).
    pool = make_pool(max_size=1)
    with pool.connection() as conn:
        conn.cursor().execute("SELECT 1")
    before = id(conn)
    watched = None
    if pool_module.SPEEDUPS:
        (entry,) = [*pool._idle, *pool._in_use]  # maybe parked (see Pool._settle_locked)
        assert entry.spare is conn
    del conn
    with pool.connection() as again:
        assert not again.closed
        assert again._pool is pool
        again.cursor().execute("SELECT 2")
        if pool_module.SPEEDUPS:
            assert id(again) == before
        watched = weakref.ref(again)
    # A weak reference is a way to see it: not reused then.
    del again
    with pool.connection() as third:
        assert third is not watched()
        third.cursor().execute("SELECT 3")
    spare = watched()
    assert spare is None or spare.closed
    assert pool.stats()["checkouts"] == 3


def test_a_pool_dropped_without_close_goes_at_once(fake: FakeDriver) -> None:
    # Not through the cyclic collector: a spare proxy must not hold its pool in a cycle.
    gc.disable()
    try:
        pool = tether.Pool(DSN, driver=fake, max_size=1, watchdog=None)
        with pool.connection() as conn:
            conn.cursor().execute("SELECT 1")
        ref = weakref.ref(pool)
        del pool, conn
        assert ref() is None
    finally:
        gc.enable()


def test_a_driver_cursor_method_patched_after_first_use_is_the_one_called(
    make_pool: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = make_pool(max_size=1)
    with pool.connection() as conn:
        conn.cursor().execute("SELECT 1")
    calls: list[str] = []
    original = FakeCursor.execute

    def spy(self: FakeCursor, query: str, args: Any = None) -> int:
        calls.append(query)
        return original(self, query, args)

    monkeypatch.setattr(FakeCursor, "execute", spy)
    with pool.connection() as conn:
        conn.cursor().execute("SELECT 2")
    assert calls == ["SELECT 2"]


def test_a_cursor_keeps_its_connection_in_slots_not_its_dict(make_pool: Any) -> None:
    pool = make_pool(max_size=1)
    with pool.connection() as conn:
        cur = conn.cursor()
        assert "_tether_conn" not in cur.__dict__ and "_tether_gen" not in cur.__dict__
        assert cur._tether_conn is conn
        cur.execute("SELECT 1")
        assert cur.fetchone() is not None
    with pytest.raises(tether.ConnectionReleased):
        cur.execute("SELECT 1")


def test_a_cursor_class_of_ones_own_keeps_them_in_its_dict(make_pool: Any) -> None:
    # A class that already extends tether.Cursor is used as it is: no slots, the attributes
    # go to its __dict__, and execute still takes the fast path's checks (and the returned
    # connection's error) through the attribute protocol.
    class Mine(tether.Cursor, FakeCursor):
        _tether_base = FakeCursor

    pool = make_pool(max_size=1)
    with pool.connection() as conn:
        cur = conn.cursor(Mine)
        assert type(cur) is Mine
        assert cur.__dict__["_tether_conn"] is conn
        cur.execute("SELECT 1")
        assert cur.fetchone() is not None
    with pytest.raises(tether.ConnectionReleased):
        cur.execute("SELECT 1")


@pytest.mark.skipif(PURE or not CPYTHON_311, reason="compiled paths switched off or unsupported")
def test_the_compiled_samples_ring_behaves_as_a_bounded_deque() -> None:
    from collections import deque

    samples_type = _drivers.speedups.Samples
    for maxlen, n in [(1, 0), (1, 3), (5, 3), (5, 5), (5, 12), (2048, 3000)]:
        ring, reference = samples_type(maxlen), deque(maxlen=maxlen)
        for i in range(n):
            ring.append(i * 0.5)
            reference.append(i * 0.5)
        assert len(ring) == len(reference) and bool(ring) == bool(reference)
        assert list(ring) == list(reference)  # oldest first
    with pytest.raises(ValueError, match="maxlen"):
        samples_type(0)
    with pytest.raises(TypeError):
        samples_type(4).append("1.5")
    assert "Samples 0 of 4" in repr(samples_type(4))


def test_hold_times_are_recorded_on_either_path(make_pool: Any) -> None:
    pool = make_pool(max_size=1)
    for _ in range(30):
        with pool.connection():
            pass
    hold = pool.stats().hold_time
    assert hold["count"] == 30
    assert 0 <= hold["p50"] <= hold["p99"] <= hold["max"] < 1.0


def test_the_fast_check_out_waits_while_another_thread_holds_the_pools_lock(
    make_pool: Any,
) -> None:
    # The compiled check-out skips the lock's acquire/release when the lock is free (it reads
    # the lock's state): held by another thread, it must wait for it.
    if not PURE and CPYTHON_311 and sys.version_info < (3, 13):
        # There the state is read from the lock object directly (its layout checked first).
        assert _drivers.speedups.lock_state_read

    pool = make_pool(max_size=2)
    warmed, go, done = threading.Event(), threading.Event(), threading.Event()

    def borrower() -> None:
        with pool.connection():  # this thread's last connection from now on
            pass
        warmed.set()
        go.wait(5)
        with pool.connection():  # the fast path: the thread's own idle connection
            done.set()

    thread = threading.Thread(target=borrower, daemon=True)
    thread.start()
    assert warmed.wait(5)
    with pool._lock:
        go.set()
        assert not done.wait(0.2), "checked out while another thread held the pool's lock"
    assert done.wait(5)
    thread.join(5)
    assert pool.stats()["checkouts"] == 2


def test_a_timestamp_read_by_other_code_is_never_changed_under_it(make_pool: Any) -> None:
    # What Python code reads from an entry is a value of its own (the compiled module keeps
    # the timestamps as C doubles): later check-outs and give-backs move the entry's on and
    # leave the one read alone.
    pool = make_pool(max_size=1)
    with pool.connection() as conn:
        entry = conn._entry
    held_out, held_back = entry.checked_out_at, entry.returned_at
    seen_out, seen_back = float(held_out), float(held_back)
    for _ in range(3):
        with pool.connection() as conn:
            conn.cursor().execute("SELECT 1")
    assert held_out == seen_out and held_back == seen_back
    assert entry.checked_out_at > seen_out and entry.returned_at > seen_back
    assert entry.busy_since == 0.0


@pytest.mark.parametrize(
    ("core", "python", "cls"),
    [("_EntryCore", "_PyEntryCore", "_Entry"), ("_PoolCore", "_PyPoolCore", "Pool")],
)
def test_the_numbers_a_request_reads_are_floats_bools_and_ints_either_way(
    core: str, python: str, cls: str
) -> None:
    # The same names and types with the compiled module's cores (C values) as with the
    # pure-Python layout (slots): pool.py's code reads and assigns them one way for both.
    made, layout = getattr(pool_module, core), getattr(pool_module, python)
    names = set(layout.__slots__)
    assert not names & set(getattr(pool_module, cls).__slots__)
    obj = made()
    samples = {"float": 12.5, "bool": True, "int": 4_000_000_123, "int | None": 140_000_000_123}
    for name in names:
        value = samples[layout.__annotations__[name]]
        setattr(obj, name, value)
        got = getattr(obj, name)
        assert got == value and type(got) is type(value), name
    if not PURE:
        assert made is getattr(_drivers.speedups, core.lstrip("_"))
        kinds = ("member_descriptor", "getset_descriptor")
        members = {n for n, v in vars(made).items() if type(v).__name__ in kinds}
        assert members == names
        flag = next(n for n in names if layout.__annotations__[n] == "bool")
        with pytest.raises(TypeError):
            setattr(obj, flag, 1)  # a flag is a bool, as pool.py assigns it
        with pytest.raises(TypeError):
            delattr(obj, flag)


def test_an_entrys_owner_is_a_thread_ident_none_or_negative_either_way() -> None:
    entry = pool_module._EntryCore()
    for owner in (None, threading.get_ident(), -1, 0, 2**64 - 1, None):
        entry.owner = owner
        assert entry.owner == owner
    for bad, error in ((2**64, OverflowError), (-(2**63), OverflowError), ("1", TypeError)):
        if PURE:
            continue  # a slot takes anything; pool.py assigns only the above
        with pytest.raises(error):
            entry.owner = bad  # type: ignore[assignment]


@pytest.mark.skipif(PURE or not CPYTHON_311, reason="compiled paths switched off or unsupported")
def test_bind_refuses_an_entry_class_without_the_core() -> None:
    class Entry:
        __slots__ = ("state",)

    with pytest.raises(TypeError, match=r"EntryCore.*PoolCore"):
        _drivers.speedups.bind(
            pool=tether.Pool,
            entry=Entry,
            proxy=tether.PooledConnection,
            cursor=tether.Cursor,
            idle=pool_module.IDLE,
            in_use=pool_module.IN_USE,
            trusted=0.001,
            cursor_py=tether.PooledConnection.cursor,
            execute_py=tether.Cursor.execute,
        )


def test_each_thread_finds_its_own_last_connection(make_pool: Any) -> None:
    # The compiled check-out reads the thread's last connection from threading.local's
    # per-thread dict directly (its layout checked first): each thread, its first use
    # included, must see its own and only its own.
    if not PURE and CPYTHON_311 and sys.version_info < (3, 13):
        assert _drivers.speedups.local_state_read

    pool = make_pool(max_size=4)
    barrier = threading.Barrier(3)
    seen: dict[str, list[int]] = {}

    def worker(name: str) -> None:
        got = []
        for _ in range(5):
            with pool.connection() as conn:
                got.append(id(conn._entry))
                barrier.wait(5)  # all three hold one at once: three distinct connections
            barrier.wait(5)
        seen[name] = got

    threads = [threading.Thread(target=worker, args=(str(i),)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(seen) == ["0", "1", "2"]
    for got in seen.values():
        assert len(set(got)) == 1, "a thread did not get its own last connection back"
    assert len({got[0] for got in seen.values()}) == 3
    assert pool.stats()["checkouts"] == 15


def test_the_proxys_attribute_look_up_delegates_as_before(make_pool: Any) -> None:
    # With the compiled paths the proxy's attribute look-up is compiled too (one type look-up
    # for conn.cursor instead of three); the proxy's own attributes, the driver's through
    # __getattr__ (which marks the session as touched) and a missing one all behave as
    # with CPython's own, which use_speedups(False) puts back.
    from tether.connection import PooledConnection

    if not PURE and CPYTHON_311:
        assert _drivers.speedups.fast_getattr(True)
    pool = make_pool(max_size=1)
    try:
        for on in (True, False, True):
            pool_module.use_speedups(on)
            if not PURE and CPYTHON_311:
                assert _drivers.speedups.fast_getattr(on) is on
            with pool.connection() as conn:
                assert conn.cursor.__name__ == "cursor"
                assert not conn._entry.tainted
                assert conn.pings == 0  # the fake connection's own attribute, via __getattr__
                assert conn._entry.tainted
                with pytest.raises(AttributeError):
                    conn.no_such_attribute  # noqa: B018
                with pytest.raises(AttributeError):
                    conn.__no_such_dunder__  # noqa: B018
    finally:
        pool_module.use_speedups(not PURE)
    # Setting __getattr__ on the class puts CPython's look-up back by itself.
    original = PooledConnection.__dict__["__getattr__"]
    try:
        PooledConnection.__getattr__ = lambda self, name: 42  # type: ignore[method-assign]
        with pool.connection() as conn:
            assert conn.anything == 42
    finally:
        PooledConnection.__getattr__ = original  # type: ignore[method-assign]
        pool_module.use_speedups(not PURE)
    with pool.connection() as conn:
        with pytest.raises(AttributeError):
            conn.anything  # noqa: B018


compiled_only = pytest.mark.skipif(
    PURE or not CPYTHON_311, reason="compiled paths switched off or unsupported"
)


def _fast_checkouts(pool: Any) -> int:
    return int(pool._fast_checkouts)


def _cached(pool: Any) -> Any:
    """Two check-outs and give-backs on this thread: the first files the connection in
    Pool._local, the second finds it there and caches it in Pool._by_thread."""
    for _ in range(2):
        with pool.connection() as conn:
            entry = conn._entry
    assert pool._by_thread.get() is entry
    return entry


@compiled_only
def test_the_thread_cache_finds_each_threads_own_connection_and_only_that(
    make_pool: Any,
) -> None:
    # The compiled check-out looks in Pool._by_thread first (one read, keyed by the thread
    # state's unique id), then in Pool._local, the record, and caches what it found there.
    pool = make_pool(max_size=4)
    mine = _cached(pool)
    before = _fast_checkouts(pool)
    with pool.connection() as conn:
        assert conn._entry is mine
    assert _fast_checkouts(pool) == before + 1

    # Another thread finds nothing of this thread's in it, and its own connection is
    # another one (this thread's is idle, but not that thread's last).
    other: list[Any] = []

    def look() -> None:
        other.append(pool._by_thread.get())
        for _ in range(3):
            with pool.connection() as c:
                other.append(c._entry)

    t = threading.Thread(target=look)
    t.start()
    t.join(10)
    assert other[0] is None
    assert other[1] is other[2] is other[3]
    assert len(pool._by_thread) == 2
    with pool.connection() as conn:
        assert conn._entry is mine


@compiled_only
def test_a_cached_connection_another_thread_took_over_is_not_handed_out(
    make_pool: Any,
) -> None:
    # At the bound, a thread's cached last connection can be checked out by another thread:
    # while that one holds it, this thread must wait for it like any other, and once it is
    # back (now the other thread's), get it through the slow path, then fast again.
    pool = make_pool(max_size=1)
    entry = _cached(pool)
    taken, release = threading.Event(), threading.Event()

    def hold() -> None:
        with pool.connection() as c:
            assert c._entry is entry
            taken.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    assert taken.wait(10)
    with pytest.raises(tether.PoolTimeout):
        with pool.connection(timeout=0.05):
            pass
    release.set()
    t.join(10)
    assert entry.owner == t.ident
    fast = _fast_checkouts(pool)
    with pool.connection() as conn:
        assert conn._entry is entry
    assert _fast_checkouts(pool) == fast  # not this thread's when asked: the slow path
    assert entry.owner == threading.get_ident()
    with pool.connection() as conn:
        assert conn._entry is entry
    assert _fast_checkouts(pool) == fast + 1


@compiled_only
def test_more_threads_than_the_thread_cache_holds(make_pool: Any) -> None:
    # 64 places: with more threads alive at once, some evict others; an evicted thread finds
    # its connection through Pool._local again and nothing is handed out twice.
    n = 80
    pool = make_pool(max_size=n)
    barrier = threading.Barrier(n)
    got: dict[int, set[int]] = {}
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            seen = set()
            for _ in range(4):
                with pool.connection() as conn:
                    assert conn._entry.state == pool_module.IN_USE
                    seen.add(id(conn._entry))
                    barrier.wait(10)  # all hold one at once: n distinct connections
                barrier.wait(10)
            got[i] = seen
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert all(len(seen) == 1 for seen in got.values()), "a thread lost its own connection"
    assert len({next(iter(seen)) for seen in got.values()}) == n
    assert 0 < len(pool._by_thread) <= 64


@compiled_only
def test_close_and_fork_empty_the_thread_cache(make_pool: Any) -> None:
    pool = make_pool(max_size=2)
    _cached(pool)
    assert len(pool._by_thread) == 1
    if hasattr(os, "fork"):
        pid = os.fork()
        if pid == 0:  # the child: the parent's connections are forgotten, the cache too
            os._exit(0 if len(pool._by_thread) == 0 else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert len(pool._by_thread) == 1  # the parent's own is untouched
    pool.close()
    assert len(pool._by_thread) == 0


# ----------------------------------------------------------------- AttributeReader (PyMySQL)


@compiled_only
def test_attribute_reader_reads_the_attribute_live() -> None:
    class Conn:
        server_status = 2

    conn = Conn()
    reader = _drivers.speedups.AttributeReader(conn, "server_status")
    assert reader() == 2
    conn.server_status = 0x4002
    assert reader() == 0x4002
    assert "server_status" in repr(reader) and "Conn" in repr(reader)
    with pytest.raises(TypeError, match="no arguments"):
        reader(1)
    with pytest.raises(AttributeError, match="missing"):
        _drivers.speedups.AttributeReader(conn, "missing")()
    with pytest.raises(TypeError):
        _drivers.speedups.AttributeReader(conn, b"server_status")


@compiled_only
def test_attribute_reader_keeps_its_owner_alive_and_lets_go_of_it() -> None:
    class Conn:
        server_status = 0

    conn = Conn()
    gone = weakref.ref(conn)
    reader = _drivers.speedups.AttributeReader(conn, "server_status")
    del conn
    assert gone() is not None  # the reader holds it
    del reader
    assert gone() is None
    conn = Conn()
    gone = weakref.ref(conn)
    conn.reader = _drivers.speedups.AttributeReader(conn, "server_status")  # a cycle
    del conn
    gc.collect()
    assert gone() is None  # the collector sees through the reader


class AttributeStatusDriver(FakeDriver):
    """The fake driver with its status read as the PyMySQL adapter reads it when compiled."""

    def status_reader(self, raw: Any) -> Any:
        return _drivers.speedups.AttributeReader(raw, "status")


@compiled_only
def test_give_back_judged_on_status_read_by_attribute() -> None:
    # What the fast paths decide from the status bits, with them read through the
    # AttributeReader: a clean give-back sends nothing, an open transaction is rolled back,
    # a changed session is reset.
    fake = AttributeStatusDriver()
    with tether.Pool(DSN, driver=fake, max_size=1) as pool:
        with pool.connection() as c:
            c.cursor().execute("SELECT 1")
        conn = fake.connections[0]
        sent = len(conn.statements)
        with pool.connection() as c:
            c.cursor().execute("SELECT 2")
        assert conn.statements[sent:] == ["SELECT 2"]
        with pool.connection() as c:
            c.begin()
            c.cursor().execute("INSERT 1")
        assert conn.statements.count("ROLLBACK") == 1
        with pool.connection() as c:
            c.cursor().execute("SET @x = 1")
        assert conn.statements.count("<reset>") == 1
        stats = pool.stats()
        assert stats["rollbacks"] == 1 and stats["resets"] == 1
