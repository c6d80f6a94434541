"""tether.policy as tables: what a check-out looks at, what a give-back does, what a lost
connection means for the call that was running (DESIGN section 3), backoff and expiry."""

# ruff: noqa: E501 (the tables read best one case a line)

from __future__ import annotations

import os
import select
from typing import Any

import pytest

from tether.drivers import (
    STATUS_AUTOCOMMIT,
    STATUS_IN_TRANS,
    STATUS_MORE_RESULTS,
    STATUS_SESSION_STATE_CHANGED,
)
from tether.entry import Entry
from tether.policy import (
    TRUSTED,
    Backoff,
    Check,
    Cleanup,
    Outcome,
    Rules,
    after_disconnect,
    expiry,
)

NOW = 10_000.0
ME = 111  # the thread checking out
OTHER = 222  # another thread
PID = os.getpid()

AC = STATUS_AUTOCOMMIT
TX = STATUS_IN_TRANS
SSC = STATUS_SESSION_STATE_CHANGED
MORE = STATUS_MORE_RESULTS


def entry(**fields: Any) -> Entry:
    """An idle entry, fresh, of this process, returned long enough ago to be polled."""
    made = Entry(
        object(),
        status=None,
        fd=-1,
        poller=select.poll(),
        session_id=1,
        pid=PID,
        now=NOW - 100,
        expires=NOW + 1000,
        cursor_class=object,
        baseline=[],
    )
    made.last_used = NOW - 0.5
    made.returned_at = NOW - 0.5
    made.owner = ME
    for name, value in fields.items():
        setattr(made, name, value)
    return made


def rules(
    *,
    autocommit: bool = True,
    keeps_sessions: bool = False,
    ping_after: float = 1.0,
    status_after_results: bool = True,
    more_results_in_status: bool = True,
) -> Rules:
    return Rules(
        autocommit=autocommit,
        keeps_sessions=keeps_sessions,
        ping_after=ping_after,
        status_after_results=status_after_results,
        more_results_in_status=more_results_in_status,
    )


# ----------------------------------------------------------------------------- Rules.check

# (case, entry fields, rules options, idle_limit, expected: a Check or a substring of the reason)
CHECKS: list[tuple[str, dict[str, Any], dict[str, Any], float | None, Check | str]] = [
    ("used a moment ago", {"returned_at": NOW - TRUSTED / 2}, {}, None, Check.TRUST),
    ("back just now, by another thread", {"returned_at": NOW, "owner": OTHER}, {}, None, Check.TRUST),
    ("idle a little", {"returned_at": NOW - 0.5}, {}, None, Check.POLL),
    ("idle exactly ping_after", {"returned_at": NOW - 1.0}, {}, None, Check.POLL),
    ("idle past ping_after", {"returned_at": NOW - 1.5}, {}, None, Check.PING),
    ("ping_after=0: any idle", {"returned_at": NOW - 0.01}, {"ping_after": 0.0}, None, Check.PING),
    ("ping_after=0: trusted window", {"returned_at": NOW}, {"ping_after": 0.0}, None, Check.TRUST),
    ("parent's connection", {"pid": PID + 1}, {}, None, "parent process"),
    ("parent's, even if expired", {"pid": PID + 1, "expires": 0.0}, {}, None, "parent process"),
    ("expired", {"expires": NOW}, {}, None, "max lifetime"),
    ("expired, used a moment ago", {"expires": NOW - 1, "returned_at": NOW}, {}, None, "lifetime"),
    ("idle past the server's limit", {"last_used": NOW - 30}, {}, 30.0, "wait_timeout"),
    ("idle under the server's limit", {"last_used": NOW - 29}, {}, 30.0, Check.POLL),
    ("server limit unknown", {"last_used": NOW - 10**6}, {}, None, Check.POLL),
    # The server's clock runs from the last reply, trust from the give-back.
    ("quiet long, back a moment ago", {"last_used": NOW - 40, "returned_at": NOW}, {}, 30.0, "wait"),
    ("another thread's dirty session", {"dirty": True, "owner": OTHER}, {}, None, Check.RESET),
    ("another's dirty, back a moment ago", {"dirty": True, "owner": OTHER, "returned_at": NOW}, {}, None, Check.RESET),
    ("dirty, reclaimed from a dead thread", {"dirty": True, "owner": -1}, {}, None, Check.RESET),
    ("dirty, never owned", {"dirty": True, "owner": None}, {}, None, Check.RESET),
    ("own dirty session, idle a little", {"dirty": True}, {}, None, Check.POLL),
    ("own dirty session, idle long", {"dirty": True, "returned_at": NOW - 5}, {}, None, Check.PING),
    ("own dirty session, just back", {"dirty": True, "returned_at": NOW}, {}, None, Check.TRUST),
    ("another's clean session", {"owner": OTHER}, {}, None, Check.POLL),
    ("thread-mapped: same rules", {"returned_at": NOW - 2}, {"keeps_sessions": True}, None, Check.PING),
]  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "options", "idle_limit", "expected"),
    [case[1:] for case in CHECKS],
    ids=[case[0] for case in CHECKS],
)
def test_check(
    fields: dict[str, Any], options: dict[str, Any], idle_limit: float | None, expected: Any
) -> None:
    got = rules(**options).check(entry(**fields), NOW, ME, PID, idle_limit)
    if isinstance(expected, Check):
        assert got is expected
    else:
        assert isinstance(got, str) and expected in got


