"""tether.state.PoolState step by step: check-out steps, FIFO waiters, the give-back's
hand-over, giving up in every situation, unregistering, and the size accounting that must
hold after each of them (size = idle + in use + opening)."""

from __future__ import annotations

import gc
import os
import select
import threading
import weakref

import pytest

from tether.entry import Entry, Lease, Round, Wake
from tether.selection import RECLAIMED, Selection, Shared, ThreadMapped
from tether.state import PoolState, Step

NOW = 1_000.0
A, B, C = 101, 202, 303  # thread idents


class Proxy:
    """Stands for the connection proxy a check-out hands out (held weakly by its lease)."""


def entry(session: int = 1, *, expires: float = float("inf")) -> Entry:
    return Entry(
        object(),
        status=None,
        fd=-1,
        poller=select.poll(),
        session_id=session,
        pid=os.getpid(),
        now=NOW,
        expires=expires,
        cursor_class=object,
        baseline=[],
    )


def lease(ident: int) -> Lease:
    made = Lease(threading.current_thread())
    made.ident = ident
    return made


def queued(ident: int, woken: list[Lease]) -> Lease:
    """A lease with a wake-up that records when it is notified."""
    made = lease(ident)
    made.wake = Wake(None, lambda: woken.append(made))
    return made


def state(max_size: int = 2, min_size: int = 0, selection: Selection | None = None) -> PoolState:
    return PoolState(max_size=max_size, min_size=min_size, selection=selection or Shared())


def consistent(s: PoolState) -> None:
    """The invariants every step keeps."""
    assert s.size == len(s.entries) + len(s.opening) <= s.max_size
    assert s.in_use == len(s.entries) - len(s.idle)
    assert s.size == len(s.idle) + s.in_use + len(s.opening)
    for e in s.entries:
        assert (e.holder is None) == (e in s.idle), e
        if e.holder is not None:
            assert e.holder.entry is e
    assert set(s.idle) <= set(s.entries)
    assert len(set(s.waiters)) == len(s.waiters)
    assert not set(s.waiters) & set(s.opening)


def open_one(s: PoolState, ident: int, session: int = 1) -> tuple[Lease, Entry]:
    """Check out through a new connection: OPEN, then opened."""
    held = lease(ident)
    assert s.checkout(held, None, NOW) is Step.OPEN
    made = entry(session)
    s.opened(held, made, NOW)
    consistent(s)
    return held, made


def idle_one(s: PoolState, ident: int, session: int = 1) -> Entry:
    _held, made = open_one(s, ident, session)
    assert s.checkin(made, NOW) is None
    made.owner = ident
    consistent(s)
    return made


def idle_many(s: PoolState, *owners: int | None) -> list[Entry]:
    """Open one connection per owner (all held at once), then give them back in order: the
    idle set, least recently returned first."""
    made = [open_one(s, owner or 1, session)[1] for session, owner in enumerate(owners, 1)]
    for e, owner in zip(made, owners, strict=True):
        assert s.checkin(e, NOW) is None
        e.owner = owner
    consistent(s)
    return made


# ----------------------------------------------------------------------------- check-out


def test_empty_pool_reserves_a_slot_then_registers_the_connection() -> None:
    s = state()
    held = lease(A)
    assert s.checkout(held, None, NOW) is Step.OPEN
    assert held in s.opening and s.size == 1 and s.in_use == 0
    consistent(s)
    made = entry()
    s.opened(held, made, NOW)
    assert made.holder is held and held.entry is made and held not in s.opening
    assert (s.size, s.in_use, len(s.idle)) == (1, 1, 0)
    assert s.counters.opened == 1 and s.counters.checkouts == 1
    consistent(s)


def test_the_pools_own_lease_opens_without_counting_a_checkout() -> None:
    s = state(min_size=1)
    (refill,) = s.reserve_refill(lambda: Lease(None), NOW)
    made = entry()
    s.opened(refill, made, NOW)
    assert s.counters.opened == 1 and s.counters.checkouts == 0
    assert s.checkin(made, NOW) is None
    consistent(s)


def test_the_threads_last_connection_comes_first() -> None:
    s = state(max_size=3)
    mine, _ = idle_many(s, A, B)  # B's returned later: the shared selection would pick it
    held = lease(A)
    assert s.checkout(held, mine, NOW) is Step.TAKE
    assert held.entry is mine and mine.holder is held and mine not in s.idle
    consistent(s)


