"""The watchdog's out-of-band look at calls stuck waiting on the server.

A probe connection (hard timeouts, its own short life) asks the server whether each stuck
call's session still exists and is still working. A call whose server does not answer, whose
session is gone or was killed, or whose session sits idle (its reply was lost on the way) is
broken, so its caller gets an error now instead of hanging until TCP gives up. A long query
the server is still running is left alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .classify import ErrorKind, classify
from .drivers import Driver
from .dsn import DSN

__all__ = ["probe_sessions", "session_verdict"]


def session_verdict(row: tuple[str, float] | None) -> str | None:
    """Why a stuck call on a session in this state should be broken (``row``: the session's
    ``COMMAND`` and ``TIME`` in the process list, ``None`` when it is not listed), or
    ``None`` to leave it alone."""
    if row is None:
        return "its session no longer exists on the server"
    command, seconds = row
    if command == "Killed":
        return "its session was killed"
    if command == "Sleep" and seconds >= 1:
        return "the server finished with it (the reply was lost on the way)"
    return None


def probe_sessions(
    driver: Driver,
    dsn: DSN,
    connect_args: Mapping[str, Any],
    session_ids: Sequence[int],
    timeout: float,
    error_kinds: Mapping[int, ErrorKind],
) -> Callable[[int], str | None]:
    """Ask the server, on a separate short-lived connection bounded by ``timeout``, about
    the given sessions; returns a function telling why a session's call should be broken."""
    try:
        raw = driver.connect(
            dsn,
            connect_timeout=timeout,
            autocommit=True,
            connect_args={**connect_args, **driver.io_timeouts(timeout)},
        )
    except Exception as exc:
        if classify(exc, driver, error_kinds) is ErrorKind.CAPACITY:
            return lambda _sid: None  # the server answers; can't see sessions: leave them
        reason = f"server does not answer ({type(exc).__name__}: {exc})"
        return lambda _sid: reason
    try:
        ids = ",".join(str(int(sid)) for sid in session_ids)
        rows = driver.execute(
            raw,
            f"SELECT ID, COMMAND, TIME FROM information_schema.PROCESSLIST WHERE ID IN ({ids})",
        )
    except Exception as exc:
        reason = f"server does not answer ({type(exc).__name__}: {exc})"
        return lambda _sid: reason
    finally:
        driver.close(raw)
    found = {int(r[0]): (str(r[1]), float(r[2] or 0)) for r in rows}
    return lambda sid: session_verdict(found.get(sid))
