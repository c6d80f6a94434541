"""The budget's decisions as tables (tether.budget.rules), and the gate over an in-memory
store with the Redis store's semantics: leases taken and settled, renewals that put the store
right, expiry of a holder that stopped renewing, the offline policy, a store that lost
everything."""

from __future__ import annotations

import gc

import pytest

from tether.budget import Gate
from tether.budget.rules import (
    Plan,
    Snapshot,
    binding_cap,
    fair_share,
    limit,
    offline_limit,
    plan,
)

from .budgetfake import MemoryStore


def snap(cap=10, total=0, mine=0, wanting=0, rank=-1, demand=0, holders=1) -> Snapshot:
    return Snapshot(cap, total, mine, wanting, rank, demand, holders)


@pytest.mark.parametrize(
    ("max_connections", "session", "account", "reserve", "cap"),
    [
        (151, 0, None, 0, 151),  # no account limit: the server's
        (151, 10, None, 0, 10),  # the account's limit, as the session reports it
        (151, 10, 8, 0, 8),  # mysql.user says tighter
        (151, 0, 12, 0, 12),
        (151, 10, None, 2, 8),  # less the reserve
        (5, 10, None, 0, 5),  # the server's cap binds first
        (151, 1, None, 5, 1),  # never below one
        (151, 10, 0, 0, 10),  # 0 in mysql.user: no own limit
    ],
)
def test_binding_cap(max_connections, session, account, reserve, cap):
    got = binding_cap(
        max_connections=max_connections,
        session_user_limit=session,
        account_limit=account,
        reserve=reserve,
    )
    assert got == cap


@pytest.mark.parametrize(
    ("cap", "holders", "shares"),
    [
        (10, 8, [2, 2, 1, 1, 1, 1, 1, 1]),
        (16, 8, [2] * 8),
        (16, 3, [6, 5, 5]),
        (16, 1, [16]),
        (3, 5, [1, 1, 1, 1, 1]),  # more holders than leases: one each (the cap still binds)
    ],
)
def test_fair_shares_add_up_to_the_cap(cap, holders, shares):
    got = [fair_share(cap, holders, rank) for rank in range(holders)]
    assert got == shares
    if cap >= holders:
        assert sum(got) == cap


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (snap(cap=0), 1),  # cap unknown: one connect, to read it
        (snap(cap=10), 10),  # nobody waits: first come, first served
        (snap(cap=10, wanting=1, rank=0), 10),  # only this one waits
        (snap(cap=10, wanting=2, rank=0), 5),  # two wait: half each
        (snap(cap=10, wanting=3, rank=2), 3),
        (snap(cap=10, wanting=3, rank=0), 4),
        (snap(cap=10, wanting=4, rank=-1), 2),  # four others wait, this one not: 5 compete
        # Two wait; the six that do not wait hold 6 of 16: the two share the other 10.
        (Snapshot(16, 16, 2, 2, 1, 9, 8, wanting_held=10), 5),
        (Snapshot(16, 16, 8, 2, 0, 9, 8, wanting_held=10), 5),
        # Waiting holders hold everything: the whole cap is theirs to share.
        (Snapshot(16, 16, 12, 2, 0, 9, 2, wanting_held=16), 8),
    ],
)
def test_limit(state, expected):
    assert limit(state) == expected