def test_the_last_connection_is_not_taken_if_another_thread_owns_it_now() -> None:
    s = state(max_size=3)
    mine, newer = idle_many(s, B, C)  # A's last connection, but B used it since
    held = lease(A)
    assert s.checkout(held, mine, NOW) is Step.TAKE
    assert held.entry is newer  # the shared selection's choice: the warmest


def test_last_connection_in_use_means_another() -> None:
    s = state(max_size=2)
    _, busy = open_one(s, A, 1)
    busy.owner = A
    held = lease(A)
    assert s.checkout(held, busy, NOW) is Step.OPEN  # not the one in use
    consistent(s)


@pytest.mark.parametrize(
    ("selection", "takeovers"), [(Shared(), 0), (ThreadMapped(), 1)], ids=["shared", "mapped"]
)
def test_at_the_bound_another_threads_idle_connection(selection: Selection, takeovers: int) -> None:
    s = state(max_size=1, selection=selection)
    theirs = idle_one(s, B)
    held = lease(A)
    assert s.checkout(held, None, NOW) is Step.TAKE
    assert held.entry is theirs
    assert s.counters.takeovers == takeovers
    consistent(s)


def test_thread_mapped_opens_its_own_below_the_bound() -> None:
    s = state(max_size=2, selection=ThreadMapped())
    idle_one(s, threading.get_ident())  # a living thread's
    held = lease(A)
    assert s.checkout(held, None, NOW) is Step.OPEN
    assert s.counters.takeovers == 0
    consistent(s)


def test_a_reclaimed_connection_is_no_takeover() -> None:
    s = state(max_size=1, selection=ThreadMapped())
    freed = idle_one(s, B)
    freed.owner = RECLAIMED
    assert s.checkout(lease(A), None, NOW) is Step.TAKE
    assert s.counters.takeovers == 0


def test_closed_pool() -> None:
    s = state()
    s.close(lambda: RuntimeError("closed"))
    assert s.checkout(lease(A), None, NOW) is Step.CLOSED
    assert s.size == 0 and s.counters.waits == 0


# ----------------------------------------------------------------------------- waiting


def test_waiters_queue_first_come_first_served() -> None:
    s = state(max_size=1)
    first, made = open_one(s, A)
    woken: list[Lease] = []
    waiting = [queued(ident, woken) for ident in (B, C, 404)]
    for w in waiting:
        assert s.checkout(w, None, NOW) is Step.WAIT
    assert list(s.waiters) == waiting and s.counters.waits == 3
    consistent(s)
    holder = first
    for i, w in enumerate(waiting):
        # The give-back hands the connection over directly: it never sits idle in between.
        assert s.checkin(made, NOW) is None
        assert woken == waiting[: i + 1]
        assert made.holder is w and w.entry is made and made not in s.idle
        assert s.granted(w) is Step.TAKE
        assert s.granted(holder) is None  # the previous holder's lease is stale
        holder = w
        consistent(s)
    assert not s.waiters


def test_a_freed_slot_goes_to_the_first_waiter() -> None:
    s = state(max_size=1)
    _first, made = open_one(s, A)
    woken: list[Lease] = []
    w1, w2 = queued(B, woken), queued(C, woken)
    s.checkout(w1, None, NOW)
    s.checkout(w2, None, NOW)
    made.raw = None  # closed by its holder
    s.unregister(made, "connection lost", NOW)
    assert woken == [w1] and w1 in s.opening and list(s.waiters) == [w2]
    assert s.granted(w1) is Step.OPEN
    assert s.size == 1
    consistent(s)


def test_no_slot_is_granted_while_growth_backs_off() -> None:
    s = state(max_size=2)
    failing = lease(A)
    assert s.checkout(failing, None, NOW) is Step.OPEN
    s.open_failed(failing, "refused", 2003, wait_out=True, capacity=False, now=NOW)
    assert s.blocked_until > NOW and s.size == 0
    assert s.last_connect_error == "refused" and s.last_connect_errno == 2003
    assert s.counters.connect_errors == 1 and s.counters.capacity_errors == 0
    woken: list[Lease] = []
    w = queued(B, woken)
    assert s.checkout(w, None, NOW) is Step.WAIT  # room, but blocked
    assert s.checkout(lease(C), None, s.blocked_until) is Step.OPEN  # once the backoff ends
    consistent(s)


def test_a_failed_connect_that_is_not_waited_out_hands_its_slot_on() -> None:
    s = state(max_size=1)
    failing = lease(A)
    s.checkout(failing, None, NOW)
    woken: list[Lease] = []
    w = queued(B, woken)
    assert s.checkout(w, None, NOW) is Step.WAIT
    s.open_failed(failing, "access denied", 1045, wait_out=False, capacity=False, now=NOW)
    assert s.blocked_until == 0.0
    assert woken == [w] and w in s.opening
    consistent(s)


