"""tether.selection as tables: which idle connection each pool flavour hands a thread whose
own last connection is not idle."""

from __future__ import annotations

import os
import select
import threading

import pytest

from tether.entry import Entry
from tether.selection import RECLAIMED, Shared, ThreadMapped, alive_threads

ME = 111
LIVING = 222  # another thread, still running
DEAD = 333  # a thread that has ended
UNOWNED = None


def entry(name: str, owner: int | None) -> Entry:
    made = Entry(
        object(),
        status=None,
        fd=-1,
        poller=select.poll(),
        session_id=hash(name) & 0xFFFF,
        pid=os.getpid(),
        now=0.0,
        expires=float("inf"),
        cursor_class=object,
        baseline=[],
    )
    made.owner = owner
    return made


def idle_set(*owners: int | None) -> tuple[dict[Entry, None], list[Entry]]:
    """Idle entries in the order they were returned (least recently first)."""
    made = [entry(f"e{i}", owner) for i, owner in enumerate(owners)]
    return dict.fromkeys(made), made


def alive() -> set[int]:
    return {ME, LIVING}


# Columns: idle owners (least recently returned first), at the bound -> index chosen (None:
# open a connection of its own, or wait at the bound).
SHARED = [
    ((), False, None),
    ((), True, None),
    ((UNOWNED,), False, 0),
    ((ME, LIVING, DEAD), False, 2),  # the warmest: returned last
    ((LIVING, ME), True, 1),
    ((ME, LIVING), False, 1),  # not its own: the shared pool does not care whose
]

THREAD_MAPPED = [
    ((), False, None),
    ((), True, None),
    ((ME,), False, 0),  # its own
    ((ME,), True, 0),
    ((UNOWNED,), False, 0),  # nobody's
    ((RECLAIMED,), False, 0),  # reclaimed from an ended thread
    ((DEAD,), False, 0),  # its thread has ended (not yet reclaimed by maintenance)
    ((LIVING,), False, None),  # another living thread's session: open its own instead
    ((LIVING,), True, 0),  # ... unless at the bound: taken over, so a bound never deadlocks
    ((LIVING, LIVING), True, 0),  # takeover: the least recently returned
    ((LIVING, ME), False, 1),
    ((LIVING, UNOWNED), False, 1),
    ((LIVING, DEAD), False, 1),
    ((LIVING, DEAD), True, 1),  # a dead thread's before a takeover, at the bound too
    ((LIVING, RECLAIMED, ME), True, 1),  # the first free one in order
]


@pytest.mark.parametrize(("owners", "at_bound", "index"), SHARED)
def test_shared(owners: tuple[int | None, ...], at_bound: bool, index: int | None) -> None:
    idle, made = idle_set(*owners)
    got = Shared().choose(idle, ME, at_bound, alive)
    assert got is (None if index is None else made[index])


@pytest.mark.parametrize(("owners", "at_bound", "index"), THREAD_MAPPED)
def test_thread_mapped(owners: tuple[int | None, ...], at_bound: bool, index: int | None) -> None:
    idle, made = idle_set(*owners)
    got = ThreadMapped().choose(idle, ME, at_bound, alive)
    assert got is (None if index is None else made[index])


def test_choose_leaves_the_idle_set_alone() -> None:
    for selection in (Shared(), ThreadMapped()):
        idle, made = idle_set(LIVING, ME, UNOWNED)
        selection.choose(idle, ME, True, alive)
        assert list(idle) == made


def test_living_threads_are_asked_only_when_needed() -> None:
    """Asking which threads live enumerates them all: not for a free connection found first."""

    def must_not_ask() -> set[int]:
        raise AssertionError("alive() called")

    idle, made = idle_set(ME, LIVING)
    assert ThreadMapped().choose(idle, ME, False, must_not_ask) is made[0]
    asked = []

    def counting() -> set[int]:
        asked.append(1)
        return alive()

    idle, made = idle_set(LIVING, LIVING, LIVING, UNOWNED)
    assert ThreadMapped().choose(idle, ME, False, counting) is made[3]
    assert len(asked) == 1  # once per choice, not once per entry


def test_flavours_say_whether_they_keep_sessions() -> None:
    assert Shared.keeps_sessions is False
    assert ThreadMapped.keeps_sessions is True


def test_alive_threads_knows_this_thread_and_forgets_ended_ones() -> None:
    seen: list[int] = []
    t = threading.Thread(target=lambda: seen.append(threading.get_ident()))
    t.start()
    t.join(5)
    living = alive_threads()
    assert threading.get_ident() in living
    assert seen and seen[0] not in living
