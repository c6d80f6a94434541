"""What a failed call on a pooled connection means, and what a successful one leaves noted.

Both pool flavours' connections (the threaded proxy in :mod:`tether.connection` and the
asyncio one in :mod:`tether.aio.connection`) decide through these functions: after each
reply, :func:`note_reply` keeps the server's status bits and notes session state; when a
call raises, :func:`failure_outcome` applies :func:`tether.policy.after_disconnect` (replay,
:class:`tether.TransactionLost`, :class:`tether.OutcomeUnknown` or the driver's own error);
when a call is cut short by anything else, :func:`interrupted` marks the connection as out
of step with the server.
"""

from __future__ import annotations

import time
from typing import Any

from .classify import ErrorKind, classify
from .drivers import (
    STATUS_AUTOCOMMIT,
    STATUS_IN_TRANS,
    STATUS_SESSION_STATE_CHANGED,
    DriverBase,
)
from .entry import Entry
from .errors import OutcomeUnknown, TransactionLost, driver_error
from .lender import Judge
from .policy import Outcome, after_disconnect
from .statements import is_read_only, leaves_session_state

__all__ = ["failure_outcome", "interrupted", "lost_error", "note_reply"]

# Errors that prove the request never reached the server: the driver failed writing it
# (2006 from PyMySQL's and libmariadb's write paths), or the server had already dropped the
# session and said so (4031) before reading it.
_NOT_SENT = frozenset({2006, 4031})


def note_reply(driver: DriverBase, entry: Entry, statement: str | bytes | None) -> None:
    """After a call that succeeded: keep the server's status bits of its reply (what a lost
    connection is judged on) and note a change of session state, which only this reply
    reports (or which the statement's text gives away). Ends the call's in-flight mark."""
    # When the request was sent stands for when the server last answered (the idle timeout
    # it feeds errs on the safe side), and saves reading the clock again.
    entry.last_used = entry.in_flight or time.monotonic()
    entry.in_flight = 0.0
    read_status = entry.status
    if read_status is not None:
        bits = read_status()
        if bits & STATUS_SESSION_STATE_CHANGED:
            entry.dirty = True
            driver.clear_state_flag(entry.raw)
            bits = read_status()  # as the driver keeps it now (PyMySQL's flag cleared)
        entry.last_status = bits
    if statement is not None and leaves_session_state(statement):
        entry.dirty = True


def interrupted(
    lender: Judge, entry: Entry, statement: str | bytes | None, what: str | bytes
) -> None:
    """A call was cut short by something other than the driver's own error (Ctrl-C, a
    signal handler's exception, a cancellation, a bug): the protocol state is unknown. The
    connection is not used again (``in_flight`` stays set: closed on return); if it held a
    transaction or session state the caller has not heard about, the next use says so. A
    write (or ``COMMIT``) cut short after it was sent is counted as outcome unknown: the
    caller sees its own exception, and the write may or may not have run."""
    entry.broken = True
    bits = entry.last_status
    if bits & STATUS_IN_TRANS:
        entry.unreported = "transaction"
    elif entry.dirty:
        entry.unreported = "session"
    lender.count("interrupted")
    if what == "COMMIT" or (statement is not None and not is_read_only(statement)):
        lender.count("outcomes_unknown")