def test_a_capacity_error_is_counted_and_backs_off() -> None:
    s = state(max_size=4)
    failing = lease(A)
    s.checkout(failing, None, NOW)
    s.open_failed(failing, "1226", 1226, wait_out=True, capacity=True, now=NOW)
    assert s.counters.capacity_errors == 1 and s.blocked_until > NOW
    held = lease(B)
    s.checkout(held, None, s.blocked_until)
    s.opened(held, entry(), s.blocked_until)
    assert s.blocked_until == 0.0 and s.backoff.delay == 0.0  # a success ends the backoff


def test_stop_waiting_leaves_the_queue_once() -> None:
    s = state(max_size=1)
    open_one(s, A)
    woken: list[Lease] = []
    w = queued(B, woken)
    s.checkout(w, None, NOW)
    s.stop_waiting(w)
    s.stop_waiting(w)
    assert not s.waiters and s.granted(w) is None
    consistent(s)


def test_close_wakes_every_waiter_with_the_error() -> None:
    s = state(max_size=1)
    _, made = open_one(s, A)
    woken: list[Lease] = []
    waiting = [queued(ident, woken) for ident in (B, C)]
    for w in waiting:
        s.checkout(w, None, NOW)
    s.close(lambda: RuntimeError("pool closed"))
    assert woken == waiting and not s.waiters
    for w in waiting:
        assert isinstance(w.wake.error, RuntimeError) if w.wake else False
        assert s.granted(w) is Step.CLOSED
    assert s.checkin(made, NOW) == "pool closed"  # checked-out ones close when they come back
    consistent(s)


# ----------------------------------------------------------------------------- give-back


def test_checkin_makes_it_idle_when_nobody_waits() -> None:
    s = state()
    _held, made = open_one(s, A)
    assert s.checkin(made, NOW + 5) is None
    assert made.holder is None and made in s.idle and made.returned_at == NOW + 5
    consistent(s)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("closed", "pool closed"),
        ("expired", "max lifetime reached"),
        ("lost", "connection lost"),
    ],
)
def test_checkin_refuses_what_must_leave_the_pool(change: str, reason: str) -> None:
    s = state()
    held, made = open_one(s, A)
    if change == "closed":
        s.close(RuntimeError)
    elif change == "expired":
        made.expires = NOW
    else:
        made.raw = None
    assert s.checkin(made, NOW) == reason
    assert made.holder is held and made not in s.idle  # still held: its holder closes it
    consistent(s)


# ----------------------------------------------------------------------------- leaving the pool


def test_unregister_frees_the_slot_once() -> None:
    s = state()
    _held, made = open_one(s, A)
    s.unregister(made, "connection lost", NOW)
    s.unregister(made, "connection lost", NOW)
    assert s.size == 0 and s.counters.closed == 1
    assert s.closed_by == {"connection lost": 1}
    consistent(s)


def test_unregister_of_an_idle_entry() -> None:
    s = state()
    made = idle_one(s, A)
    s.unregister(made, "idle timeout", NOW)
    assert not s.idle and not s.entries
    consistent(s)


# ----------------------------------------------------------------------------- abandon


def test_abandon_while_queued() -> None:
    s = state(max_size=1)
    open_one(s, A)
    woken: list[Lease] = []
    w1, w2 = queued(B, woken), queued(C, woken)
    s.checkout(w1, None, NOW)
    s.checkout(w2, None, NOW)
    assert s.abandon(w1, NOW) is None
    assert list(s.waiters) == [w2]
    consistent(s)


def test_abandon_while_opening_hands_the_slot_to_the_next_waiter() -> None:
    s = state(max_size=1)
    opening = lease(A)
    assert s.checkout(opening, None, NOW) is Step.OPEN
    woken: list[Lease] = []
    w = queued(B, woken)
    s.checkout(w, None, NOW)
    assert s.abandon(opening, NOW) is None
    assert opening not in s.opening and w in s.opening and woken == [w]
    consistent(s)


def test_abandon_after_a_grant_the_waiter_never_saw() -> None:
    """Granted while an exception was already on its way: the connection goes on to the
    next waiter (or idle), never stays with the gone caller."""
    s = state(max_size=1)
    _first, made = open_one(s, A)
    woken: list[Lease] = []
    gone, next_one = queued(B, woken), queued(C, woken)
    s.checkout(gone, None, NOW)
    s.checkout(next_one, None, NOW)
    s.checkin(made, NOW)
    assert made.holder is gone
    assert s.abandon(gone, NOW) is None
    assert made.holder is next_one and s.granted(next_one) is Step.TAKE
    assert s.abandon(next_one, NOW) is None
    assert made in s.idle and made.holder is None
    consistent(s)


