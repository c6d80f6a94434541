"""An in-memory budget store with the Redis store's semantics (the Lua scripts of
:mod:`tether.budget.store`), for tests without I/O: atomic under one lock, expiry on its own
clock, and a switch that makes it unreachable."""

from __future__ import annotations

import json
import threading
import time

from tether.budget.rules import Snapshot
from tether.budget.store import HolderStatus, Status


class Unreachable(ConnectionError):
    pass


class MemoryStore:
    errors: tuple[type[BaseException], ...] = (Unreachable,)

    def __init__(self, key: str = "test", clock=time.monotonic, *, fresh: bool = False) -> None:
        self.key = key
        # When the keys were created (None: at the first call); by default long ago, so that
        # a test's first lease is not held back by the grace after a (re)start.
        self.born: float | None = None if fresh else float("-inf")
        self.clock = clock
        self.lock = threading.Lock()
        self.cap = 0
        self.held: dict[str, int] = {}
        self.expiry: dict[str, float] = {}
        self.waiting: dict[str, int] = {}
        self.info: dict[str, str] = {}
        self.down = False
        self.calls = 0

    # ------------------------------------------------------------------ helpers

    def _enter(self) -> float:
        self.calls += 1
        if self.down:
            raise Unreachable("budget store down")
        now = self.clock()
        if self.born is None:
            self.born = now
        for holder in [h for h, at in self.expiry.items() if at <= now]:
            self._drop(holder)
        return now

    def _drop(self, holder: str) -> None:
        self.held.pop(holder, None)
        self.expiry.pop(holder, None)
        self.waiting.pop(holder, None)
        self.info.pop(holder, None)

    def _set_waiting(self, holder: str, n: int) -> None:
        if n > 0:
            self.waiting[holder] = n
        else:
            self.waiting.pop(holder, None)

    def _cap(self, given: int) -> int:
        if given > 0:
            self.cap = given
        return self.cap

    @property
    def total(self) -> int:
        return sum(self.held.values())

    def _snapshot(self, holder: str, cap: int) -> Snapshot:
        wanted = sorted(self.waiting)
        return Snapshot(
            cap=cap,
            total=self.total,
            mine=self.held.get(holder, 0),
            wanting=len(wanted),
            rank=wanted.index(holder) if holder in self.waiting else -1,
            demand=sum(self.waiting.values()),
            holders=len(self.held),
            wanting_held=sum(self.held.get(h, 0) for h in wanted),
        )

    # ------------------------------------------------------------------ the interface

    def acquire(
        self,
        holder: str,
        *,
        limit: int,
        cap: int,
        ttl: float,
        waiting: int,
        info: str,
        grace: float = 0.0,
    ) -> tuple[bool, Snapshot]:
        with self.lock:
            now = self._enter()
            cap = self._cap(cap)
            room = cap if cap > 0 else 1
            mine = self.held.get(holder, 0)
            fresh = self.born is not None and now - self.born < grace
            granted = self.total < room and mine < limit and not fresh
            if granted:
                self.held[holder] = mine + 1
                self._set_waiting(holder, waiting)
            else:
                self._set_waiting(holder, waiting + 1)
            self.expiry[holder] = now + ttl
            self.info[holder] = info
            return granted, self._snapshot(holder, cap)

    def release(self, holder: str, count: int) -> None:
        with self.lock:
            self._enter()
            if holder in self.held:
                self.held[holder] = max(0, self.held[holder] - count)

    def renew(
        self, holder: str, *, held: int, waiting: int, cap: int, ttl: float, info: str
    ) -> Snapshot:
        with self.lock:
            now = self._enter()
            cap = self._cap(cap)
            self.held[holder] = held
            self._set_waiting(holder, waiting)
            self.expiry[holder] = now + ttl
            self.info[holder] = info
            return self._snapshot(holder, cap)

    def leave(self, holder: str) -> None:
        with self.lock:
            self._enter()
            self._drop(holder)

    def status(self) -> Status:
        with self.lock:
            now = self._enter()
            return Status(
                key=self.key,
                cap=self.cap,
                total=self.total,
                demand=sum(self.waiting.values()),
                holders=[
                    HolderStatus(
                        holder=h,
                        held=n,
                        waiting=self.waiting.get(h, 0),
                        expires_in=self.expiry.get(h, now) - now,
                        info=json.loads(self.info.get(h, "{}")),
                    )
                    for h, n in sorted(self.held.items())
                ],
            )

    def restart(self) -> None:
        """Everything lost, as a Redis without persistence after a restart."""
        with self.lock:
            self.cap = 0
            self.born = None
            self.held.clear()
            self.expiry.clear()
            self.waiting.clear()
            self.info.clear()

    def __repr__(self) -> str:
        return f"<MemoryStore {self.key!r}>"