# ----------------------------------------------------------------------------- Rules.release

MYSQLCLIENT = {"status_after_results": True, "more_results_in_status": True}
PYMYSQL = {"status_after_results": False, "more_results_in_status": False}
R, RST, AUTO, NONE = Cleanup.ROLLBACK, Cleanup.RESET, Cleanup.AUTOCOMMIT, Cleanup.NONE

# (case, entry fields, status bits (None: the driver can't tell), rules options, expected: a
# Cleanup or a substring of the reason to close)
RELEASES: list[tuple[str, dict[str, Any], int | None, dict[str, Any], Cleanup | str]] = [
    # Never reused: the protocol state or the connection is unknown or gone.
    ("interrupted call", {"in_flight": NOW}, AC, {}, "interrupted"),
    ("interrupted, looks clean", {"in_flight": NOW}, AC, {"keeps_sessions": True}, "interrupted"),
    ("broken", {"broken": True}, AC, {}, "lost"),
    ("closed", {"raw": None}, AC, {}, "lost"),
    ("streaming cursor open", {"unbuffered": 1}, AC, {}, "unread results"),
    ("streaming, thread-mapped", {"unbuffered": 2}, AC, {"keeps_sessions": True}, "unread"),
    ("more results pending", {}, AC | MORE, MYSQLCLIENT, "unread results"),
    # The common give-back: nothing to do, no round trip.
    ("clean, autocommit", {}, AC, MYSQLCLIENT, NONE),
    ("clean, autocommit, pymysql", {}, AC, PYMYSQL, NONE),
    ("pymysql can't see more results", {}, AC | MORE, PYMYSQL, NONE),
    ("clean, autocommit off", {}, 0, {"autocommit": False}, NONE),
    # Cleaning.
    ("open transaction", {}, AC | TX, {}, R),
    ("autocommit off by the user", {}, 0, {}, AUTO),
    ("autocommit off, transaction open", {}, TX, {}, R | AUTO),
    ("autocommit on, configured off", {}, AC, {"autocommit": False}, AUTO),
    ("session state changed", {}, AC | SSC, {}, RST),
    ("changed, in a transaction", {}, AC | TX | SSC, {}, RST),
    ("tether's record: dirty", {"dirty": True}, AC, {}, RST),
    ("dirty, autocommit flipped", {"dirty": True}, 0, {}, RST),
    ("status unknown", {}, None, {}, R),
    ("status unknown, dirty", {"dirty": True}, None, {}, RST),
    # PyMySQL does not refresh the bits after a result set: with autocommit off a SELECT's
    # implicit transaction is invisible, so every give-back rolls back.
    ("pymysql, autocommit off", {}, 0, {"autocommit": False, **PYMYSQL}, R),
    ("pymysql, autocommit off, tx seen", {}, TX, {"autocommit": False, **PYMYSQL}, R),
    ("pymysql, autocommit off, dirty", {"dirty": True}, 0, {"autocommit": False, **PYMYSQL}, RST),
    # Thread-mapped: the thread's session is kept as it left it, transactions still end.
    ("kept: dirty session", {"dirty": True}, AC, {"keeps_sessions": True}, NONE),
    ("kept: state changed", {}, AC | SSC, {"keeps_sessions": True}, NONE),
    ("kept: open transaction", {"dirty": True}, AC | TX, {"keeps_sessions": True}, R),
    ("kept: autocommit off stays off", {}, 0, {"keeps_sessions": True}, NONE),
    ("kept: status unknown", {"dirty": True}, None, {"keeps_sessions": True}, R),
    ("kept: more results pending", {}, AC | MORE, {"keeps_sessions": True}, "unread"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "bits", "options", "expected"),
    [case[1:] for case in RELEASES],
    ids=[case[0] for case in RELEASES],
)
def test_release(
    fields: dict[str, Any], bits: int | None, options: dict[str, Any], expected: Any
) -> None:
    got = rules(**options).release(entry(**fields), bits)
    if isinstance(expected, Cleanup):
        assert got == expected
    else:
        assert isinstance(got, str) and expected in got


