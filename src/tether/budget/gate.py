"""What a pool calls: a lease before each connect, its settlement after each close, and a
renewal per maintenance round. One gate per pool per process; it is one holder in the store.

What this process holds is counted here, by the lease tokens still alive: a token is held by
the connection it was taken for (``entry.budget``), settled when that connection closes, and
forgotten with it if it is dropped some other way (an exception between two lines, a connect
cut short): a token nobody references is no longer counted. Every renewal re-states that
count in the store, so whatever an interruption left behind there (a lease taken but never
recorded here, a release that never reached the store) is put right within one round, and
the error is always on the safe side in between (the store counts more, never less).

The gate's lock is held across its round trips to the store (short: local socket timeouts),
so that the count sent by a renewal and the leases taken and settled meanwhile cannot cross.

When the store cannot be reached, the gate follows this policy: connections already open
stay open and are used as usual; new ones open only within the last known share (what this
pool held then, plus its part of the leases that were free, split between the holders it
knew of); nothing is logged but the loss and the recovery, once each; the store is tried
again at most once a second (and at every maintenance round), and the first answer
re-registers everything this pool holds.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import replace

from ..errors import Error
from . import rules
from .rules import Plan, Snapshot
from .store import Store

__all__ = ["BudgetFull", "Gate", "Token"]

logger = logging.getLogger("tether")

#: How often a gate tries an unreachable store again outside maintenance.
RETRY_OFFLINE = 1.0


class BudgetFull(Error):
    """No lease is free in the fleet's budget (or this pool holds its fair share while
    others wait): the connect is refused like a server's 1226, and the check-out waits
    within its deadline. Also the driver's ``OperationalError``, errno 1226."""

    errno: int


class Token:
    """One lease, as this process holds it."""

    __slots__ = ("__weakref__", "settled")

    def __init__(self) -> None:
        self.settled = False


