"""The pool: a bounded set of healthy connections, handed out without round trips.

How a checkout stays cheap: the thread's last connection is preferred (warm, same session),
taken with one short hold of the lock; a handed-out connection is checked with one ``poll()`` of
its socket (a server that timed the session out, was restarted or ``KILL``-ed it has closed the
socket, which then reads as ready) unless it came back less than a millisecond ago, and pinged
only when it sat idle longer than ``ping_after``. A return costs no round trip
unless the session is dirty, which the server itself says in the status bits of its last reply
(open transaction, session state changed, autocommit flipped).

Locking: one lock guards the pool's bookkeeping. Decisions are made under it; connecting,
pinging, rolling back and closing happen outside it, so one slow server round trip never
stalls the other threads.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import random
import re
import select
import sys
import threading
import time
import traceback
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any

from . import drivers as _drivers
from .classify import ErrorKind, classify
from .connection import Cursor, PooledConnection, cursor_class, first_word
from .dsn import DSN, parse_dsn
from .errors import PoolClosed, PoolTimeout
from .stats import SAMPLES, PoolStats, Samples, percentiles

__all__ = ["Pool", "ThreadLocalPool"]

logger = logging.getLogger("tether")

_monotonic = time.monotonic
_getpid = os.getpid
_get_ident = threading.get_ident
_getframe = sys._getframe
_POLL_BAD = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP | select.POLLNVAL

_CLEAN_MASK = _drivers.STATUS_IN_TRANS | _drivers.STATUS_AUTOCOMMIT
# What a return looks at: the clean bits, plus a session state change or results left unread
# (either sends the return down the slow path).
_RELEASE_MASK = _CLEAN_MASK | _drivers.STATUS_SESSION_STATE_CHANGED | _drivers.STATUS_MORE_RESULTS
# A connection the thread gave back less than this long ago (a tight loop) is handed out again
# without the poll() of its socket: a server-side close in so short a gap is as likely as one
# a moment after the poll, which is a system call (and here, through select.poll, lets go of
# the GIL: with many threads a thread switch; the compiled check-out polls holding it).
_TRUSTED = 0.001
# Connect errors that are waited out (backoff, retry until the deadline) rather than raised.
_WAIT_OUT = (ErrorKind.CAPACITY, ErrorKind.DISCONNECT)

# Entry states.
IDLE, IN_USE, BUSY, CLOSED = "idle", "in use", "busy", "closed"

# Socket tuning for silently dropped flows: keepalive probes after 30 s idle, every 5 s, 3
# misses; written data unacknowledged for 15 s fails the socket.
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT, USER_TIMEOUT_MS = 30, 5, 3, 15_000

_pool_counter = itertools.count(1)


def _samples() -> Samples:
    """The last SAMPLES durations (waits, holds): a ring of C doubles when the compiled
    module is there (the compiled give-back adds to it without a call or a float object),
    else a deque. Both take append() and iterate oldest first."""
    if _drivers.speedups is not None:
        ring: Samples = _drivers.speedups.Samples(SAMPLES)
        return ring
    return deque(maxlen=SAMPLES)


def _thread_cache() -> Any:
    """Each thread's last connection, for the compiled check-out only (a cache in front of
    ``Pool._local``, which stays the record): None without the compiled module."""
    return _drivers.speedups.ThreadCache() if _drivers.speedups is not None else None


_fork_lock = threading.Lock()
_live_pools: weakref.WeakSet[Pool] = weakref.WeakSet()


class ServerLimits:
    """What the server said about itself on the pool's first connect."""

    __slots__ = (
        "max_connections",
        "max_user_connections",
        "net_read_timeout",
        "net_write_timeout",
        "version",
        "wait_timeout",
    )

    def __init__(self, row: Sequence[Any]) -> None:
        self.version = str(row[0])
        self.wait_timeout = float(row[1])
        self.max_connections = int(row[2])
        self.max_user_connections = int(row[3])
        self.net_read_timeout = float(row[4])
        self.net_write_timeout = float(row[5])

    QUERY = (
        "SELECT VERSION(), @@SESSION.wait_timeout, @@GLOBAL.max_connections,"
        " @@SESSION.max_user_connections, @@SESSION.net_read_timeout,"
        " @@SESSION.net_write_timeout"
    )

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


class _PyEntryCore:
    """An entry's timestamps, flags and counts: what every check-out and give-back reads and
    writes. The compiled module's EntryCore holds the same as C values, in the entry itself
    (no float or int object apiece, each a cache line of its own between requests); this
    class is the layout without it."""

    __slots__ = (
        "broken",
        "busy_since",
        "checked_out_at",
        "expires",
        "last_active",
        "last_status",
        "leak_reported",
        "owner",
        "parked",
        "pid",
        "returned_at",
        "session_dirty",
        "tainted",
        "unbuffered",
    )

    broken: bool
    busy_since: float
    checked_out_at: float
    expires: float
    last_active: float
    last_status: int
    leak_reported: bool
    owner: int | None  # thread ident of the last borrower; -1: reclaimed
    parked: bool
    pid: int
    returned_at: float
    session_dirty: bool
    tainted: bool
    unbuffered: int


class _PyPoolCore:
    """A pool's numbers that every check-out and give-back reads; C values in the compiled
    module's PoolCore, as _PyEntryCore's are in EntryCore."""

    __slots__ = (
        "_clean_bits",
        "_closed",
        "_fast_checkouts",
        "_fresh_for",
        "_parked",
        "_pid",
        "_release_mask",
    )

    _clean_bits: int
    _closed: bool
    _fast_checkouts: int
    _fresh_for: float
    _parked: int
    _pid: int
    _release_mask: int


if TYPE_CHECKING:
    _EntryCore = _PyEntryCore
    _PoolCore = _PyPoolCore
else:
    _EntryCore = getattr(_drivers.speedups, "EntryCore", _PyEntryCore)
    _PoolCore = getattr(_drivers.speedups, "PoolCore", _PyPoolCore)


class _Entry(_EntryCore):
    """One server connection and everything the pool knows about it."""

    __slots__ = (
        "acquired",
        "created",
        "cursor_class",
        "fd",
        "gen",
        "holder",
        "poller",
        "raw",
        "session_id",
        "spare",
        "stack",
        "state",
        "status",
        "watchdog_fired",
    )

    def __init__(
        self,
        raw: Any,
        status: Callable[[], int] | None,
        fd: int,
        session_id: int,
        pid: int,
        now: float,
        expires: float,
    ) -> None:
        self.raw: Any = raw
        self.status = status
        self.fd = fd
        self.poller = select.poll()
        self.poller.register(fd, _POLL_BAD)
        self.session_id = session_id
        self.pid = pid
        self.created = now
        self.expires = expires
        self.last_active = now  # the server last heard from this session
        self.returned_at = now
        self.checked_out_at = now
        self.busy_since = 0.0  # when the statement in flight was sent (0: none)
        self.last_status = status() if status is not None else 0
        self.state = BUSY
        # Filed in the dict opposite to its state (IDLE in _in_use, IN_USE in _idle): left
        # there by a fast check-out or give-back, until Pool._settle_locked() files it.
        self.parked = False
        self.owner = None
        self.holder: threading.Thread | None = None
        self.acquired: tuple[Any, int] | None = None  # (code, instruction offset)
        self.stack: traceback.StackSummary | None = None
        self.session_dirty = False  # the server flagged a session state change
        self.tainted = False  # used in ways that leave unknown state
        self.broken = False  # lost its connection; replaced before the next statement
        self.unbuffered = 0  # open streaming cursors
        # tether's subclass of the connection's default cursor class (set once opened).
        self.cursor_class: type[Any] = type(None)
        self.leak_reported = False
        self.watchdog_fired = False  # the watchdog broke the socket of a stuck call
        self.gen = 0  # bumped when the server connection is replaced in place
        # The compiled fast paths keep the proxy of the last clean give-back here and hand
        # it out again when nothing else holds it (no allocation, no finalizer per request).
        self.spare: PooledConnection | None = None

    def where(self) -> str:
        """Where the current holder acquired the connection, for messages."""
        if self.stack:
            return "".join(traceback.format_list(self.stack)).rstrip()
        if self.acquired is None:
            return "unknown"
        code, offset = self.acquired
        line = code.co_firstlineno
        for start, end, number in code.co_lines():
            if start <= offset < end and number is not None:
                line = number
                break
        return f"{code.co_filename}:{line} in {code.co_name}"