@pytest.mark.parametrize(
    ("state", "held", "idle", "waiting", "min_size", "expected"),
    [
        # Nobody else waits: keep everything.
        (snap(total=10, mine=10), 10, 6, 0, 0, Plan()),
        # Another waits for one lease, none free: one idle one goes now.
        (snap(total=10, mine=10, wanting=1, demand=1), 10, 6, 0, 0, Plan(1, 4)),
        # ... unless a lease is free already.
        (snap(total=9, mine=9, wanting=1, demand=1), 9, 6, 0, 0, Plan(0, 4)),
        # Others wait for 5: five idle go, which leaves this one at its share.
        (snap(total=10, mine=10, wanting=1, demand=5), 10, 6, 0, 0, Plan(5, 0)),
        # min_size is kept.
        (snap(total=10, mine=10, wanting=1, demand=4), 10, 6, 0, 8, Plan(2, 0)),
        # All busy and above its share (2 holders: 5 each): 5 close at give-back.
        (snap(total=10, mine=10, wanting=1, demand=3), 10, 0, 0, 0, Plan(0, 5)),
        # Both wait, this one at its share: nothing to give.
        (snap(total=10, mine=5, wanting=2, rank=1, demand=6), 5, 0, 3, 0, Plan()),
        # Both wait, this one above its share of 5.
        (snap(total=10, mine=7, wanting=2, rank=0, demand=6), 7, 0, 3, 0, Plan(0, 2)),
        # Cap unknown: nothing.
        (snap(cap=0, total=1, mine=1, wanting=1, demand=1), 1, 1, 0, 0, Plan()),
    ],
)
def test_plan(state, held, idle, waiting, min_size, expected):
    assert plan(state, held=held, idle=idle, waiting=waiting, min_size=min_size) == expected


@pytest.mark.parametrize(
    ("last", "held", "expected"),
    [
        (None, 0, 0),  # never heard from the store: nothing new
        (None, 3, 3),
        (snap(cap=10, total=10, mine=4, holders=3), 4, 4),  # nothing was free
        (snap(cap=10, total=4, mine=2, holders=3), 2, 4),  # 6 free between 3 holders
        (snap(cap=10, total=4, mine=2, holders=3), 1, 4),
        (snap(cap=10, total=4, mine=2, holders=3), 5, 5),  # never below what it holds
    ],
)
def test_offline_limit(last, held, expected):
    assert offline_limit(last, held) == expected


# ---------------------------------------------------------------------- the gate


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def gate(store: MemoryStore, name: str, cap: int | None = 3) -> Gate:
    return Gate(store=store, name=name, cap=cap, reserve=0, ttl=5.0)


def test_the_cap_is_never_passed_and_a_settled_lease_is_free_again():
    store = MemoryStore()
    a, b = gate(store, "a"), gate(store, "b")
    tokens = [a.take(), a.take(), b.take()]
    assert all(tokens)
    assert a.take() is None and b.take() is None  # both want more
    assert store.total == 3
    a.settle(tokens[0])
    a.settle(tokens[0])  # settled once only
    assert store.total == 2
    assert b.take() is None  # b is at its share (1 of 3) while a waits too
    a.renew(idle=0, waiting=0, min_size=0)  # a no longer waits
    assert b.take() is not None
    assert store.total == 3 and store.held == {a.holder: 1, b.holder: 2}


def test_before_the_cap_is_known_one_lease_in_all():
    store = MemoryStore()
    a, b = gate(store, "a", cap=None), gate(store, "b", cap=None)
    first = a.take()
    assert first is not None and b.take() is None
    a.learn(max_connections=151, session_user_limit=4, account_limit=None)
    assert a.cap == 4
    assert a.take() is not None  # tells the store the cap
    assert b.take() is not None and b.cap == 4  # learnt from the store


def test_a_renewal_puts_the_store_right_after_an_interruption():
    store = MemoryStore()
    a = gate(store, "a")
    token = a.take()
    assert token is not None
    store.held[a.holder] += 1  # a lease taken, the token lost before it was recorded
    del token  # ... and a token dropped without being settled
    gc.collect()
    assert store.total == 2 and a.held == 0
    a.renew(idle=0, waiting=0, min_size=0)
    assert store.total == 0


def test_a_holder_that_stops_renewing_loses_its_leases_after_the_ttl():
    clock = Clock()
    store = MemoryStore(clock=clock)
    dead, alive = gate(store, "dead"), gate(store, "alive")
    held = [dead.take() for _ in range(3)]
    assert all(held) and alive.take() is None
    clock.now += 4.9
    assert alive.take() is None
    clock.now += 0.2
    assert alive.take() is not None


