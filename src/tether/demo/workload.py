"""The demo's workload: threads doing reads by key and small two-statement transactions
through one variant, every request timed and its outcome kept, never waited on forever.

A request that blocks (a peer waiting on a socket that will never answer) cannot be interrupted
from Python, so the workload never waits for it: the controller *freezes* the run at its end,
counting every request still in flight as a stall of the length it had reached, then cuts the
network under it and joins the threads with a deadline. The ledger tables tell afterwards which
writes really happened (:func:`audit`).
"""

from __future__ import annotations

import functools
import itertools
import queue
import random
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tether

from .variants import Endpoint, Tables, Variant, driver_module, error_kind

__all__ = [
    "ITEMS",
    "Audit",
    "Outcome",
    "PhaseStats",
    "Workload",
    "audit",
    "create_items",
    "create_ledger",
    "drop_tables",
    "phase_stats",
]

ITEMS = 1000  # rows in the read table
_ids = itertools.count(1)  # request ids, unique across the whole run


@dataclass(slots=True)
class Outcome:
    """One request as the application saw it."""

    slot: int  # which thread
    write: bool
    start: float  # seconds since the variant's run started
    end: float  # when the application heard back (or the run was frozen)
    phase: int  # index of the phase it started in
    error: str | None  # error kind, None when it worked
    # reads: "ok" / "error" / "hung"; writes: "committed" / "failed" / "unknown" / "hung"
    verdict: str
    request_id: int | None = None

    @property
    def latency(self) -> float:
        return self.end - self.start


@dataclass
class Audit:
    """What the ledger says about the writes of one variant's run."""

    committed: int = 0  # writes the application believes committed
    lost: int = 0  # believed committed, not in the ledger
    duplicated: int = 0  # extra ledger rows for one request
    half_committed: int = 0  # ledger rows and counter increments that do not match
    failed_but_written: int = 0  # the application saw an error (not "outcome unknown"); it happened
    unknown_written: int = 0  # "outcome unknown" (or hung) writes that did happen
    unknown_not_written: int = 0  # ... and those that did not