def test_release_never_cleans_what_it_must_close() -> None:
    """Whatever the bits, an entry in an unknown protocol state is closed, never cleaned."""
    for bits in (None, 0, AC, AC | TX, AC | SSC, AC | MORE, TX | SSC | MORE):
        for options in ({}, {"keeps_sessions": True}, {"autocommit": False, **PYMYSQL}):
            for fields in ({"in_flight": 1.0}, {"broken": True}, {"raw": None}):
                assert isinstance(rules(**options).release(entry(**fields), bits), str)


# ----------------------------------------------------------------------------- after_disconnect

REPLAY, IGNORE, RAISE = Outcome.REPLAY, Outcome.IGNORE, Outcome.RAISE
LOST, UNKNOWN = Outcome.TRANSACTION_LOST, Outcome.OUTCOME_UNKNOWN

SEL = "SELECT * FROM t"
INS = "INSERT INTO t VALUES (1)"
UPD = "UPDATE t SET a = 1"
DDL = "CREATE TABLE u (a INT)"
OUTFILE = "SELECT * FROM t INTO OUTFILE '/tmp/x'"

# Columns: what, statement, not_sent, in_transaction, autocommit, dirty, watchdog,
# replay_reads, idempotent (None: not said) -> Outcome
DISCONNECTS: list[tuple[str, str | None, bool, bool, bool, bool, bool, bool, bool | None, Outcome]] = [
    # COMMIT: never replayed; lost before it was sent, the transaction is lost; after, unknown.
    ("COMMIT", None, True, True, True, False, False, True, None, LOST),
    ("COMMIT", None, False, True, True, False, False, True, None, UNKNOWN),
    ("COMMIT", None, False, False, False, False, False, True, None, UNKNOWN),
    ("COMMIT", None, False, True, True, True, True, True, None, UNKNOWN),
    # Inside a transaction: never hidden, whatever the statement, sent or not.
    ("execute", SEL, False, True, True, False, False, True, None, LOST),
    ("execute", SEL, True, True, True, False, False, True, None, LOST),
    ("execute", INS, False, True, True, False, False, True, True, LOST),
    ("execute", INS, False, True, False, False, False, True, None, LOST),
    ("executemany", INS, False, True, True, False, False, True, False, LOST),
    ("BEGIN", None, False, True, True, False, False, True, None, LOST),
    ("ROLLBACK", None, False, True, True, False, False, True, None, LOST),
    ("execute", SEL, False, True, True, True, True, True, None, LOST),
    # A ROLLBACK outside a transaction: the server rolled back anyway.
    ("ROLLBACK", None, False, False, True, False, False, True, None, IGNORE),
    ("ROLLBACK", None, False, False, False, True, False, True, None, IGNORE),
    # Reads in autocommit on a clean session: replayed once.
    ("execute", SEL, False, False, True, False, False, True, None, REPLAY),
    ("execute", "SHOW TABLES", False, False, True, False, False, True, None, REPLAY),
    ("executemany", SEL, False, False, True, False, False, True, True, REPLAY),
    ("execute", SEL, False, False, True, False, False, False, None, RAISE),  # replay_reads=False
    ("execute", SEL, False, False, True, False, False, True, False, UNKNOWN),  # idempotent=False
    ("execute", OUTFILE, False, False, True, False, False, True, None, UNKNOWN),  # writes a file
    # A dirty session: a fresh one lacks what it held; the driver's error, never a replay.
    ("execute", SEL, False, False, True, True, False, True, None, RAISE),
    ("execute", SEL, True, False, True, True, False, True, None, RAISE),
    ("execute", INS, True, False, True, True, False, True, None, RAISE),
    ("execute", INS, False, False, True, True, False, True, True, RAISE),
    ("BEGIN", None, False, False, True, True, False, True, None, RAISE),
    ("PING", None, False, False, True, True, False, True, None, RAISE),
    # Never sent: nothing can have run, a replay is always safe on a clean session.
    ("execute", INS, True, False, True, False, False, True, None, REPLAY),
    ("execute", SEL, True, False, True, False, False, False, None, REPLAY),
    ("execute", INS, True, False, True, False, False, True, False, REPLAY),
    ("callproc", "CALL p", True, False, True, False, False, True, False, REPLAY),
    ("select_db", None, True, False, True, False, False, True, None, REPLAY),
    # Writes that may have run: the caller is told, unless it said the write is idempotent.
    ("execute", INS, False, False, True, False, False, True, None, UNKNOWN),
    ("execute", UPD, False, False, True, False, False, True, None, UNKNOWN),
    ("execute", DDL, False, False, True, False, False, True, None, UNKNOWN),
    ("execute", INS, False, False, True, False, False, True, True, REPLAY),
    ("execute", INS, False, False, True, False, False, False, True, REPLAY),
    ("callproc", "CALL p", False, False, True, False, False, True, False, UNKNOWN),
    ("executemany", INS, False, False, True, False, False, True, False, UNKNOWN),
    # Autocommit off, no transaction open: the implicit one a DML began died with the session.
    ("execute", INS, False, False, False, False, False, True, None, REPLAY),
    ("execute", UPD, False, False, False, False, False, True, None, REPLAY),
    ("execute", DDL, False, False, False, False, False, True, None, UNKNOWN),  # commits itself
    ("execute", SEL, False, False, False, False, False, True, None, REPLAY),
    # The watchdog broke the call: the server stopped answering, a replay would hang again.
    ("execute", SEL, False, False, True, False, True, True, None, RAISE),
    ("execute", SEL, False, False, True, False, True, True, True, RAISE),
    ("execute", INS, False, False, True, False, True, True, None, UNKNOWN),
    ("execute", INS, False, False, True, False, True, True, True, UNKNOWN),
    ("execute", INS, True, False, True, False, True, True, None, RAISE),
    ("PING", None, False, False, True, False, True, True, None, RAISE),
    # tether's own calls that write nothing: replayed on a clean session.
    ("BEGIN", None, False, False, True, False, False, True, None, REPLAY),
    ("SET autocommit", None, False, False, True, False, False, True, None, REPLAY),
    ("USE", None, False, False, True, False, False, True, None, REPLAY),
    ("PING", None, False, False, True, False, False, True, None, REPLAY),
    ("PING", None, False, False, True, False, False, False, None, REPLAY),
    # Any other call that may have reached the server: the driver's error.
    ("select_db", None, False, False, True, False, False, True, None, RAISE),
    ("rollback_to", None, False, False, True, False, False, True, None, RAISE),
]  # fmt: skip


