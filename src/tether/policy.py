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
    "Rules",
    "after_disconnect",
    "expiry",
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


class Rules:
    """The check-out and give-back decisions of one pool: its configuration and its driver's
    quirks, bound once (these run on every check-out and give-back)."""

    __slots__ = (
        "_clean_bits",
        "_release_mask",
        "autocommit",
        "keeps_sessions",
        "more_results_in_status",
        "ping_after",
        "status_after_results",
    )

    def __init__(
        self,
        *,
        autocommit: bool,
        keeps_sessions: bool,
        ping_after: float,
        status_after_results: bool,
        more_results_in_status: bool,
    ) -> None:
        self.autocommit = autocommit
        #: The thread-mapped pool keeps a thread's session as it left it (reset only when
        #: another thread takes it over).
        self.keeps_sessions = keeps_sessions
        self.ping_after = ping_after
        #: Whether the driver's status bits are refreshed by result sets too.
        self.status_after_results = status_after_results
        #: Whether they say when more result sets follow.
        self.more_results_in_status = more_results_in_status
        # The common give-back in one comparison: of the bits a give-back looks at (open
        # transaction, autocommit, session state changed, more results where the driver
        # reports them), a clean session shows autocommit as configured and nothing else.
        # With autocommit off and a driver that hides the status after result sets, a
        # session is never known clean (-1 matches no bits).
        self._release_mask = STATUS_IN_TRANS | STATUS_AUTOCOMMIT | STATUS_SESSION_STATE_CHANGED
        if more_results_in_status:
            self._release_mask |= STATUS_MORE_RESULTS
        self._clean_bits = STATUS_AUTOCOMMIT if autocommit else 0
        if not autocommit and not status_after_results:
            self._clean_bits = -1

    def check(
        self, entry: Entry, now: float, ident: int, pid: int, idle_limit: float | None
    ) -> Check | str:
        """What ``entry`` needs before it is handed out to thread ``ident`` (in process
        ``pid``, the server dropping sessions idle for ``idle_limit``), or why it must be
        replaced instead (a string: the reason, for logs and stats).

        Two clocks: the server's idle timeout runs from the last reply (``last_used``); how
        much to trust the connection runs from when it came back (``returned_at``), as
        HikariCP's bypass window does: one given back a moment ago was in use a moment ago.
        """
        if entry.pid != pid:
            return "inherited from parent process"
        if now >= entry.expires:
            return "max lifetime reached"
        if idle_limit is not None and now - entry.last_used >= idle_limit:
            return "idle past the server's wait_timeout"
        if entry.dirty and entry.owner != ident:
            return Check.RESET
        idle = now - entry.returned_at
        if idle < TRUSTED:
            return Check.TRUST
        if idle > self.ping_after:
            return Check.PING
        return Check.POLL

    def release(self, entry: Entry, bits: int | None) -> Cleanup | str:
        """What giving ``entry`` back takes, judged on the status bits of the server's last
        reply (``None``: the driver can't tell) and on tether's own record; or why it must
        be closed instead (a string)."""
        if entry.in_flight:
            return "a call was interrupted: the protocol state is unknown"
        if entry.broken or entry.raw is None:
            return "connection lost"
        if entry.unbuffered:
            return "unread results"
        if (
            bits is not None
            and bits & self._release_mask == self._clean_bits
            and (not entry.dirty or self.keeps_sessions)
        ):
            return Cleanup.NONE
        keeps_session = self.keeps_sessions
        if bits is None:
            if entry.dirty and not keeps_session:
                return Cleanup.RESET
            return Cleanup.ROLLBACK
        if bits & STATUS_MORE_RESULTS and self.more_results_in_status:
            return "unread results"
        if (entry.dirty or bits & STATUS_SESSION_STATE_CHANGED) and not keeps_session:
            return Cleanup.RESET
        plan = Cleanup.NONE
        if bits & STATUS_IN_TRANS or (not self.autocommit and not self.status_after_results):
            plan |= Cleanup.ROLLBACK
        if not keeps_session and bool(bits & STATUS_AUTOCOMMIT) != self.autocommit:
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