class Workload:
    """``threads`` workers issuing requests through :attr:`variant` (the controller may swap
    it) until :meth:`freeze`."""

    def __init__(
        self,
        *,
        threads: int,
        think: float,
        tx_work: float,
        write_share: float = 0.3,
        seed: int = 7,
    ) -> None:
        self.threads = threads
        self.think = think
        self.tx_work = tx_work
        self.write_share = write_share
        self.seed = seed
        self.variant: Variant | None = None
        self.phase = 0
        self.t0 = time.monotonic()
        self.outcomes: list[Outcome] = []
        self.ok = 0
        self.errors = 0
        self._lock = threading.Lock()
        self._in_flight: dict[int, tuple[float, bool, int | None, int]] = {}
        self._go = threading.Event()
        self._go.set()
        self._stop = threading.Event()
        self._frozen = threading.Event()  # set under the lock
        # The hook for killing a session inside a transaction: a write that takes a ticket
        # stops between its INSERT and its UPDATE, announces itself and waits to be killed.
        self._tickets = 0
        self._held: queue.Queue[tuple[int, threading.Event]] = queue.Queue()
        self._workers = [
            threading.Thread(target=self._loop, args=(n,), name=f"tether-demo-{n}", daemon=True)
            for n in range(threads)
        ]

    # -- control

    def now(self) -> float:
        return time.monotonic() - self.t0

    def start(self, variant: Variant) -> None:
        self.variant = variant
        self.t0 = time.monotonic()
        for worker in self._workers:
            worker.start()

    def pause(self, wait: float) -> int:
        """Start no new request; wait up to ``wait`` seconds for those in flight. Returns how
        many are still in flight."""
        self._go.clear()
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            with self._lock:
                if not self._in_flight:
                    return 0
            time.sleep(0.01)
        with self._lock:
            return len(self._in_flight)

    def resume(self) -> None:
        self._go.set()

    def hold_writes(self, count: int) -> None:
        """Let the next ``count`` writes stop inside their transaction (after the INSERT)
        until :meth:`next_held`'s caller has done with them."""
        with self._lock:
            self._tickets = count

    def next_held(self, timeout: float) -> tuple[int, threading.Event] | None:
        """The request id of a write stopped inside its transaction, and the event that
        lets it go on; None if none came within ``timeout`` seconds."""
        try:
            return self._held.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None

    def _work(self, request_id: int) -> None:
        time.sleep(self.tx_work)
        with self._lock:
            held = self._tickets > 0 and not self._frozen.is_set()
            if held:
                self._tickets -= 1
        if held:
            release = threading.Event()
            self._held.put((request_id, release))
            release.wait(2.0)  # bounded: a fault that gives up must not stall the thread

    def stalled(self, longer_than: float) -> int:
        """How many requests have been in flight longer than ``longer_than`` seconds."""
        now = time.monotonic()
        with self._lock:
            return sum(1 for s in self._in_flight.values() if now - (self.t0 + s[0]) > longer_than)

    def freeze(self, grace: float) -> int:
        """End the run: no new requests, ``grace`` seconds for the ones in flight, then every
        request still in flight is recorded as hung for as long as it had been. Later outcomes
        are ignored. Returns how many were hung."""
        self._stop.set()
        self._go.set()
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            with self._lock:
                if not self._in_flight:
                    break
            time.sleep(0.01)
        with self._lock:
            self._frozen.set()
            end = self.now()
            hung = list(self._in_flight.items())
            for slot, (start, write, request_id, phase) in hung:
                self.outcomes.append(
                    Outcome(slot, write, start, end, phase, "hung", "hung", request_id)
                )
        return len(hung)

    def join(self, timeout: float) -> list[str]:
        """Wait up to ``timeout`` seconds for the workers to end. Returns where each one that
        did not is (its innermost function), for the report."""
        deadline = time.monotonic() + timeout
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        frames = sys._current_frames()
        where = []
        for worker in self._workers:
            frame = frames.get(worker.ident or -1)
            if not worker.is_alive() or frame is None:
                continue
            code = frame.f_code
            where.append(
                f"{Path(code.co_filename).parent.name}/{Path(code.co_filename).name}:{code.co_name}"
            )
        return where

    # -- the workers

    def _loop(self, slot: int) -> None:
        rnd = random.Random(self.seed * 1000 + slot)
        while not self._stop.is_set():
            if not self._go.wait(0.05):
                continue
            if self._stop.is_set():
                break
            variant = self.variant
            if variant is None:
                break
            write = rnd.random() < self.write_share
            request_id = next(_ids) if write else None
            phase = self.phase
            start = self.now()
            with self._lock:
                if self._frozen.is_set():
                    break
                self._in_flight[slot] = (start, write, request_id, phase)
            error: str | None = None
            try:
                if write:
                    rid = request_id or 0
                    variant.write(rid, slot, functools.partial(self._work, rid))
                    verdict = "committed"
                else:
                    variant.read(rnd.randint(1, ITEMS))
                    verdict = "ok"
            except Exception as exc:
                error = error_kind(exc)
                if isinstance(exc, tether.OutcomeUnknown):
                    verdict = "unknown"
                else:
                    verdict = "failed" if write else "error"
            end = self.now()
            with self._lock:
                self._in_flight.pop(slot, None)
                if self._frozen.is_set():
                    break
                self.outcomes.append(
                    Outcome(slot, write, start, end, phase, error, verdict, request_id)
                )
                if error is None:
                    self.ok += 1
                else:
                    self.errors += 1
            self._stop.wait(self.think)


# ----------------------------------------------------------------------------- the tables


def _direct(endpoint: Endpoint) -> Any:
    """A connection straight to the server (not through the proxy), for set-up and audit;
    always PyMySQL, whatever driver the variants use."""
    return driver_module("pymysql").connect(
        **endpoint.connect_kwargs(),
        autocommit=True,
        connect_timeout=10,
        read_timeout=60,
        write_timeout=60,
    )


