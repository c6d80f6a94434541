"""What the pool knows about one server connection (the record the pool owns), and the lease
through which one holder has it.

The pool's bookkeeping reads every field under its lock; the holder of an entry writes the
per-statement fields (``in_flight``, ``last_status``, ``dirty``) without it. Nothing here
does I/O: the pool and the statement runner decide what a field means.
"""

from __future__ import annotations

import select
import threading
import traceback
import weakref
from collections.abc import Callable
from types import CodeType
from typing import Any, Protocol

__all__ = ["Borrower", "Entry", "Lease", "Round", "Wake"]


class Borrower(Protocol):
    """Who a check-out is for: a thread (``threading.Thread``), or in the asyncio flavour a
    task's stand-in. ``ident`` tells borrowers apart (connection affinity), ``name`` is
    shown in messages."""

    @property
    def name(self) -> str: ...

    @property
    def ident(self) -> int | None: ...


class Wake:
    """How a queued holder is woken, given by the pool flavour: ``notify()`` is called (under
    the pool's lock) when it is granted something; ``signal`` is what it blocks on (a lock,
    a future); ``error`` is set instead of a grant when the pool closes."""

    __slots__ = ("error", "notify", "signal")

    def __init__(self, signal: Any, notify: Callable[[], None]) -> None:
        self.signal = signal
        self.notify = notify
        self.error: BaseException | None = None


class Lease:
    """One holder's claim on the pool: a check-out in progress (waiting, opening, checking)
    and then the connection it handed out. The pool grants to leases only; whatever was
    granted to a lease whose holder gives up (an exception anywhere, a timeout, a
    cancellation) is found through it and taken back. ``entry.holder is lease`` is what
    makes a lease valid: a stale lease can never touch a connection again."""

    __slots__ = ("entry", "ident", "origin", "proxy", "since", "thread", "wake")

    def __init__(self, thread: threading.Thread | Borrower | None) -> None:
        #: The entry granted to this lease (``entry.holder is self`` while it is valid).
        self.entry: Entry | None = None
        #: The thread (or task) the check-out is for (named in messages), and its ident
        #: (connection affinity); None and 0 for the pool's own work (a keepalive ping, a
        #: refill), which is never a borrower.
        self.thread = thread
        self.ident = thread.ident or 0 if thread is not None else 0
        #: When the connection was handed out (monotonic).
        self.since = 0.0
        #: Where it was acquired, for leak reports and timeout messages: the caller's
        #: (code, instruction offset), or the whole stack when leak_timeout is set.
        self.origin: tuple[CodeType, int] | traceback.StackSummary | None = None
        #: Set while the holder waits in the queue.
        self.wake: Wake | None = None
        #: The connection proxy handed out for it, held weakly: once it is gone (garbage
        #: collected without being given back), the pool takes the connection back.
        self.proxy: weakref.ref[Any] | None = None

    def where(self) -> str:
        """Where the holder acquired the connection, for messages."""
        origin = self.origin
        if isinstance(origin, traceback.StackSummary):
            return "".join(traceback.format_list(origin)).rstrip()
        if origin is None:
            return "unknown"
        code, offset = origin
        line = code.co_firstlineno
        for start, end, number in code.co_lines():
            if start <= offset < end and number is not None:
                line = number
                break
        return f"{code.co_filename}:{line} in {code.co_name}"


class Round:
    """A stretch of the pool's own work (a maintenance round, closing the pool): the leases
    it makes are recorded here as they are made, so that if the round is cut short, every
    one of them (even one made by a loop the exception left half-way) is taken back."""

    __slots__ = ("leases",)

    def __init__(self) -> None:
        self.leases: list[Lease] = []

    def lease(self) -> Lease:
        lease = Lease(None)
        self.leases.append(lease)
        return lease


class Entry:
    """One server connection and everything the pool knows about it."""

    __slots__ = (
        "baseline",
        "broken",
        "budget",
        "created",
        "cursor_class",
        "dirty",
        "expires",
        "fd",
        "holder",
        "in_flight",
        "last_status",
        "last_used",
        "leak_reported",
        "owner",
        "pid",
        "poller",
        "raw",
        "returned_at",
        "session_id",
        "status",
        "unbuffered",
        "unreported",
        "watchdog_fired",
    )

    def __init__(
        self,
        raw: Any,
        *,
        status: Callable[[], int] | None,
        fd: int,
        poller: select.poll,
        session_id: int,
        pid: int,
        now: float,
        expires: float,
        cursor_class: type[Any],
        baseline: list[tuple[str, tuple[Any, ...]]],
    ) -> None:
        #: The driver's connection; None once closed.
        self.raw: Any = raw
        #: Reads the status bits of the server's last reply, without a round trip.
        self.status = status
        self.fd = fd
        self.poller = poller
        self.session_id = session_id
        #: The process that opened it: a forked child never uses it.
        self.pid = pid
        self.created = now
        self.expires = expires
        #: When the server last answered on this session (monotonic).
        self.last_used = now
        self.returned_at = now
        #: Who has it: None while idle in the pool, else the lease holding it.
        self.holder: Lease | None = None
        #: The thread ident of its last borrower (affinity; -1: reclaimed from a dead thread).
        self.owner: int | None = None
        #: When the call in progress was sent (0.0: none). A call that ended in an unknown
        #: protocol state (interrupted half-way) leaves it set, and the connection is closed.
        self.in_flight = 0.0
        self.last_status = status() if status is not None else 0
        #: The session holds state beyond its baseline (variables, temporary tables, locks,
        #: a USE, unknown use through the driver's connection): reset before another
        #: borrower, and never the ground for a replay.
        self.dirty = False
        #: The connection was lost (or interrupted mid-call): replaced before the next
        #: statement, closed on return.
        self.broken = False
        #: What its loss cost that the holder has not been told yet ("transaction" or
        #: "session": an interrupted call), raised at the next use.
        self.unreported: str | None = None
        #: Open streaming cursors: results left unread make the connection unusable.
        self.unbuffered = 0
        self.leak_reported = False
        self.watchdog_fired = False
        #: tether's subclass of the connection's default cursor class.
        self.cursor_class = cursor_class
        #: The statements that restore what the driver set up at connect (character set,
        #: sql_mode, init_command), run after a protocol reset.
        self.baseline = baseline
        #: Its lease in a fleet-wide budget (:mod:`tether.budget`), settled when it closes.
        self.budget: Any = None

    def __repr__(self) -> str:
        state = "closed" if self.raw is None else "idle" if self.holder is None else "in use"
        return f"<tether.Entry session {self.session_id} {state}>"