def failure_outcome(
    lender: Judge,
    entry: Entry,
    exc: BaseException,
    before: int,
    what: str,
    statement: str | bytes | None,
    replayable: bool | None,
    attempt: int,
) -> Outcome | None:
    """What a call that raised ``exc`` means, by :func:`tether.policy.after_disconnect`:
    ``None`` (the caller re-raises ``exc``), :attr:`Outcome.IGNORE` (the call returns
    ``None``) or :attr:`Outcome.REPLAY` (run it again on a fresh connection); raises
    :class:`tether.TransactionLost`, :class:`tether.OutcomeUnknown` or the watchdog's error.
    Both pool flavours' connections decide through this one function."""
    driver = lender.driver
    if not isinstance(exc, driver.Error):
        interrupted(lender, entry, statement, what)
        return None
    entry.in_flight = 0.0
    kind = classify(exc, driver, lender.config.error_kinds)
    if kind is ErrorKind.READ_ONLY:
        # A demoted primary: this connection will keep failing writes; closed on return
        # (and, with evict_on_read_only="pool", every other one too).
        entry.broken = True
        if lender.config.evict_on_read_only == "pool":
            lender.evict_all("server is read-only")
        return None
    if kind is not ErrorKind.DISCONNECT:
        note_reply(driver, entry, None)  # the server answered with an error: still in sync
        return None
    entry.broken = True
    code = driver.error_code(exc) or 2013
    # PyMySQL's InterfaceError(0) means the socket was already gone: nothing was sent.
    not_sent = code in _NOT_SENT or isinstance(exc, driver.InterfaceError)
    bits = before
    set_behind_our_back = False
    if entry.status is not None and entry.raw is not None:
        # What the driver kept of the last reply it read: a nextset(), a close that
        # drained results or the driver's connection used directly may have moved the
        # session on since the last statement. Either source saying "in a transaction"
        # or "autocommit" is believed: both lead to the stricter rule.
        kept = entry.status()
        bits |= kept
        # A change of session state in a reply tether did not note (the driver's own
        # connection used directly): tether's dirty flag does not know of it.
        set_behind_our_back = bool(kept & STATUS_SESSION_STATE_CHANGED) and (
            kept != entry.last_status
        )
    autocommit = bool(bits & STATUS_AUTOCOMMIT) if entry.status else lender.config.autocommit
    watchdog, entry.watchdog_fired = entry.watchdog_fired, False
    outcome = after_disconnect(
        what="PING" if what.startswith("PING") else what,
        statement=statement,
        not_sent=not_sent,
        in_transaction=bool(bits & STATUS_IN_TRANS),
        autocommit=autocommit,
        # A fresh session starts with the pool's autocommit: one switched away from it is
        # not equivalent (a statement replayed there would run outside the transaction).
        dirty=entry.dirty or set_behind_our_back or autocommit != lender.config.autocommit,
        watchdog_fired=watchdog,
        replay_reads=lender.config.replay_reads,
        replayable=replayable,
    )
    if outcome is Outcome.REPLAY and (attempt > 1 or what == "PING, no reconnect"):
        outcome = Outcome.RAISE
    if outcome is Outcome.TRANSACTION_LOST:
        lender.count("transactions_lost")
        where = "COMMIT could not be sent" if what == "COMMIT" else f"during {what}"
        raise lost_error(driver, code, where, exc) from exc
    if outcome is Outcome.OUTCOME_UNKNOWN:
        lender.count("outcomes_unknown")
        raise _unknown(
            driver, code, what, exc, lender.config.watchdog if watchdog else None
        ) from exc
    if outcome is Outcome.RAISE and watchdog:
        raise driver.OperationalError(
            code,
            f"no answer from the server within {lender.config.watchdog:g}s: the watchdog"
            f" broke the connection during {what} ({exc})",
        ) from exc
    if outcome is Outcome.RAISE:
        return None
    return outcome


def lost_error(
    driver: Any, code: int, where: str, exc: BaseException | None = None
) -> BaseException:
    detail = f" ({exc})" if exc is not None else ""
    return driver_error(
        TransactionLost,
        driver.OperationalError,
        code,
        f"connection lost {where} inside a transaction: the server rolled the transaction"
        f" back and nothing of it was committed{detail}",
    )


def _unknown(
    driver: Any, code: int, what: str, exc: BaseException, watchdog: float | None
) -> BaseException:
    if watchdog is not None:
        message = (
            f"no answer from the server within {watchdog:g}s: the watchdog broke the"
            f" connection during {what}; the write may or may not have run ({exc})"
        )
    elif what == "COMMIT":
        message = (
            "connection lost while COMMIT was in flight: the transaction may or may not"
            f" have been committed ({exc})"
        )
    else:
        message = f"connection lost during {what}; the statement may or may not have run ({exc})"
    return driver_error(OutcomeUnknown, driver.OperationalError, code, message)