@pytest.mark.parametrize(
    (
        "what",
        "statement",
        "not_sent",
        "in_transaction",
        "autocommit",
        "dirty",
        "watchdog",
        "replay_reads",
        "idempotent",
        "expected",
    ),
    DISCONNECTS,
    ids=[
        f"{row[0]}:{(row[1] or '-').split()[0]}:{'unsent' if row[2] else 'sent'}"
        f"{':tx' if row[3] else ''}{'' if row[4] else ':ac-off'}{':dirty' if row[5] else ''}"
        f"{':watchdog' if row[6] else ''}{'' if row[7] else ':no-replay'}"
        f"{'' if row[8] is None else f':idempotent={row[8]}'}"
        for row in DISCONNECTS
    ],
)
def test_after_disconnect(
    what: str,
    statement: str | None,
    not_sent: bool,
    in_transaction: bool,
    autocommit: bool,
    dirty: bool,
    watchdog: bool,
    replay_reads: bool,
    idempotent: bool | None,
    expected: Outcome,
) -> None:
    got = after_disconnect(
        what=what,
        statement=statement,
        not_sent=not_sent,
        in_transaction=in_transaction,
        autocommit=autocommit,
        dirty=dirty,
        watchdog_fired=watchdog,
        replay_reads=replay_reads,
        replayable=idempotent,
    )
    assert got is expected