def test_abandon_after_a_slot_grant_the_waiter_never_saw() -> None:
    s = state(max_size=1)
    _first, made = open_one(s, A)
    woken: list[Lease] = []
    gone = queued(B, woken)
    s.checkout(gone, None, NOW)
    made.raw = None
    s.unregister(made, "connection lost", NOW)
    assert gone in s.opening
    assert s.abandon(gone, NOW) is None
    assert s.size == 0
    consistent(s)


def test_abandon_while_checking_a_clean_connection_puts_it_back() -> None:
    s = state()
    made = idle_one(s, A)
    held = lease(A)
    assert s.checkout(held, made, NOW) is Step.TAKE
    assert s.abandon(held, NOW) is None
    assert made in s.idle and made.holder is None
    consistent(s)


@pytest.mark.parametrize("how", ["in flight", "broken", "closed"])
def test_abandon_with_a_connection_in_an_unknown_state_returns_it_to_close(how: str) -> None:
    s = state()
    made = idle_one(s, A)
    held = lease(A)
    s.checkout(held, made, NOW)
    if how == "in flight":
        made.in_flight = NOW  # a ping or reset cut short between request and reply
    elif how == "broken":
        made.broken = True
    else:
        made.raw = None
    assert s.abandon(held, NOW) is made
    assert made.holder is held and made not in s.idle  # held: the caller closes, unregisters
    s.unregister(made, "check-out interrupted", NOW)
    assert s.size == 0
    consistent(s)


def test_abandon_of_a_connection_opened_but_never_registered() -> None:
    s = state()
    held = lease(A)
    s.checkout(held, None, NOW)
    made = entry()
    held.entry = made  # as an exception inside opened() could leave it
    made.holder = held
    assert s.abandon(held, NOW) is made
    assert held not in s.opening and s.size == 0
    made.raw = None
    assert s.abandon(held, NOW) is None  # closed already: nothing more to do
    consistent(s)


def test_abandon_of_an_expired_connection_returns_it_to_close() -> None:
    s = state()
    made = idle_one(s, A)
    held = lease(A)
    s.checkout(held, made, NOW)
    made.expires = NOW
    assert s.abandon(held, NOW) is made
    consistent(s)


def test_abandon_is_idempotent_and_stale_leases_touch_nothing() -> None:
    s = state(max_size=2)
    made = idle_one(s, A)
    held = lease(A)
    s.checkout(held, made, NOW)
    assert s.abandon(held, NOW) is None
    again = lease(B)
    s.checkout(again, made, NOW)  # someone else has it now
    before = (dict(s.idle), made.holder)
    assert s.abandon(held, NOW) is None  # the old lease is stale
    assert (dict(s.idle), made.holder) == before
    assert s.abandon(lease(C), NOW) is None  # a lease that was never granted anything
    consistent(s)


def test_abandon_after_the_pool_closed_returns_the_connection_to_close() -> None:
    s = state()
    made = idle_one(s, A)
    held = lease(A)
    s.checkout(held, made, NOW)
    s.close(RuntimeError)
    assert s.abandon(held, NOW) is made
    consistent(s)


# ----------------------------------------------------------------------------- maintenance


def test_reserve_refill_up_to_min_size() -> None:
    s = state(max_size=4, min_size=3)
    idle_one(s, A)
    work = Round()
    leases = s.reserve_refill(work.lease, NOW)
    assert len(leases) == 2 and work.leases == leases and s.size == 3
    consistent(s)
    assert s.reserve_refill(work.lease, NOW) == []  # nothing more while they open
    for made in leases:
        assert s.abandon(made, NOW) is None  # a round cut short gives its slots back
    assert s.size == 1
    consistent(s)


def test_no_refill_while_backing_off_or_closed() -> None:
    s = state(max_size=4, min_size=2)
    s.blocked_until = NOW + 1
    assert s.reserve_refill(Round().lease, NOW) == []
    s.blocked_until = 0.0
    s.close(RuntimeError)
    assert s.reserve_refill(Round().lease, NOW) == []


