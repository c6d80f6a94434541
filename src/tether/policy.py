"""The pool's decisions, as plain functions of what is known, without I/O.

Whether a connection about to be handed out needs a look (and which), when it expires, how
long to back off after a failed connect, what a give-back must do to a session, and what a
lost connection means for the statement that was running. The threaded and the asyncio pools
drive these same functions; the tests read them as tables.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable

from .drivers import (
    STATUS_AUTOCOMMIT,
    STATUS_IN_TRANS,
    STATUS_MORE_RESULTS,
    STATUS_SESSION_STATE_CHANGED,
)
from .entry import Entry
from .statements import DML_WORDS, first_word, is_read_only

__all__ = [
    "TRUSTED",
    "Backoff",
    "Check",
    "Cleanup",
    "Outcome",
    "checkout_check",
    "expiry",
    "release_plan",
    "after_disconnect",
]

# A connection back in the pool for less than this (a tight loop) is handed out again without
# a look at its socket: a server-side close in so short a gap is as likely as one a moment
# after the look, which is a system call.
TRUSTED = 0.001


class Check(enum.Enum):
    """What a connection about to be handed out needs first."""

    TRUST = "trust"  # used a moment ago: nothing
    POLL = "poll"  # one poll() of its socket: a closed session reads as ready
    PING = "ping"  # idle past ping_after: a round trip with a hard timeout
    RESET = "reset"  # another thread's session, kept as it left it: reset before use


def checkout_check(
    entry: Entry,
    now: float,
    *,
    pid: int,
    ident: int,
    ping_after: float,
    idle_limit: float | None,
) -> Check | str:
    """What ``entry`` needs before it is handed out to thread ``ident``, or why it must be
    replaced instead (a string: the reason, for logs and stats)."""
    if entry.pid != pid:
        return "inherited from parent process"
    if now >= entry.expires:
        return "max lifetime reached"
    idle = now - entry.last_used
    if idle_limit is not None and idle >= idle_limit:
        return "idle past the server's wait_timeout"
    if entry.dirty and entry.owner != ident:
        return Check.RESET
    if idle < TRUSTED:
        return Check.TRUST
    if idle > ping_after:
        return Check.PING
    return Check.POLL


def expiry(now: float, lifetime: float | None, rand: Callable[[], float] = random.random) -> float:
    """When a connection opened ``now`` retires: up to 5% early, so connections opened
    together are not all retired together."""
    if lifetime is None:
        return float("inf")
    return now + lifetime * (1.0 - 0.05 * rand())


class Backoff:
    """Capped exponential backoff with full jitter, for connects refused by a cap or an
    outage: refills from many processes spread out instead of hammering a server that is at
    its cap or restarting. Capped at a second, so a server that is back is used within one."""

    __slots__ = ("_delay", "first", "limit")

    def __init__(self, first: float = 0.05, limit: float = 1.0) -> None:
        self.first = first
        self.limit = limit
        self._delay = 0.0

    def failed(self, now: float, rand: Callable[[], float] = random.random) -> float:
        """Another failure: until when growth is blocked."""
        self._delay = min(self.limit, max(self.first, self._delay * 2))
        return now + (0.5 + 0.5 * rand()) * self._delay

    def succeeded(self) -> None:
        self._delay = 0.0

    @property
    def delay(self) -> float:
        return self._delay


class Cleanup(enum.Flag):
    """What a give-back does to a session before the next borrower gets it."""

    NONE = 0
    ROLLBACK = enum.auto()  # a transaction may be open
    RESET = enum.auto()  # the session changed: protocol reset (rolls back too), baseline again
    AUTOCOMMIT = enum.auto()  # autocommit was flipped: set it back


def release_plan(
    entry: Entry,
    bits: int | None,
    *,
    autocommit: bool,
    keeps_session: bool,
    status_after_results: bool,
    more_results_in_status: bool,
) -> Cleanup | str:
    """What giving ``entry`` back takes, judged on the status bits of the server's last reply
    (``None``: the driver can't tell) and on tether's own record; or why it must be closed
    instead (a string). ``keeps_session``: the thread-mapped pool keeps a thread's session
    as it left it (reset only when another thread takes it over)."""
    if entry.in_flight:
        return "a call was interrupted: the protocol state is unknown"
    if entry.broken:
        return "connection lost"
    if entry.unbuffered:
        return "unread results"
    if bits is None:
        if entry.dirty and not keeps_session:
            return Cleanup.RESET
        return Cleanup.ROLLBACK
    if bits & STATUS_MORE_RESULTS and more_results_in_status:
        return "unread results"
    if (entry.dirty or bits & STATUS_SESSION_STATE_CHANGED) and not keeps_session:
        return Cleanup.RESET
    plan = Cleanup.NONE
    if bits & STATUS_IN_TRANS or (not autocommit and not status_after_results):
        plan |= Cleanup.ROLLBACK
    if not keeps_session and bool(bits & STATUS_AUTOCOMMIT) != autocommit:
        plan |= Cleanup.AUTOCOMMIT
    return plan


class Outcome(enum.Enum):
    """What a lost connection means for the call that was running (DESIGN section 3)."""

    REPLAY = "replay"  # run it again on a fresh connection: nothing can be lost or repeated
    IGNORE = "ignore"  # a ROLLBACK: the server already rolled back when the session died
    RAISE = "raise"  # the driver's own error, as the raw driver gives it
    TRANSACTION_LOST = "transaction lost"  # the server rolled the transaction back
    OUTCOME_UNKNOWN = "outcome unknown"  # a write (or COMMIT) may or may not have run


# Calls tether makes itself that write nothing: replayed on a fresh session like a read.
NO_WRITE_CALLS = frozenset({"BEGIN", "SET autocommit", "USE", "PING"})


def after_disconnect(
    *,
    what: str,
    statement: str | bytes | None,
    not_sent: bool,
    in_transaction: bool,
    autocommit: bool,
    dirty: bool,
    watchdog_fired: bool,
    replay_reads: bool,
    replayable: bool | None,
) -> Outcome:
    """The outcome of a call that lost its connection.

    ``what`` names the call ("execute", "executemany", "callproc", "BEGIN", "COMMIT",
    "ROLLBACK", "SET autocommit", "USE"); ``statement`` is its SQL, if any; ``not_sent``: the
    request provably never reached the server; ``in_transaction`` and ``autocommit``: the
    session's state when it was lost; ``dirty``: the session held state beyond its baseline
    that a fresh one would not have; ``replayable``: the caller's ``idempotent=`` (``None``:
    not said).
    """
    if what == "COMMIT":
        return Outcome.TRANSACTION_LOST if not_sent else Outcome.OUTCOME_UNKNOWN
    if in_transaction:
        return Outcome.TRANSACTION_LOST
    if what == "ROLLBACK":
        return Outcome.IGNORE
    writes = statement is not None and not is_read_only(statement)
    if watchdog_fired:
        # The server stopped answering (or lost the reply): a replay would only hang again.
        return Outcome.OUTCOME_UNKNOWN if writes and not not_sent else Outcome.RAISE
    if dirty:
        # A fresh session lacks what this one held (variables, temporary tables, locks, a
        # USE): the statement could silently mean something else there.
        return Outcome.RAISE
    if statement is None:
        return Outcome.REPLAY if what in NO_WRITE_CALLS or not_sent else Outcome.RAISE
    if not_sent:
        return Outcome.REPLAY
    if replayable is not None:
        return Outcome.REPLAY if replayable else Outcome.OUTCOME_UNKNOWN
    if not writes:
        return Outcome.REPLAY if replay_reads else Outcome.RAISE
    if not autocommit and first_word(statement) in DML_WORDS:
        # No transaction was open: the implicit one this statement began died with the
        # session, so running it again on a fresh connection changes nothing twice.
        return Outcome.REPLAY
    return Outcome.OUTCOME_UNKNOWN