def test_waiting_elsewhere_makes_an_idle_holder_give_back():
    store = MemoryStore()
    a, b = gate(store, "a"), gate(store, "b")
    held = [a.take() for _ in range(3)]
    assert all(held)
    assert b.take() is None  # marks b as wanting
    assert a.renew(idle=3, waiting=0, min_size=0) == Plan(shed_idle=1, surplus=1)
    assert a.renew(idle=0, waiting=0, min_size=0) == Plan(shed_idle=0, surplus=2)
    b.renew(idle=0, waiting=0, min_size=0)  # nobody waits any more
    assert a.renew(idle=3, waiting=0, min_size=0) == Plan()


def test_offline_it_keeps_what_it_holds_and_opens_only_its_last_known_share():
    store = MemoryStore()
    a, b = gate(store, "a", cap=6), gate(store, "b", cap=6)
    kept = [a.take(), b.take()]
    assert all(kept)
    a.renew(idle=0, waiting=0, min_size=0)  # 4 free, 2 holders: 2 more each
    store.down = True
    more = [a.take() for _ in range(4)]
    assert [t is not None for t in more] == [True, True, False, False]
    assert not a.online
    a.settle(more[0])  # settled locally, stated at the next renewal
    store.down = False
    store.restart()  # and the store lost everything meanwhile
    a.renew(idle=0, waiting=0, min_size=0)
    assert a.online and store.held[a.holder] == 2  # re-registered
    b.renew(idle=0, waiting=0, min_size=0)
    assert store.total == 3


# ---------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"budget": 42}, "budget must be"),
        ({"budget": MemoryStore(), "budget_cap": 0}, "budget_cap"),
        ({"budget": MemoryStore(), "budget_reserve": -1}, "budget_reserve"),
        ({"budget": MemoryStore(), "budget_key": ""}, "budget_key"),
        ({"budget": MemoryStore(), "budget_ttl": 1.0}, "at least twice maintenance_interval"),
        ({"budget": "http://u:hunter2@127.0.0.1/0"}, "redis://"),
    ],
)
def test_budget_options_are_checked_at_construction(options, message):
    from tether import Pool

    from .fakedriver import FakeDriver

    with pytest.raises(ValueError, match=message) as info:
        Pool("mysql://app@127.0.0.1/app", driver=FakeDriver(), **options)
    assert "hunter2" not in str(info.value)


def test_without_a_budget_the_budget_options_cost_nothing():
    from tether import Pool

    from .fakedriver import FakeDriver

    pool = Pool("mysql://app@127.0.0.1/app", driver=FakeDriver(), maintenance_interval=3600)
    try:
        assert pool._connector.gate is None
    finally:
        pool.close()


def test_a_renewal_that_gets_in_during_a_settle_does_not_free_the_lease_twice(monkeypatch):
    """A renewal may run at any thread switch of a settle outside the gate's lock (here: at
    its ``os.getpid()``, run in place): the lease is then either counted by the renewal and
    freed by the settle, or counted out and not freed again; never both."""
    import os

    import tether.budget.gate as gate_module

    store = MemoryStore()
    a = gate(store, "a")
    first, second = a.take(), a.take()
    assert first is not None and second is not None
    during_settle = [False]

    class SwitchingOs:
        def __getattr__(self, name):
            return getattr(os, name)

        @staticmethod
        def getpid() -> int:
            if during_settle[0]:
                during_settle[0] = False
                a.renew(idle=0, waiting=0, min_size=0)  # another thread's renewal
            return os.getpid()

    monkeypatch.setattr(gate_module, "os", SwitchingOs())
    during_settle[0] = True
    a.settle(first)
    assert store.held[a.holder] == 1  # the second one is still open
    a.settle(second)
    assert store.held[a.holder] == 0