def test_after_disconnect_takes_bytes_statements() -> None:
    common: dict[str, Any] = {
        "what": "execute",
        "not_sent": False,
        "in_transaction": False,
        "autocommit": True,
        "dirty": False,
        "watchdog_fired": False,
        "replay_reads": True,
        "replayable": None,
    }
    assert after_disconnect(statement=b"SELECT 1", **common) is REPLAY
    assert after_disconnect(statement=b"DELETE FROM t", **common) is UNKNOWN


def test_a_dirty_session_or_a_transaction_is_never_replayed() -> None:
    """Over every combination of the other inputs: no replay once the session held state or
    a transaction (DESIGN section 3: a replay is only sound on an equivalent session)."""
    for what, statement in (
        ("execute", SEL),
        ("execute", INS),
        ("BEGIN", None),
        ("USE", None),
        ("PING", None),
    ):
        for not_sent in (False, True):
            for autocommit in (False, True):
                for replay_reads in (False, True):
                    for idempotent in (None, False, True):
                        for dirty, in_tx in ((True, False), (False, True), (True, True)):
                            got = after_disconnect(
                                what=what,
                                statement=statement,
                                not_sent=not_sent,
                                in_transaction=in_tx,
                                autocommit=autocommit,
                                dirty=dirty,
                                watchdog_fired=False,
                                replay_reads=replay_reads,
                                replayable=idempotent,
                            )
                            assert got is not REPLAY, (what, statement, not_sent, dirty, in_tx)


# ----------------------------------------------------------------------------- Backoff


def test_backoff_doubles_from_first_up_to_the_cap() -> None:
    backoff = Backoff(first=0.05, limit=1.0)
    assert backoff.delay == 0.0
    delays = []
    for _ in range(10):
        backoff.failed(0.0, rand=lambda: 1.0)
        delays.append(backoff.delay)
    assert delays == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0, 1.0]
    backoff.succeeded()
    assert backoff.delay == 0.0
    assert backoff.failed(0.0, rand=lambda: 1.0) == pytest.approx(0.05)


@pytest.mark.parametrize(
    ("rand", "failures", "expected"),
    [
        (0.0, 1, 0.025),  # full jitter: between half the delay ...
        (1.0, 1, 0.05),  # ... and all of it
        (0.5, 1, 0.0375),
        (0.0, 3, 0.1),
        (1.0, 3, 0.2),
        (0.0, 20, 0.5),
        (1.0, 20, 1.0),  # never past the cap: a server that is back is used within a second
    ],
)
def test_backoff_jitter_bounds(rand: float, failures: int, expected: float) -> None:
    backoff = Backoff()
    until = 0.0
    for _ in range(failures):
        until = backoff.failed(100.0, rand=lambda: rand)
    assert until - 100.0 == pytest.approx(expected)


def test_backoff_with_real_randomness_stays_in_bounds() -> None:
    backoff = Backoff(first=0.05, limit=1.0)
    for n in range(200):
        until = backoff.failed(5.0)
        delay = backoff.delay
        assert 0.5 * delay <= until - 5.0 <= delay <= 1.0, n
    spread = {round(Backoff().failed(0.0), 6) for _ in range(50)}
    assert len(spread) > 10  # jittered: refills from many processes spread out


# ----------------------------------------------------------------------------- expiry


@pytest.mark.parametrize(
    ("lifetime", "rand", "expected"),
    [
        (None, 0.5, float("inf")),
        (1000.0, 0.0, 1000.0),
        (1000.0, 1.0, 950.0),  # at most 5% early
        (1000.0, 0.5, 975.0),
        (2.0, 1.0, 1.9),
    ],
)
def test_expiry(lifetime: float | None, rand: float, expected: float) -> None:
    assert expiry(0.0, lifetime, rand=lambda: rand) == pytest.approx(expected)


def test_expiry_jitter_is_within_five_percent_and_spread() -> None:
    got = [expiry(100.0, 600.0) - 100.0 for _ in range(500)]
    assert all(0.95 * 600.0 <= g <= 600.0 for g in got)
    assert max(got) - min(got) > 0.02 * 600.0  # connections opened together retire apart