class _Waiter:
    """A thread waiting for a connection. Whoever serves it sets exactly one of ``entry``
    (a connection handed over), ``may_open`` (a free slot to open a connection in) or
    ``error``, then releases the lock the waiter blocks on."""

    __slots__ = ("entry", "error", "lock", "may_open")

    def __init__(self) -> None:
        self.entry: _Entry | None = None
        self.may_open = False
        self.error: BaseException | None = None
        self.lock = threading.Lock()
        self.lock.acquire()


class Pool(_PoolCore):
    """A bounded pool of MySQL/MariaDB connections.

    ``with pool.connection() as conn:`` hands out a DB-API connection (a proxy for it) that
    goes back when the block ends, also when it raises. See the README for every option.
    """

    # What check-out and give-back read on every call lives in slots, at fixed offsets (the
    # optional compiled fast paths read them there), its numbers in _PoolCore; everything
    # else in the instance dict.
    __slots__ = (
        "__dict__",
        "__weakref__",
        "_by_thread",
        "_counters",
        "_hold_times",
        "_idle",
        "_in_use",
        "_leaked",
        "_local",
        "_lock",
        "_waiters",
        "leak_timeout",
        "timeout",
    )

    def __init__(
        self,
        dsn: str | None = None,
        *,
        driver: str | _drivers.Driver | None = None,
        max_size: int = 10,
        min_size: int = 0,
        timeout: float = 30.0,
        connect_timeout: float = 5.0,
        ping_after: float = 1.0,
        ping_timeout: float = 5.0,
        max_lifetime: float | None = 1800.0,
        idle_timeout: float | None = 600.0,
        keepalive: float | None = 60.0,
        autocommit: bool = True,
        init_commands: Sequence[str] = (),
        leak_timeout: float | None = None,
        replay_reads: bool = True,
        evict_on_read_only: str = "connection",
        error_kinds: Mapping[int, ErrorKind] | None = None,
        connect_args: Mapping[str, Any] | None = None,
        watchdog: float | None = 5.0,
        query_timeout: float | None = None,
        maintenance_interval: float = 1.0,
        name: str | None = None,
    ) -> None:
        self._dsn: DSN = parse_dsn(dsn)
        self._driver = (
            driver
            if isinstance(driver, _drivers.Driver)
            else _drivers.get_driver(driver or self._dsn.driver)
        )
        self.name = name or f"pool-{next(_pool_counter)}"
        _check_int("max_size", max_size, minimum=1)
        _check_int("min_size", min_size, minimum=0)
        if min_size > max_size:
            raise ValueError(f"min_size ({min_size}) must not exceed max_size ({max_size})")
        _check_positive("timeout", timeout)
        _check_positive("connect_timeout", connect_timeout)
        _check_positive("ping_timeout", ping_timeout)
        _check_positive("maintenance_interval", maintenance_interval)
        _check_non_negative("ping_after", ping_after)
        for option, value in (
            ("max_lifetime", max_lifetime),
            ("idle_timeout", idle_timeout),
            ("keepalive", keepalive),
            ("leak_timeout", leak_timeout),
            ("watchdog", watchdog),
            ("query_timeout", query_timeout),
        ):
            if value is not None:
                _check_positive(option, value)
        if isinstance(init_commands, str):
            raise ValueError("init_commands must be a sequence of statements, not one string")
        if evict_on_read_only not in ("connection", "pool"):
            raise ValueError(
                f"evict_on_read_only must be 'connection' or 'pool', not {evict_on_read_only!r}"
            )
        if not isinstance(autocommit, bool):
            raise ValueError(f"autocommit must be True or False, not {autocommit!r}")
        args = dict(connect_args or {})
        for reserved in ("password", "passwd", "user", "host", "port", "database", "db"):
            if reserved in args:
                raise ValueError(f"connect_args must not set {reserved!r}: put it in the DSN")

        self.max_size = max_size
        self.min_size = min_size
        self.timeout = float(timeout)
        self.connect_timeout = float(connect_timeout)
        self.ping_after = float(ping_after)
        self.ping_timeout = float(ping_timeout)
        self.autocommit = autocommit
        self.init_commands = tuple(init_commands)
        self.leak_timeout = leak_timeout
        self.replay_reads = replay_reads
        self.evict_on_read_only = evict_on_read_only
        self.watchdog = watchdog
        # Status bits of a clean session: no transaction open, autocommit as configured. With
        # autocommit off and a driver that hides the status after result sets, never "clean".
        self._clean_bits = _drivers.STATUS_AUTOCOMMIT if autocommit else 0
        if not autocommit and not self._driver.status_after_results:
            self._clean_bits = -1
        self._release_mask = _RELEASE_MASK
        if not self._driver.more_results_in_status:
            # The bit may be left over from an earlier packet: results are drained by the
            # driver's close() instead.
            self._release_mask &= ~_drivers.STATUS_MORE_RESULTS
        self.query_timeout = query_timeout
        self.error_kinds = dict(error_kinds or {})
        self._connect_args = args
        self._maintenance_interval = float(maintenance_interval)
        # What the user asked for; the effective values may be lowered under the server's
        # wait_timeout once it is known (see _adopt_server_limits).
        self._want_lifetime = max_lifetime
        self._want_idle_timeout = idle_timeout
        self._want_keepalive = keepalive
        self.max_lifetime = max_lifetime
        self.idle_timeout = idle_timeout
        self.keepalive = keepalive
        self._server_idle_limit: float | None = None
        # A connection used this recently is handed out on a socket poll alone: under the
        # ping window and under the server's idle limit (lowered once the server is known).
        self._fresh_for = self.ping_after
        self.server: ServerLimits | None = None

        self._lock = threading.Lock()
        # Idle and checked-out connections, each entry filed by its state, except those the
        # fast paths left parked (see _settle_locked). Insertion-ordered: popitem() takes
        # the one filed last, as a rule the most recently returned.
        self._idle: dict[_Entry, None] = {}
        self._in_use: dict[_Entry, None] = {}
        self._parked = 0  # how many entries are parked
        self._waiters: deque[_Waiter] = deque()
        self._size = 0  # open + opening connections, never above max_size
        self._opening = 0
        self._closed = False
        self._pid = os.getpid()
        self._local = threading.local()
        self._by_thread = _thread_cache()
        self._grow_blocked_until = 0.0
        self._backoff = 0.0
        self._last_connect_error: BaseException | None = None
        self._leaked: deque[tuple[_Entry, str]] = deque()
        self._counters: dict[str, int] = dict.fromkeys(
            (
                "opened",
                "closed",
                "checkouts",
                "waits",
                "timeouts",
                "pings",
                "ping_failures",
                "replaced",
                "rollbacks",
                "resets",
                "connect_errors",
                "capacity_errors",
                "replays",
                "transactions_lost",
                "outcomes_unknown",
                "transaction_retries",
                "leaks",
                "reclaimed",
                "takeovers",
                "watchdog_breaks",
            ),
            0,
        )
        # Check-outs counted by the compiled fast path (one C integer; stats() adds them in).
        self._fast_checkouts = 0
        self._closed_by: dict[str, int] = {}
        self._wait_times = _samples()
        self._hold_times = _samples()
        self._maint_stop = threading.Event()
        self._maint_thread: threading.Thread | None = None
        _live_pools.add(self)
        self._start_maintenance()
        logger.info(
            "%s: created for %s (driver %s, max_size %d, min_size %d)",
            self.name,
            self._dsn.redacted(),
            self._driver.name,
            max_size,
            min_size,
        )

    # ------------------------------------------------------------------ public API

    def connection(self, timeout: float | None = None) -> PooledConnection:
        """Check out a connection: use it as ``with pool.connection() as conn:``.

        Without ``with``, call ``conn.close()`` to give it back. Raises :class:`PoolTimeout`
        when none can be had within ``timeout`` (default: the pool's), :class:`PoolClosed`
        after :meth:`close`, and the driver's error at once for wrong credentials.
        """
        # The hot path, inline: this thread's last connection, idle, fresh and with a quiet
        # socket, taken with one short hold of the lock. Every other case (waiting, opening,
        # takeovers, forks, a bad timeout) is _checkout's.
        entry: _Entry | None = None
        last: _Entry | None = getattr(self._local, "last", None)
        if (
            last is not None
            and last.state is IDLE  # a hint; decided under the lock
            and (timeout is None or timeout > 0)
            and _getpid() == self._pid
        ):
            ident = _get_ident()
            # acquire()/release() rather than ``with``: half the cost, on every checkout.
            lock = self._lock
            lock.acquire()
            try:
                # Owner checked under the lock: another thread may have taken this connection
                # (at the bound) and given it back since this thread last used it.
                if (
                    last.state is IDLE
                    and last.owner == ident
                    and not (last.tainted or self._closed or self._leaked)
                ):
                    # _mark_in_use_locked, less what is already true of this thread's own
                    # last connection (owner, holder, _local.last), and left where it is
                    # filed: two dict operations fewer on every request.
                    last.state = IN_USE
                    self._toggle_parked_locked(last)
                    self._counters["checkouts"] += 1
                    entry = last
            finally:
                lock.release()
        try:
            if entry is not None:
                now = entry.checked_out_at = _monotonic()
                idle = now - entry.last_active
                if not (
                    now < entry.expires
                    and idle < self._fresh_for
                    and entry.pid == self._pid
                    and (idle < _TRUSTED or not entry.poller.poll(0))
                ) and not self._usable(entry):
                    # Expired, idle past the ping window or with a readable socket: the full
                    # check pinged or replaced it; the slow path finds or opens another.
                    entry = None
            if entry is None:
                entry = self._checkout(self.timeout if timeout is None else timeout)
            # Where it was acquired, for leak reports and timeout messages: the code and the
            # instruction offset (the line number is worked out only when it is needed).
            f = _getframe(1)
            entry.acquired = (f.f_code, f.f_lasti)
            if self.leak_timeout is not None:
                self._record_stack(entry, f)
            return PooledConnection(self, entry)
        except BaseException as exc:
            if entry is not None:
                self._abandon_checkout(entry, exc)
            raise

    def _abandon_checkout(self, entry: _Entry, exc: BaseException) -> None:
        """A check-out that failed after taking ``entry``: an error or an interrupt
        (Ctrl-C in a ping, say) before the caller got the connection. Nobody holds it and its
        session may be mid-protocol, so it is closed and its slot freed: a check-out that
        did not finish never costs the pool a slot."""
        if entry.state is not IN_USE:
            return  # the health check already discarded or replaced it
        logger.warning(
            "%s: check-out failed (%s): closing connection %d",
            self.name,
            _describe(exc),
            entry.session_id,
        )
        self._discard(entry, f"check-out failed ({type(exc).__name__})")

    def _usable_or_abandon(self, entry: _Entry) -> bool:
        """_usable() for an entry just marked in use by _checkout, which abandons it when
        the check itself fails (see _abandon_checkout)."""
        try:
            return self._usable(entry)
        except BaseException as exc:
            self._abandon_checkout(entry, exc)
            raise

    getconn = connection

    def _record_stack(self, entry: _Entry, frame: FrameType | None) -> None:
        """Keep the acquiring stack (leak_timeout set): the leak report shows it."""
        frames = traceback.StackSummary.extract(
            traceback.walk_stack(frame), limit=12, lookup_lines=False
        )
        entry.stack = traceback.StackSummary.from_list(frames[::-1])

    @contextlib.contextmanager
    def transaction(self, timeout: float | None = None) -> Iterator[PooledConnection]:
        """A connection inside a transaction: committed when the block ends, rolled back
        when it raises."""
        with self.connection(timeout) as conn:
            conn.begin()
            try:
                yield conn
            except BaseException:
                with contextlib.suppress(Exception):
                    conn.rollback()
                raise
            conn.commit()

    def run_transaction(
        self,
        fn: Callable[[PooledConnection], Any],
        *,
        attempts: int = 3,
        timeout: float | None = None,
    ) -> Any:
        """Run ``fn(conn)`` in a transaction, retrying all of it where that is safe.

        Retried: a disconnect before ``COMMIT`` was sent (the server rolled everything back),
        a deadlock, a lock wait timeout; with jittered backoff, at most ``attempts`` times.
        A connection lost while ``COMMIT`` was in flight raises :class:`tether.OutcomeUnknown`.
        """
        from .transactions import run_transaction

        return run_transaction(self, fn, attempts=attempts, timeout=timeout)

    def stats(self) -> PoolStats:
        """A snapshot of counters, gauges and wait/hold time percentiles."""
        with self._lock:
            self._settle_locked()
            counters = dict(self._counters)
            counters["checkouts"] += self._fast_checkouts
            return PoolStats(
                name=self.name,
                max_size=self.max_size,
                min_size=self.min_size,
                size=self._size,
                idle=len(self._idle),
                in_use=len(self._in_use),
                waiting=len(self._waiters),
                opening=self._opening,
                counters=counters,
                closed_by_reason=dict(self._closed_by),
                wait_time=percentiles(self._wait_times),
                hold_time=percentiles(self._hold_times),
                server=self.server.as_dict() if self.server else {},
                last_connect_error=_describe(self._last_connect_error),
            )

    def close(self, timeout: float = 5.0) -> None:
        """Close the pool: idle connections now, checked-out ones when they come back.
        Waiting threads get :class:`PoolClosed`. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._settle_locked()
            idle = list(self._idle)
            self._idle.clear()
            for entry in idle:
                entry.state = CLOSED
            self._size -= len(idle)
            waiters = list(self._waiters)
            self._waiters.clear()
        for waiter in waiters:
            waiter.error = PoolClosed(f"{self.name}: closed while waiting for a connection")
            waiter.lock.release()
        self._maint_stop.set()
        thread = self._maint_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        for entry in idle:
            self._close_raw(entry, "pool closed")
        if self._by_thread is not None:
            self._by_thread.clear()  # no check-out takes from a closed pool: let them go
        logger.info("%s: closed", self.name)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def dsn(self) -> DSN:
        return self._dsn

    @property
    def driver(self) -> _drivers.Driver:
        return self._driver

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        # Without the lock (a repr may be asked for while it is held): counted by state, as
        # parked entries are filed by it only when the lock is next taken.
        states = [entry.state for entry in (*self._idle, *self._in_use)]
        return (
            f"<{type(self).__name__} {self.name!r} {self._dsn.redacted()} {state}"
            f" size={self._size}/{self.max_size} idle={states.count(IDLE)}"
            f" in_use={states.count(IN_USE)} waiting={len(self._waiters)}>"
        )

    # ------------------------------------------------------------------ checkout

    def _checkout(self, timeout: float) -> _Entry:
        if timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        if os.getpid() != self._pid:
            # Forked without os.register_at_fork hooks running (uWSGI forks from C): drop
            # the parent's connections now, before any is handed out.
            with _fork_lock:
                if os.getpid() != self._pid:
                    self._after_fork_in_child()
        start = _monotonic()
        deadline = start + timeout
        waited = False
        ident = threading.get_ident()
        while True:
            entry: _Entry | None = None
            may_open = False
            waiter: _Waiter | None = None
            with self._lock:
                if self._closed:
                    raise PoolClosed(f"{self.name}: the pool is closed")
                self._settle_locked()
                if self._leaked:
                    self._reclaim_leaked_locked()
                entry = self._take_idle_locked(ident)
                if entry is None:
                    now = _monotonic()
                    if self._size < self.max_size and now >= self._grow_blocked_until:
                        self._size += 1
                        self._opening += 1
                        may_open = True
                    else:
                        waiter = _Waiter()
                        self._waiters.append(waiter)
                else:
                    self._mark_in_use_locked(entry, ident)
            if entry is not None:
                if self._usable_or_abandon(entry):
                    if waited:
                        self._record_wait(start)
                    return entry
                continue
            if may_open:
                entry = self._open_in_slot(deadline, for_checkout=True, ident=ident)
                if entry is not None:
                    if waited:
                        self._record_wait(start)
                    return entry
                continue
            assert waiter is not None
            waited = True
            entry = self._wait(waiter, deadline, start)
            if entry is not None:
                self._mark_in_use(entry, ident)
                if self._usable_or_abandon(entry):
                    self._record_wait(start)
                    return entry

    def _toggle_parked_locked(self, entry: _Entry) -> None:
        """A fast path changed ``entry.state`` between IDLE and IN_USE without moving it
        between ``_idle`` and ``_in_use``: it is now parked if it was filed by its state,
        filed if it was parked."""
        if entry.parked:
            entry.parked = False
            self._parked -= 1
        else:
            entry.parked = True
            self._parked += 1

    def _settle_locked(self) -> None:
        """File every parked entry by its state. The fast paths only flip an entry's state
        (a thread taking back its own last connection, giving back a clean one with nobody
        waiting); every other section that looks at ``_idle`` or ``_in_use`` calls this
        first, under the same hold of the lock."""
        if not self._parked:
            return
        idle, in_use = self._idle, self._in_use
        moved = 0
        for entry in [entry for entry in idle if entry.parked]:
            del idle[entry]
            in_use[entry] = None
            entry.parked = False
            moved += 1
        for entry in [entry for entry in in_use if entry.parked]:
            del in_use[entry]
            idle[entry] = None
            entry.parked = False
            moved += 1
        self._parked -= moved

    def _take_idle_locked(self, ident: int) -> _Entry | None:
        """Pick an idle connection: the thread's last one when idle, else the one filed last
        (as a rule the most recently returned: warmest, and it lets surplus ones age out)."""
        idle = self._idle
        if not idle:
            return None
        last = getattr(self._local, "last", None)
        if last is not None and last.state is IDLE and last.pid == self._pid:
            del idle[last]
            return last  # type: ignore[no-any-return]
        entry, _ = idle.popitem()
        return entry

    def _mark_in_use_locked(self, entry: _Entry, ident: int) -> None:
        entry.state = IN_USE
        self._in_use[entry] = None
        if entry.owner != ident and entry.session_dirty:
            # A session kept for another thread (thread-mapped pools): reset before use.
            entry.tainted = True
        entry.owner = ident
        entry.holder = threading.current_thread()
        entry.checked_out_at = _monotonic()
        self._counters["checkouts"] += 1
        self._local.last = entry

    def _mark_in_use(self, entry: _Entry, ident: int) -> None:
        with self._lock:
            self._mark_in_use_locked(entry, ident)

    def _usable(self, entry: _Entry) -> bool:
        """Cheap health check of a connection about to be handed out. Discards (and counts)
        one that is expired or dead; pings one that sat idle longer than ``ping_after``."""
        now = entry.checked_out_at
        reason = None
        if entry.pid != self._pid:
            reason = "inherited from parent process"
        elif now >= entry.expires:
            reason = "max lifetime reached"
        elif self._server_idle_limit is not None and (
            now - entry.last_active >= self._server_idle_limit
        ):
            reason = "idle past the server's wait_timeout"
        elif entry.poller.poll(0):
            # An idle socket has nothing to read: readable means the server closed it or
            # sent an error (timeout, KILL, shutdown) before closing.
            reason = "closed by the server"
        elif now - entry.last_active > self.ping_after:
            if self._ping(entry):
                return True
            reason = "no answer to ping"
        else:
            return True
        self._count("replaced")
        logger.info("%s: replacing connection %d: %s", self.name, entry.session_id, reason)
        self._discard(entry, reason)
        return False

    def _ping(self, entry: _Entry) -> bool:
        self._count("pings")
        try:
            self._driver.ping(entry.raw, self.ping_timeout)
        except Exception as exc:
            self._count("ping_failures")
            logger.debug("%s: ping of %d failed: %s", self.name, entry.session_id, exc)
            return False
        entry.last_active = _monotonic()
        return True

    def _wait(self, waiter: _Waiter, deadline: float, start: float) -> _Entry | None:
        """Block until the waiter is served or the deadline passes. Returns a handed-over
        connection; ``None`` means "look again" (a slot to open was taken, or growth
        became possible)."""
        with self._lock:
            self._counters["waits"] += 1
        while True:
            now = _monotonic()
            remaining = deadline - now
            # While growth is blocked (a cap or an outage), wake when it unblocks so that a
            # pool with nothing checked out still retries the connect.
            wake = remaining
            if self._grow_blocked_until > now and self._size < self.max_size:
                wake = min(remaining, self._grow_blocked_until - now)
            served = waiter.lock.acquire(timeout=max(0.0, wake))
            if not served:
                timed_out = False
                with self._lock:
                    try:
                        self._waiters.remove(waiter)
                    except ValueError:
                        served = True  # served between the timeout and taking the lock
                    else:
                        timed_out = _monotonic() >= deadline
                        if timed_out:
                            self._counters["timeouts"] += 1
                if not served:
                    if timed_out:
                        raise PoolTimeout(self._timeout_message(deadline - start))
                    return None
                waiter.lock.acquire()
            if waiter.error is not None:
                raise waiter.error
            if waiter.may_open:
                entry = self._open_in_slot(deadline, for_checkout=False, ident=0)
                return entry
            return waiter.entry

    def _count(self, counter: str) -> None:
        with self._lock:
            self._counters[counter] += 1

    def _record_wait(self, start: float) -> None:
        self._wait_times.append(_monotonic() - start)

    def _timeout_message(self, waited: float) -> str:
        with self._lock:
            self._settle_locked()
            holders = sorted(self._in_use, key=lambda e: e.checked_out_at)
            now = _monotonic()
            lines = [
                f"{self.name}: no connection within {waited:.1f}s from {self._dsn.redacted()}:"
                f" size {self._size}/{self.max_size}, in use {len(self._in_use)},"
                f" idle {len(self._idle)}, waiting {len(self._waiters)}"
            ]
            if self._last_connect_error is not None:
                lines.append(f"last connect error: {_describe(self._last_connect_error)}")
            if holders:
                lines.append("held by:")
                for entry in holders[:10]:
                    held = now - entry.checked_out_at
                    lines.append(
                        f"  thread {_thread_name(entry.holder)!r} for {held:.1f}s,"
                        f" acquired at {entry.where()}"
                    )
                if len(holders) > 10:
                    lines.append(f"  ... and {len(holders) - 10} more")
        return "\n".join(lines)

    # ------------------------------------------------------------------ opening

    def _open_in_slot(self, deadline: float, *, for_checkout: bool, ident: int) -> _Entry | None:
        """Open a connection in a slot already counted in ``_size``. Returns it checked out
        (``for_checkout``) or, for the waiter path, not yet marked; ``None`` after a
        capacity or outage error, which blocks growth for a jittered backoff instead of
        failing the caller. Authentication and other errors raise at once."""
        try:
            entry = self._open(deadline)
        except BaseException as exc:
            with self._lock:
                self._size -= 1
                self._opening -= 1
                kind = self._connect_failed_locked(exc)
                self._serve_waiters_locked()
            if kind in _WAIT_OUT:
                logger.warning(
                    "%s: connect failed (%s), backing off %.2fs",
                    self.name,
                    _describe(exc),
                    self._backoff,
                )
                if _monotonic() >= deadline:
                    with self._lock:
                        self._counters["timeouts"] += 1
                    raise PoolTimeout(self._timeout_message(self.timeout)) from exc
                return None
            raise
        with self._lock:
            self._opening -= 1
            self._backoff = 0.0
            self._grow_blocked_until = 0.0
            if self._closed:
                closed = True
            else:
                closed = False
                if for_checkout:
                    self._mark_in_use_locked(entry, ident)
        if closed:
            with self._lock:
                self._size -= 1
            self._close_raw(entry, "pool closed")
            raise PoolClosed(f"{self.name}: the pool is closed")
        return entry

    def _connect_failed_locked(self, exc: BaseException) -> ErrorKind:
        """Record a failed connect and say what it means. Caps and outages block growth
        for a backoff (they are waited out); anything else is the caller's to raise."""
        kind = (
            classify(exc, self._driver, self.error_kinds)
            if isinstance(exc, Exception)
            else ErrorKind.OTHER
        )
        self._last_connect_error = exc
        self._counters["connect_errors"] += 1
        if kind in _WAIT_OUT:
            self._block_growth_locked(kind)
        return kind

    def _block_growth_locked(self, kind: ErrorKind) -> None:
        # Capped exponential backoff with full jitter: refills from many processes spread out
        # instead of hammering a server that is at its cap or restarting.
        # Capped at 1 s so that a server that is back is used within a second.
        self._backoff = min(1.0, max(0.05, self._backoff * 2))
        if kind is ErrorKind.CAPACITY:
            self._counters["capacity_errors"] += 1
        self._grow_blocked_until = _monotonic() + random.uniform(0.5, 1.0) * self._backoff

    def _open(self, deadline: float) -> _Entry:
        remaining = deadline - _monotonic()
        connect_timeout = max(0.05, min(self.connect_timeout, remaining))
        driver = self._driver
        raw = driver.connect(
            self._dsn,
            connect_timeout=connect_timeout,
            autocommit=self.autocommit,
            connect_args=self._connect_args,
        )
        try:
            fd = driver.fileno(raw)
            _drivers.tune_socket(
                fd,
                keepalive_idle=KEEPALIVE_IDLE,
                keepalive_interval=KEEPALIVE_INTERVAL,
                keepalive_count=KEEPALIVE_COUNT,
                user_timeout_ms=USER_TIMEOUT_MS,
            )
            cursor_class = self._setup_session(raw)
            if self.server is None:
                self._adopt_server_limits(ServerLimits(driver.execute(raw, ServerLimits.QUERY)[0]))
        except BaseException:
            driver.close(raw)
            raise
        now = _monotonic()
        entry = _Entry(
            raw,
            driver.status_reader(raw),
            fd,
            driver.thread_id(raw),
            self._pid,
            now,
            self._expiry(now),
        )
        entry.cursor_class = cursor_class
        with self._lock:
            self._counters["opened"] += 1
        logger.debug("%s: opened connection %d", self.name, entry.session_id)
        return entry

    def _setup_session(self, raw: Any) -> type[Any]:
        """Per-session set-up, one statement where possible: ask the server to flag every
        change of session state (user and system variables, schema, temporary tables,
        prepared statements) in its replies, so a return knows when a reset is needed.
        Returns tether's subclass of the connection's default cursor class."""
        driver = self._driver
        cur = raw.cursor()
        base = type(cur)
        try:
            cur.execute("SET " + self._session_settings(raw))
            for statement in self.init_commands:
                cur.execute(statement)
        finally:
            cur.close()
        driver.clear_state_flag(raw)
        return cursor_class(base, driver.is_unbuffered(base))

    def _session_settings(self, raw: Any) -> str:
        """The session variables tether relies on, as one ``SET`` list."""
        settings = ["SESSION session_track_state_change = ON"]
        if self.query_timeout is not None:
            # A server-side statement timeout: the server aborts the statement and the
            # connection stays usable (a client-side read timeout would have to drop it).
            if "mariadb" in str(raw.get_server_info()).lower():
                settings.append(f"SESSION max_statement_time = {self.query_timeout:.3f}")
            else:
                settings.append(f"SESSION max_execution_time = {int(self.query_timeout * 1000)}")
        return ", ".join(settings)

    def _with_statement_timeout(self, query: str | bytes, timeout: float) -> str | bytes:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        text = query.decode() if isinstance(query, bytes) else query
        if self.server is not None and "mariadb" not in self.server.version.lower():
            if first_word(text) != "SELECT":
                raise ValueError("on MySQL a statement timeout applies to SELECT only")
            hint = f"SELECT /*+ MAX_EXECUTION_TIME({int(timeout * 1000)}) */"
            text = re.sub(r"\bSELECT\b", hint, text, count=1, flags=re.IGNORECASE)
        else:
            text = f"SET STATEMENT max_statement_time = {float(timeout):.3f} FOR {text}"
        return text.encode() if isinstance(query, bytes) else text

    def _adopt_server_limits(self, limits: ServerLimits) -> None:
        """Derive lifetimes from the server's own idle timeout (read on first connect): no
        connection is ever kept, or handed out, past what the server would keep."""
        with self._lock:
            if self.server is not None:
                return
            self.server = limits
            wait = limits.wait_timeout
            margin = max(1.0, 0.1 * wait)
            limit = max(0.5, wait - margin)
            self._server_idle_limit = limit
            self._fresh_for = min(self.ping_after, limit)
            for option, want in (
                ("max_lifetime", self._want_lifetime),
                ("idle_timeout", self._want_idle_timeout),
            ):
                if want is None or want > limit:
                    setattr(self, option, limit)
                    if want is not None:
                        logger.info(
                            "%s: %s %.0fs is above the server's wait_timeout %.0fs: using %.1fs",
                            self.name,
                            option,
                            want,
                            wait,
                            limit,
                        )
            # Keepalive pings idle connections well before the server would drop them.
            if self._want_keepalive is not None:
                self.keepalive = max(0.25, min(self._want_keepalive, limit / 2))
            self._maintenance_interval = min(self._maintenance_interval, max(0.1, limit / 4))
        logger.info(
            "%s: server %s, wait_timeout %.0fs, max_connections %d, max_user_connections %d",
            self.name,
            limits.version,
            wait,
            limits.max_connections,
            limits.max_user_connections,
        )

    def _expiry(self, now: float) -> float:
        lifetime = self.max_lifetime
        if lifetime is None:
            return float("inf")
        # Up to 5% jitter, so connections opened together are not all retired together.
        return now + lifetime * (1.0 - random.uniform(0.0, 0.05))

    # ------------------------------------------------------------------ return

    def _release(self, proxy: PooledConnection, entry: _Entry) -> None:
        """Give back a checked-out connection: clean it only if the server says it is dirty,
        then hand it to the first waiter or put it back in the idle set."""
        now = _monotonic()
        self._hold_times.append(now - entry.checked_out_at)
        status = entry.status
        if (
            status is not None
            and entry.state is IN_USE
            and not (
                entry.leak_reported
                or entry.session_dirty
                or entry.tainted
                or entry.broken
                or entry.unbuffered
            )
            and entry.pid == self._pid
        ):
            # The common case, with no round trip: the status bits of the server's last
            # reply, read now (whatever it came through: a cursor, nextset(), a close that
            # drained results, the driver's own connection), say no transaction is open,
            # autocommit is as configured, the session state is unchanged and no result
            # is left unread.
            bits = status()
            if bits & self._release_mask == self._clean_bits:
                entry.last_status = bits
                entry.returned_at = entry.last_active = now
                lock = self._lock
                lock.acquire()
                try:
                    if not self._waiters and not self._closed and now < entry.expires:
                        # _checkin's common case, the entry left where it is filed.
                        entry.state = IDLE
                        self._toggle_parked_locked(entry)
                        return
                finally:
                    lock.release()
                self._checkin(entry)
                return
        self._release_slow(entry, now)

    def _release_slow(self, entry: _Entry, now: float) -> None:
        """Give back a connection the common case did not cover: dirty, broken, reported as
        a leak, closed, or with unknown status."""
        if entry.leak_reported:
            entry.leak_reported = False
            logger.warning(
                "%s: connection %d reported as a possible leak came back after %.1fs",
                self.name,
                entry.session_id,
                now - entry.checked_out_at,
            )
        if entry.state is CLOSED:
            return
        if entry.raw is None:  # a replacement failed half-way
            self._discard(entry, "connection lost")
            return
        reason = self._clean(entry)
        if reason is not None:
            self._discard(entry, reason)
            return
        entry.returned_at = entry.last_active = _monotonic()
        self._checkin(entry)

    def _clean(self, entry: _Entry) -> str | None:
        """Make a returned connection safe for the next borrower. Returns why it must be
        closed instead, or ``None``. Round trips only for what the server says is dirty."""
        if entry.pid != self._pid:
            return "inherited from parent process"
        if entry.broken:
            return "connection lost"
        if entry.unbuffered:
            return "unread results"
        if entry.tainted:
            return "used through an interface that can leave unknown state"
        read_status = entry.status
        status = read_status() if read_status is not None else None
        raw = entry.raw
        if status is not None:
            if status & _drivers.STATUS_MORE_RESULTS and self._driver.more_results_in_status:
                return "unread results"
            if status & _drivers.STATUS_SESSION_STATE_CHANGED:
                # Changed where no cursor of ours saw it (nextset(), the driver's connection).
                entry.session_dirty = True
                self._driver.clear_state_flag(raw)
                status &= ~_drivers.STATUS_SESSION_STATE_CHANGED
        try:
            if (
                status is None
                or status & _drivers.STATUS_IN_TRANS
                or (not self.autocommit and not self._driver.status_after_results)
            ):
                # Open transaction, or the driver can't tell: roll back.
                raw.rollback()
                self._count("rollbacks")
                status = read_status() if read_status is not None else None
            if status is None or self._keeps_session(entry):
                pass
            elif entry.session_dirty:
                self._reset_session(entry)
            elif bool(status & _drivers.STATUS_AUTOCOMMIT) != self.autocommit:
                raw.autocommit(self.autocommit)
        except Exception as exc:
            return f"cleanup failed: {_describe(exc)}"
        if read_status is not None:
            entry.last_status = read_status()
        return None

    def _keeps_session(self, entry: _Entry) -> bool:
        """Thread-mapped pools keep a thread's session as it left it (reset only on
        takeover); a shared pool resets every dirty session on return."""
        return False

    def _reset_session(self, entry: _Entry) -> None:
        raw = entry.raw
        driver = self._driver
        if driver.reset(raw):
            self._count("resets")
            # The reset returns session variables to the server's defaults: restore ours.
            cur = raw.cursor()
            try:
                charset = self._dsn.options.get("charset", "utf8mb4")
                cur.execute(
                    f"SET NAMES {charset}, {self._session_settings(raw)},"
                    f" SESSION autocommit = {1 if self.autocommit else 0}"
                )
                if self._dsn.database:
                    raw.select_db(self._dsn.database)
                for statement in self.init_commands:
                    cur.execute(statement)
            finally:
                cur.close()
            driver.clear_state_flag(raw)
            entry.session_dirty = False
            if entry.status is not None:
                entry.last_status = entry.status()
        else:
            raise RuntimeError("the driver cannot reset a session")

    def _checkin(self, entry: _Entry) -> None:
        close_reason = None
        with self._lock:
            self._settle_locked()
            self._in_use.pop(entry, None)
            if self._closed:
                close_reason = "pool closed"
            elif entry.returned_at >= entry.expires:
                close_reason = "max lifetime reached"
            else:
                while self._waiters:
                    waiter = self._waiters.popleft()
                    waiter.entry = entry
                    entry.state = BUSY
                    waiter.lock.release()
                    return
                entry.state = IDLE
                self._idle[entry] = None
                return
            entry.state = CLOSED
            self._size -= 1
            self._serve_waiters_locked()
        self._close_raw(entry, close_reason)

    def _serve_waiters_locked(self) -> None:
        """A slot came free: let the first waiter open a connection in it."""
        if (
            self._waiters
            and not self._closed
            and self._size < self.max_size
            and _monotonic() >= self._grow_blocked_until
        ):
            waiter = self._waiters.popleft()
            self._size += 1
            self._opening += 1
            waiter.may_open = True
            waiter.lock.release()

    def _discard(self, entry: _Entry, reason: str) -> None:
        """Close a connection that must not be used again and free its slot."""
        with self._lock:
            if entry.state is CLOSED:
                return
            self._settle_locked()
            self._in_use.pop(entry, None)
            self._idle.pop(entry, None)
            entry.state = CLOSED
            self._size -= 1
            self._serve_waiters_locked()
        self._close_raw(entry, reason)

    def _close_raw(self, entry: _Entry, reason: str) -> None:
        entry.state = CLOSED
        raw, entry.raw = entry.raw, None
        with self._lock:
            self._counters["closed"] += 1
            self._closed_by[reason] = self._closed_by.get(reason, 0) + 1
        if raw is None:
            return
        with contextlib.suppress(Exception):
            entry.poller.unregister(entry.fd)
        if entry.pid != os.getpid():
            self._driver.abandon(raw)
        else:
            self._driver.close(raw)
        logger.debug("%s: closed connection %d (%s)", self.name, entry.session_id, reason)

    def _replace_raw(self, entry: _Entry, deadline: float) -> None:
        """Swap a broken connection for a fresh one in the same slot (for a replay), without
        giving the slot up. Outages and caps are waited out until the deadline."""
        with self._lock:
            # Detached under the lock so the watchdog never breaks a descriptor being closed.
            old, entry.raw = entry.raw, None
            entry.gen += 1
            entry.busy_since = 0.0
        if old is not None:
            with contextlib.suppress(Exception):
                entry.poller.unregister(entry.fd)
            self._driver.close(old)
            with self._lock:
                self._counters["closed"] += 1
                self._closed_by["broken"] = self._closed_by.get("broken", 0) + 1
        while True:
            try:
                fresh = self._open(deadline)
                break
            except Exception as exc:
                with self._lock:
                    kind = self._connect_failed_locked(exc)
                    pause = self._grow_blocked_until - _monotonic()
                if kind not in _WAIT_OUT:
                    raise
                if _monotonic() + pause >= deadline:
                    raise
                time.sleep(max(0.0, pause))
        for name in (
            "raw",
            "status",
            "fd",
            "poller",
            "created",
            "expires",
            "session_id",
            "cursor_class",
            "last_status",
            "last_active",
        ):
            setattr(entry, name, getattr(fresh, name))
        entry.session_dirty = entry.tainted = entry.watchdog_fired = False
        entry.unbuffered = 0

    def _evict_all(self, reason: str) -> None:
        """Retire every connection: idle ones now, checked-out ones when they come back
        (after a failover, they all point at the demoted server)."""
        with self._lock:
            self._settle_locked()
            idle = list(self._idle)
            self._idle.clear()
            for entry in idle:
                entry.state = CLOSED
            self._size -= len(idle)
            for entry in self._in_use:
                entry.expires = 0.0
            self._serve_waiters_locked()
        for entry in idle:
            self._close_raw(entry, reason)
        logger.warning("%s: evicted every connection: %s", self.name, reason)

    # ------------------------------------------------------------------ leaks and GC

    def _on_proxy_collected(self, entry: _Entry) -> None:
        """Called from a proxy's ``__del__`` (any thread, maybe under our own lock): only
        queue the entry; a checkout or the maintenance thread reclaims it."""
        self._leaked.append((entry, entry.where()))
        # Free the slot now if the lock is free (a waiter may be blocked on it); if this
        # thread holds it (collection ran inside the pool), the next checkout does it.
        if self._lock.acquire(blocking=False):
            try:
                self._reclaim_leaked_locked()
            finally:
                self._lock.release()

    def _reclaim_leaked_locked(self) -> None:
        self._settle_locked()
        while self._leaked:
            entry, where = self._leaked.popleft()
            if entry.state is not IN_USE:
                continue
            self._in_use.pop(entry, None)
            entry.state = CLOSED
            self._size -= 1
            self._counters["reclaimed"] += 1
            logger.warning(
                "%s: connection %d was garbage-collected without being returned; acquired at %s",
                self.name,
                entry.session_id,
                where,
            )
            # Its state is unknown (maybe mid-transaction): close it rather than reuse it.
            raw, entry.raw = entry.raw, None
            if raw is not None:
                closer = threading.Thread(
                    target=self._driver.close, args=(raw,), name="tether-close", daemon=True
                )
                closer.start()
            self._counters["closed"] += 1
            self._closed_by["leaked"] = self._closed_by.get("leaked", 0) + 1
            self._serve_waiters_locked()

    # ------------------------------------------------------------------ maintenance

    def _start_maintenance(self) -> None:
        self._maint_stop = threading.Event()
        thread = threading.Thread(
            target=_background,
            args=(
                weakref.ref(self),
                self._maint_stop,
                lambda pool: pool._maintenance_interval,
                lambda pool: pool._maintain(),
                "maintenance",
            ),
            name=f"tether-maintenance-{self.name}",
            daemon=True,
        )
        self._maint_thread = thread
        thread.start()
        if self.watchdog is not None:
            # Its own thread: maintenance may itself be waiting on a silent server.
            # Looks often enough to see a stuck call soon after it crosses the threshold.
            watchdog = self.watchdog
            threading.Thread(
                target=_background,
                args=(
                    weakref.ref(self),
                    self._maint_stop,
                    lambda pool: min(1.0, watchdog / 4),
                    lambda pool: pool._watchdog_scan(),
                    "watchdog",
                ),
                name=f"tether-watchdog-{self.name}",
                daemon=True,
            ).start()

    def _maintain(self) -> None:
        """One round of background work: retire expired and surplus idle connections, ping
        idle ones before the server would drop them, refill ``min_size``, report leaks."""
        now = _monotonic()
        to_close: list[tuple[_Entry, str]] = []
        to_ping: list[_Entry] = []
        leaks: list[_Entry] = []
        refill = 0
        with self._lock:
            if self._closed:
                return
            self._settle_locked()
            if self._leaked:
                self._reclaim_leaked_locked()
            for entry in list(self._idle):
                reason = None
                if now >= entry.expires:
                    reason = "max lifetime reached"
                elif (
                    self.idle_timeout is not None
                    and now - entry.returned_at >= self.idle_timeout
                    and self._size - len(to_close) > self.min_size
                ):
                    reason = "idle timeout"
                elif entry.poller.poll(0):
                    reason = "closed by the server"
                if reason is not None:
                    del self._idle[entry]
                    entry.state = CLOSED
                    to_close.append((entry, reason))
                elif self.keepalive is not None and now - entry.last_active >= self.keepalive:
                    del self._idle[entry]
                    entry.state = BUSY
                    to_ping.append(entry)
            self._size -= len(to_close)
            if self.leak_timeout is not None:
                for entry in self._in_use:
                    if not entry.leak_reported and now - entry.checked_out_at >= self.leak_timeout:
                        entry.leak_reported = True
                        self._counters["leaks"] += 1
                        leaks.append(entry)
            if now >= self._grow_blocked_until:
                refill = max(0, self.min_size - self._size)
            self._serve_waiters_locked()
        for entry, reason in to_close:
            self._close_raw(entry, reason)
        for entry in to_ping:
            if self._ping(entry):
                self._checkin(entry)
            else:
                self._discard(entry, "no answer to keepalive ping")
        for entry in leaks:
            logger.warning(
                "%s: connection %d held by thread %r for over %.1fs (possible leak);"
                " acquired at:\n%s",
                self.name,
                entry.session_id,
                _thread_name(entry.holder),
                self.leak_timeout,
                entry.where(),
            )
        for _ in range(refill):
            with self._lock:
                if (
                    self._closed
                    or self._size >= self.min_size
                    or _monotonic() < self._grow_blocked_until
                ):
                    break
                self._size += 1
                self._opening += 1
            try:
                fresh = self._open_in_slot(
                    _monotonic() + self.connect_timeout, for_checkout=False, ident=0
                )
            except Exception as exc:
                logger.warning("%s: refill failed: %s", self.name, _describe(exc))
                break
            if fresh is None:
                break
            self._checkin(fresh)
        self._maintain_extra(now)

    def _watchdog_scan(self) -> None:
        """Find calls that have waited on the server longer than ``watchdog`` seconds and
        check on them. Runs on its own thread: maintenance may itself be waiting on a
        silent server (a keepalive ping), and must not delay this."""
        if self.watchdog is None:
            return
        now = _monotonic()
        with self._lock:
            if self._closed:
                return
            self._settle_locked()
            stuck = [
                (entry, entry.gen, entry.busy_since, entry.session_id)
                for entry in self._in_use
                if entry.busy_since and now - entry.busy_since >= self.watchdog
            ]
        if stuck:
            self._watch(stuck)

    def _watch(self, stuck: list[tuple[_Entry, int, float, int]]) -> None:
        """Out-of-band check of calls that have waited on the server for ``watchdog``
        seconds: a probe connection asks the server whether each session still exists and is
        still working. A call whose server does not answer, whose session is gone, or whose
        session sits idle (its reply was lost) has its socket broken, so the caller gets an
        error now instead of hanging until TCP gives up. A long query the server is still
        running is left alone."""
        try:
            verdicts = self._probe_sessions([sid for _, _, _, sid in stuck])
            for entry, gen, busy_since, session_id in stuck:
                reason = verdicts(session_id)
                if reason is None:
                    continue
                with self._lock:
                    # Still the same call on the same connection: break it under the lock,
                    # so its descriptor cannot be closed and reused meanwhile.
                    if (
                        entry.state is not IN_USE
                        or entry.gen != gen
                        or entry.busy_since != busy_since
                        or entry.raw is None
                    ):
                        continue
                    entry.watchdog_fired = True
                    self._counters["watchdog_breaks"] += 1
                    _drivers.break_socket(entry.fd)
                logger.warning(
                    "%s: watchdog broke connection %d after %.1fs waiting: %s",
                    self.name,
                    session_id,
                    _monotonic() - busy_since,
                    reason,
                )
        except Exception:
            logger.exception("%s: watchdog failed", self.name)

    def _probe_sessions(self, session_ids: list[int]) -> Callable[[int], str | None]:
        """Ask the server, on a separate short-lived connection with hard timeouts, about
        the given sessions. Returns a function telling why a session should be broken."""
        driver = self._driver
        probe_timeout = max(0.5, min(3.0, self.watchdog or 3.0))
        try:
            raw = driver.connect(
                self._dsn,
                connect_timeout=probe_timeout,
                autocommit=True,
                connect_args={**self._connect_args, **driver.io_timeouts(probe_timeout)},
            )
        except Exception as exc:
            if classify(exc, driver, self.error_kinds) is ErrorKind.CAPACITY:
                return lambda _sid: None  # the server answers; can't see sessions: leave them
            reason = f"server does not answer ({_describe(exc)})"
            return lambda _sid: reason
        try:
            ids = ",".join(str(int(sid)) for sid in session_ids)
            rows = driver.execute(
                raw,
                f"SELECT ID, COMMAND, TIME FROM information_schema.PROCESSLIST WHERE ID IN ({ids})",
            )
        except Exception as exc:
            reason = f"server does not answer ({_describe(exc)})"
            return lambda _sid: reason
        finally:
            driver.close(raw)
        found = {int(r[0]): (str(r[1]), float(r[2] or 0)) for r in rows}

        def verdict(session_id: int) -> str | None:
            row = found.get(session_id)
            if row is None:
                return "its session no longer exists on the server"
            command, seconds = row
            if command == "Killed":
                return "its session was killed"
            if command == "Sleep" and seconds >= 1:
                return "the server finished with it (the reply was lost on the way)"
            return None

        return verdict

    def _maintain_extra(self, now: float) -> None:
        """Hook for thread-mapped reclaim."""

    # ------------------------------------------------------------------ fork

    def _after_fork_in_child(self) -> None:
        """In a forked child: forget the parent's connections without a byte on their
        sockets, and start over with fresh state and a fresh maintenance thread."""
        self._lock = threading.Lock()
        entries = list(self._idle) + list(self._in_use)
        self._idle = {}
        self._in_use = {}
        self._parked = 0
        self._waiters = deque()
        self._size = self._opening = 0
        self._pid = os.getpid()
        self._local = threading.local()
        self._leaked = deque()
        for entry in entries:
            raw, entry.raw = entry.raw, None
            entry.state = CLOSED
            entry.parked = False
            entry.gen += 1  # proxies held across the fork notice and refuse to be used
            if raw is not None:
                self._driver.abandon(raw)
        if self._by_thread is not None:
            self._by_thread.clear()  # the same object: a check-out may be reading it
        if not self._closed:
            self._start_maintenance()