def create_items(endpoint: Endpoint, table: str) -> None:
    """The table the reads use, once per run."""
    conn = _direct(endpoint)
    try:
        cur = conn.cursor()
        cur.execute(f"DROP TABLE IF EXISTS {table}")
        cur.execute(
            f"CREATE TABLE {table} (id INT PRIMARY KEY, name VARCHAR(40) NOT NULL,"
            " qty INT NOT NULL) ENGINE=InnoDB"
        )
        cur.executemany(
            f"INSERT INTO {table} VALUES (%s, %s, %s)",
            [(i, f"item-{i}", i % 97) for i in range(1, ITEMS + 1)],
        )
    finally:
        conn.close()


def create_ledger(endpoint: Endpoint, tables: Tables, *, threads: int) -> None:
    """A fresh ledger and counters for one variant."""
    conn = _direct(endpoint)
    try:
        cur = conn.cursor()
        cur.execute(f"DROP TABLE IF EXISTS {tables.ledger}, {tables.counters}")
        # No unique key on request_id on purpose: a write applied twice must show as two rows.
        cur.execute(
            f"CREATE TABLE {tables.ledger} (id BIGINT AUTO_INCREMENT PRIMARY KEY,"
            " request_id BIGINT NOT NULL, slot INT NOT NULL, session BIGINT NOT NULL,"
            " KEY (request_id)) ENGINE=InnoDB"
        )
        cur.execute(
            f"CREATE TABLE {tables.counters} (slot INT PRIMARY KEY, n INT NOT NULL) ENGINE=InnoDB"
        )
        cur.executemany(
            f"INSERT INTO {tables.counters} VALUES (%s, 0)", [(s,) for s in range(threads)]
        )
    finally:
        conn.close()


def drop_tables(endpoint: Endpoint, names: list[str]) -> None:
    conn = _direct(endpoint)
    try:
        cur = conn.cursor()
        for name in names:
            cur.execute(f"DROP TABLE IF EXISTS {name}")
    finally:
        conn.close()


def audit(endpoint: Endpoint, tables: Tables, outcomes: list[Outcome]) -> Audit:
    """Compare what the application believes with what the server has."""
    conn = _direct(endpoint)
    try:
        cur = conn.cursor()
        cur.execute(f"SELECT request_id, COUNT(*) FROM {tables.ledger} GROUP BY request_id")
        rows: dict[int, int] = {int(r): int(n) for r, n in cur.fetchall()}
        cur.execute(f"SELECT slot, COUNT(*) FROM {tables.ledger} GROUP BY slot")
        ledger_by_slot: dict[int, int] = {int(s): int(n) for s, n in cur.fetchall()}
        cur.execute(f"SELECT slot, n FROM {tables.counters}")
        counter_by_slot: dict[int, int] = {int(s): int(n) for s, n in cur.fetchall()}
    finally:
        conn.close()
    result = Audit()
    result.duplicated = sum(n - 1 for n in rows.values() if n > 1)
    for o in outcomes:
        if not o.write or o.request_id is None:
            continue
        present = rows.get(o.request_id, 0) > 0
        if o.verdict == "committed":
            result.committed += 1
            if not present:
                result.lost += 1
        elif o.verdict == "failed":
            if present:
                result.failed_but_written += 1
        elif present:
            result.unknown_written += 1
        else:
            result.unknown_not_written += 1
    # Each transaction adds one ledger row and one counter increment for its thread, together.
    slots = set(ledger_by_slot) | set(counter_by_slot)
    result.half_committed = sum(
        abs(ledger_by_slot.get(s, 0) - counter_by_slot.get(s, 0)) for s in slots
    )
    return result


@dataclass
class PhaseStats:
    """Per phase of one variant's run."""

    requests: int = 0
    errors: int = 0
    hung: int = 0
    longest_stall: float = 0.0
    kinds: dict[str, int] = field(default_factory=dict)


def phase_stats(outcomes: list[Outcome], phases: int) -> list[PhaseStats]:
    stats = [PhaseStats() for _ in range(phases)]
    for o in outcomes:
        if not 0 <= o.phase < phases:
            continue
        s = stats[o.phase]
        s.longest_stall = max(s.longest_stall, o.latency)
        if o.verdict == "hung":
            s.hung += 1
        elif o.error is None:
            s.requests += 1
        else:
            s.errors += 1
            s.kinds[o.error] = s.kinds.get(o.error, 0) + 1
    return stats