def test_take_idle_holds_what_it_takes() -> None:
    s = state(max_size=3)
    keep, old = idle_many(s, A, B)
    old.expires = NOW
    work = Round()
    taken = s.take_idle(
        NOW, lambda e: "max lifetime reached" if e.expires <= NOW else None, work.lease
    )
    assert taken == [(old, "max lifetime reached")]
    assert old.holder is work.leases[0] and old not in s.idle and keep in s.idle
    consistent(s)


def test_collect_finds_connections_whose_proxy_is_gone_once() -> None:
    s = state()
    held, made = open_one(s, A)
    proxy = Proxy()
    held.proxy = weakref.ref(proxy)
    assert s.collect() == []
    del proxy
    gc.collect()
    assert s.collect() == [made]
    assert s.collect() == []
    assert s.counters.reclaimed == 1
    assert made.holder is held  # still held: closed and unregistered by the caller
    consistent(s)


def test_reclaim_orphans_frees_ended_threads_connections() -> None:
    s = state(max_size=3, selection=ThreadMapped())
    mine, theirs, unowned = idle_many(s, A, B, None)
    assert s.reclaim_orphans({A}) == 1
    assert theirs.owner == RECLAIMED and mine.owner == A and unowned.owner is None
    assert s.reclaim_orphans({A}) == 0


def test_held_too_long_reports_each_leak_once() -> None:
    s = state(max_size=3)
    _held, made = open_one(s, A, 1)
    own = Lease(None)  # the pool's own work is never a leak
    s.checkout(own, None, NOW)
    s.opened(own, entry(2), NOW)
    assert s.held_too_long(NOW + 100, None) == []
    assert s.held_too_long(NOW + 5, 10.0) == []
    assert s.held_too_long(NOW + 10, 10.0) == [made]
    assert s.held_too_long(NOW + 20, 10.0) == []
    assert s.counters.leaks == 1


def test_expire_all_and_forget_all() -> None:
    s = state(max_size=3)
    _, b = open_one(s, B, 2)
    a = entry(1)
    own = Lease(None)
    s.checkout(own, None, NOW)
    s.opened(own, a, NOW)
    s.checkin(a, NOW)
    s.expire_all()
    assert a.expires == 0.0 and b.expires == 0.0
    assert s.checkin(b, NOW) == "max lifetime reached"
    woken: list[Lease] = []
    s.checkout(lease(C), None, NOW)  # a reserved slot
    s.checkout(queued(404, woken), None, NOW)
    assert set(s.forget_all()) == {a, b}
    assert s.size == 0 and not s.waiters and not s.idle
    consistent(s)


# ----------------------------------------------------------------------------- a random walk


def test_every_sequence_of_steps_keeps_the_accounting() -> None:
    """Random check-outs, give-backs, losses, interruptions and grants: the invariants hold
    after every step, and giving everything up leaves only idle connections."""
    import random

    rng = random.Random(7)
    for selection in (Shared(), ThreadMapped()):
        s = state(max_size=3, selection=selection)
        woken: list[Lease] = []
        active: list[Lease] = []
        sessions = iter(range(1, 10_000))
        for _ in range(3000):
            action = rng.random()
            if action < 0.35 or not active:
                ident = rng.choice((A, B, C))
                made = queued(ident, woken)
                step = s.checkout(made, None, NOW)
                active.append(made)
            else:
                made = rng.choice(active)
                step = s.granted(made)
                if made in s.opening and rng.random() < 0.7:
                    s.opened(made, entry(next(sessions)), NOW)
                elif made.entry is not None and made.entry.holder is made:
                    got = made.entry
                    roll = rng.random()
                    if roll < 0.5:
                        reason = s.checkin(got, NOW)
                        if reason is None:
                            active.remove(made)
                        else:
                            got.raw = None
                            s.unregister(got, reason, NOW)
                            active.remove(made)
                    elif roll < 0.7:
                        got.raw = None  # lost: closed by its holder, then unregistered
                        s.unregister(got, "connection lost", NOW)
                        active.remove(made)
                    else:
                        got.in_flight = NOW if roll < 0.8 else 0.0
                        back = s.abandon(made, NOW)
                        if back is not None:
                            back.raw = None
                            s.unregister(back, "check-out interrupted", NOW)
                        active.remove(made)
                else:
                    back = s.abandon(made, NOW)
                    if back is not None:
                        back.raw = None
                        s.unregister(back, "check-out interrupted", NOW)
                    active.remove(made)
            del step
            consistent(s)
        for made in list(active):
            back = s.abandon(made, NOW)
            if back is not None:
                back.raw = None
                s.unregister(back, "check-out interrupted", NOW)
        consistent(s)
        assert s.in_use == 0 and not s.opening and not s.waiters