class Gate:
    """One pool's view of a fleet-wide budget (see the module docstring)."""

    def __init__(
        self,
        *,
        store: Store,
        name: str,
        cap: int | None,
        reserve: int,
        ttl: float,
        grace: float = 0.0,
    ) -> None:
        self.store = store
        self.name = name
        #: Given by the user (``budget_cap``), else read from the server on first connect.
        self.explicit_cap = cap
        self.reserve = reserve
        self.ttl = ttl
        #: How long a new (or restarted, emptied) store grants nothing: two renewals.
        self.grace = grace
        #: The pool's queued check-outs (set by the pool's maintenance).
        self.waiting: Callable[[], int] = lambda: 0
        self.idle = 0
        #: Connects refused for want of a lease (the pool counts them as capacity errors).
        self.refused = 0
        self._start()

    def _start(self) -> None:
        """This process's identity and counts (again in a forked child: the parent's
        leases are the parent's)."""
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self.holder = f"{socket.gethostname()}:{self._pid}:{self.name}:{uuid.uuid4().hex[:6]}"
        self._tokens: weakref.WeakSet[Token] = weakref.WeakSet()
        self.cap = self.explicit_cap or 0
        self.last: Snapshot | None = None
        self.limit = self.cap or 1
        self.online = True
        self._retry_at = 0.0

    def _check_pid(self) -> None:
        if os.getpid() != self._pid:
            self._start()

    # ------------------------------------------------------------------ counts

    @property
    def held(self) -> int:
        """Leases this pool holds: its tokens not yet settled."""
        return sum(1 for token in list(self._tokens) if not token.settled)

    def _info(self) -> str:
        return json.dumps(
            {"host": socket.gethostname(), "pid": self._pid, "pool": self.name, "idle": self.idle}
        )

    # ------------------------------------------------------------------ leases

    def take(self) -> Token | None:
        """A lease for one connect, or ``None`` (none free, or this pool is at its share
        while others wait: the caller backs off as from a 1226)."""
        self._check_pid()
        waiting = self.waiting()
        with self._lock:
            if not self.online and time.monotonic() < self._retry_at:
                return self._take_offline()
            token = Token()

            def ask() -> tuple[bool, Snapshot]:
                return self.store.acquire(
                    self.holder,
                    limit=self.limit,
                    cap=self.cap,
                    ttl=self.ttl,
                    waiting=waiting,
                    info=self._info(),
                    grace=self.grace,
                )

            try:
                granted, snap = ask()
                if not granted and snap.total < max(snap.cap, 1):
                    # Refused on a limit computed from an older answer: look again once.
                    self._heard(snap)
                    if self.limit > snap.mine:
                        granted, snap = ask()
            except self._errors() as exc:
                self._lost(exc)
                return self._take_offline()
            self._heard(snap)
            if not granted:
                self.refused += 1
                return None
            self._tokens.add(token)
            return token

    def _take_offline(self) -> Token | None:
        held = self.held
        if held >= min(rules.offline_limit(self.last, held), self.limit):
            self.refused += 1
            return None
        token = Token()
        self._tokens.add(token)
        return token

    def settle(self, token: Token) -> None:
        """The connection ``token`` was taken for is closed: its lease is free. Marked
        settled before the store is told, so that it is never freed twice; both under the
        lock, so that a renewal never counts it out and then sees it freed once more."""
        if os.getpid() != self._pid:
            return  # a lease of the parent process, in a forked child
        with self._lock:
            if token.settled:
                return
            token.settled = True
            self._tokens.discard(token)
            if not self.online:
                return  # the next renewal that reaches the store states the count
            try:
                self.store.release(self.holder, 1)
            except self._errors() as exc:
                self._lost(exc)

    # ------------------------------------------------------------------ maintenance

    def renew(self, *, idle: int, waiting: int, min_size: int) -> Plan:
        """Tell the store this pool is alive, what it holds and how many of its check-outs
        wait; returns what to give back for the others."""
        self._check_pid()
        self.idle = idle
        with self._lock:
            held = self.held
            try:
                snap = self.store.renew(
                    self.holder,
                    held=held,
                    waiting=waiting,
                    cap=self.cap,
                    ttl=self.ttl,
                    info=self._info(),
                )
            except self._errors() as exc:
                self._lost(exc)
                return Plan()
            self._heard(snap)
        return rules.plan(snap, held=held, idle=idle, waiting=waiting, min_size=min_size)

    def leave(self) -> None:
        """The pool closed: with nothing left open, its holder leaves the store at once
        (else its leases lapse with the renewals)."""
        if os.getpid() != self._pid:
            return
        with self._lock:
            if self.held:
                return
            try:
                self.store.leave(self.holder)
            except self._errors():
                pass  # its entry lapses by itself

    def learn(
        self, *, max_connections: int, session_user_limit: int, account_limit: int | None
    ) -> None:
        """The cap, from what the server said on the pool's first connect (unless given)."""
        if self.explicit_cap:
            return
        cap = rules.binding_cap(
            max_connections=max_connections,
            session_user_limit=session_user_limit,
            account_limit=account_limit,
            reserve=self.reserve,
        )
        with self._lock:
            self.cap = cap
            self.limit = cap if self.last is None else rules.limit(replace(self.last, cap=cap))
        logger.info("%s: fleet budget cap %d (%s)", self.name, cap, self.store)

    # ------------------------------------------------------------------ the store's state

    def _errors(self) -> tuple[type[BaseException], ...]:
        return getattr(self.store, "errors", (OSError,))

    def _heard(self, snap: Snapshot) -> None:
        if not self.online:
            logger.warning("%s: budget store %s reachable again", self.name, self.store)
            self.online = True
        if snap.cap > 0 and not self.explicit_cap and not self.cap:
            self.cap = snap.cap  # another holder read it from the server
        self.last = snap
        self.limit = rules.limit(snap)

    def _lost(self, exc: BaseException) -> None:
        self._retry_at = time.monotonic() + RETRY_OFFLINE
        if self.online:
            self.online = False
            logger.warning(
                "%s: budget store %s unreachable (%s): keeping the %d connections held,"
                " opening at most %d in all until it answers",
                self.name,
                self.store,
                type(exc).__name__,
                self.held,
                rules.offline_limit(self.last, self.held),
            )

    def describe(self) -> str:
        """For the error of a check-out that timed out waiting for a lease."""
        snap = self.last
        where = f"budget {self.store}"
        if not self.online:
            return f"{where} unreachable; holding {self.held} (its last known share)"
        if snap is None:
            return f"{where}: no lease yet"
        return (
            f"{where}: {snap.total}/{snap.cap or '?'} leases held fleet-wide, {snap.mine} here,"
            f" this pool's share {self.limit}, {snap.wanting} pools waiting"
        )

    def __repr__(self) -> str:
        return f"<Gate {self.holder} held={self.held} limit={self.limit} cap={self.cap}>"