def _background(
    pool_ref: weakref.ref[Pool],
    stop: threading.Event,
    interval: Callable[[Pool], float],
    work: Callable[[Pool], None],
    what: str,
) -> None:
    """Run ``work(pool)`` every ``interval(pool)`` seconds until ``stop`` is set. Holds the
    pool only weakly between rounds, so an unreferenced pool can be collected; a failing round
    is logged and the loop lives on."""
    while True:
        pool = pool_ref()
        if pool is None:
            return
        wait = interval(pool)
        del pool
        if stop.wait(wait):
            return
        pool = pool_ref()
        if pool is None:
            return
        try:
            work(pool)
        except Exception:
            logger.exception("%s: %s failed", pool.name, what)
        del pool


def _after_fork_in_child() -> None:
    for pool in list(_live_pools):
        pool._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _thread_name(thread: threading.Thread | None) -> str:
    return thread.name if thread is not None else "?"


def _describe(exc: BaseException | None) -> str | None:
    if exc is None:
        return None
    return f"{type(exc).__name__}: {exc}"


def _check_int(option: str, value: object, *, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{option} must be an integer >= {minimum}, not {value!r}")


def _check_positive(option: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{option} must be a positive number of seconds, not {value!r}")


def _check_non_negative(option: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{option} must be a number of seconds >= 0, not {value!r}")


class ThreadLocalPool(Pool):
    """One connection per thread, kept between uses (what DBUtils' ``PersistentDB`` does),
    with the same health rules and a bound.

    A thread's session survives between its uses (variables, temporary tables); open
    transactions are still rolled back on return. Connections of ended threads are
    reclaimed, and at the bound an idle connection of another thread is taken over, its
    session reset first, so the bound never deadlocks.
    """

    def _take_idle_locked(self, ident: int) -> _Entry | None:
        idle = self._idle
        if not idle:
            return None
        own = getattr(self._local, "last", None)
        if own is not None and own.state is IDLE and own.owner == ident and own.pid == self._pid:
            del idle[own]
            return own  # type: ignore[no-any-return]
        alive = _alive_thread_idents()
        fallback = None
        for entry in idle:
            if entry.owner is None or entry.owner not in alive:
                del idle[entry]
                return entry
            if fallback is None:
                fallback = entry  # least recently returned of the other threads' ones
        if self._size < self.max_size:
            return None  # open a connection of our own rather than take one over
        assert fallback is not None
        del idle[fallback]
        self._counters["takeovers"] += 1
        return fallback

    def _usable(self, entry: _Entry) -> bool:
        if entry.tainted and entry.pid == self._pid:
            # Taken over from another thread whose session state must not leak.
            try:
                self._reset_session(entry)
                entry.tainted = False
            except Exception as exc:
                self._discard(entry, f"reset on takeover failed: {_describe(exc)}")
                return False
        return super()._usable(entry)

    def _keeps_session(self, entry: _Entry) -> bool:
        return True

    def _clean(self, entry: _Entry) -> str | None:
        if entry.tainted:
            # Thread-mapped connections keep their session; unknown use still means unknown
            # state, reset when another thread takes it over.
            entry.session_dirty = True
            entry.tainted = False
        return super()._clean(entry)

    def _maintain_extra(self, now: float) -> None:
        # Reclaim connections of threads that ended: they become free for any thread (their
        # session is reset first, as on a takeover, because the owner no longer matches).
        alive = _alive_thread_idents()
        with self._lock:
            self._settle_locked()
            for entry in self._idle:
                if entry.owner is not None and entry.owner not in alive:
                    entry.owner = -1
                    self._counters["reclaimed"] += 1


def _alive_thread_idents() -> set[int]:
    return {t.ident for t in threading.enumerate() if t.ident is not None}


def _bind_speedups() -> dict[tuple[type[Any], str], Any]:
    """The compiled fast paths (``tether._speedups``), by the class and name they replace;
    empty when not built or switched off. They make the same decisions as the Python methods
    above, which stay the reference, in the same order, calling back into the same slow
    paths."""
    compiled = _drivers.speedups
    if compiled is None:
        return {}
    methods = compiled.bind(
        pool=Pool,
        entry=_Entry,
        proxy=PooledConnection,
        cursor=Cursor,
        idle=IDLE,
        in_use=IN_USE,
        trusted=_TRUSTED,
        # Every call shape but the common one (arguments, keywords) goes to these.
        cursor_py=PooledConnection.cursor,
        execute_py=Cursor.execute,
    )
    return {
        (Pool, "connection"): methods["connection"],
        (Pool, "getconn"): methods["connection"],
        (Pool, "_release"): methods["_release"],
        (PooledConnection, "__enter__"): methods["__enter__"],
        (PooledConnection, "__exit__"): methods["__exit__"],
        (PooledConnection, "__del__"): methods["__del__"],
        (PooledConnection, "cursor"): methods["cursor"],
        (Cursor, "execute"): methods["execute"],
    }


_COMPILED = _bind_speedups()
_PYTHON = {key: key[0].__dict__[key[1]] for key in _COMPILED}


def use_speedups(on: bool) -> bool:
    """Put the compiled fast paths in place (``on``, where built) or the Python ones; returns
    whether the compiled ones are in place. Both make the same decisions; the benchmarks
    compare them in one process. Connections checked out under one may go back under the
    other."""
    global SPEEDUPS
    table = _COMPILED if on else _PYTHON
    for (cls, name), method in table.items():
        # Only what changes: assigning to a class invalidates the interpreter's caches of
        # every look-up on it and its subclasses, even when the value is the same.
        if cls.__dict__.get(name) is not method:
            setattr(cls, name, method)
    SPEEDUPS = bool(on and _COMPILED)
    if _COMPILED and _drivers.speedups is not None:
        # The proxy's attribute look-up (conn.cursor and every other attribute) as well.
        _drivers.speedups.fast_getattr(SPEEDUPS)
    return SPEEDUPS


# Whether the compiled fast paths are in use.
SPEEDUPS = use_speedups(True)
