"""The budget's decisions, as plain functions of what the store last said, without I/O.

How many leases the fleet may hold (the cap), how many this pool may hold (its limit: the whole
cap while nobody else waits, its fair share while others do), what it gives back for others
(idle connections they are waiting for, and, at give-back, connections above its share), and
how much it may still open while the store cannot be reached. The store enforces the cap
atomically; these functions decide everything else, and the tests read them as tables.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Plan", "Snapshot", "binding_cap", "fair_share", "limit", "offline_limit", "plan"]


@dataclass(frozen=True)
class Snapshot:
    """What the store said on its last answer, as seen by one holder (one pool)."""

    #: The fleet's cap (0: not known yet).
    cap: int
    #: Leases held fleet-wide.
    total: int
    #: Leases this holder holds.
    mine: int
    #: Holders with check-outs waiting for a lease (this one included, if it waits).
    wanting: int
    #: This holder's place among them (0-based, in the store's order; -1: not waiting).
    rank: int
    #: Check-outs waiting fleet-wide (this holder's included).
    demand: int
    #: Holders known to the store (this one included once it holds a lease).
    holders: int = 1
    #: Leases held by the waiting holders (-1: not known; taken as all of them).
    wanting_held: int = -1


@dataclass(frozen=True)
class Plan:
    """What one maintenance round gives back for the others."""

    #: Idle connections to close now (above ``min_size``): others wait for their leases.
    shed_idle: int = 0
    #: Connections above this pool's fair share: closed at give-back instead of kept.
    surplus: int = 0


def binding_cap(
    *,
    max_connections: int,
    session_user_limit: int,
    account_limit: int | None = None,
    reserve: int = 0,
) -> int:
    """The cap a budget keeps the fleet under: the tightest of the account's own
    ``MAX_USER_CONNECTIONS`` (``account_limit``, from ``mysql.user`` when readable), the
    session's ``@@max_user_connections`` (the account's limit when it has one, else the
    global one; 0 means none) and the server's ``max_connections``, less ``reserve`` (for
    admin sessions, other tools); never below 1."""
    candidates = [max_connections]
    for value in (session_user_limit, account_limit):
        if value is not None and value > 0:
            candidates.append(value)
    return max(1, min(candidates) - reserve)


def fair_share(cap: int, holders: int, rank: int) -> int:
    """The share of the holder at ``rank`` when ``holders`` holders compete for ``cap``
    leases: ``cap // holders``, and one more for the first ``cap % holders`` (so the shares
    add up to the cap exactly); at least one, so nobody starves while the cap allows."""
    holders = max(1, holders)
    base, extra = divmod(cap, holders)
    share = base + (1 if 0 <= rank < extra else 0)
    return max(1, share) if cap > 0 else 0


def _competitors(snap: Snapshot) -> tuple[int, int]:
    """(how many holders compete, this holder's rank among them): the waiting ones and this
    one (last, if it is not waiting itself)."""
    if snap.rank >= 0:
        return snap.wanting, snap.rank
    return snap.wanting + 1, snap.wanting


def others_wanting(snap: Snapshot) -> int:
    return snap.wanting - (1 if snap.rank >= 0 else 0)


def limit(snap: Snapshot) -> int:
    """How many leases this holder may hold: the whole cap while nobody else waits (first
    come, first served), else its fair share.

    A waiting holder's share is of what the waiting holders hold or could take: the cap less
    the leases of holders that do not wait (theirs are busy; what they hold above their own
    share comes back at their give-backs, and their idle ones as others need them). A holder
    that does not wait is measured against the whole cap split between it and the waiting
    ones."""
    if snap.cap <= 0:
        return 1  # the cap is not known yet: one connect, to read it from the server
    if others_wanting(snap) <= 0:
        return snap.cap
    holders, rank = _competitors(snap)
    if snap.rank < 0 or snap.wanting_held < 0:
        return fair_share(snap.cap, holders, rank)
    settled = max(0, snap.total - snap.wanting_held)  # held by holders that do not wait
    return fair_share(max(snap.cap - settled, holders), holders, rank)


def plan(snap: Snapshot, *, held: int, idle: int, waiting: int, min_size: int) -> Plan:
    """What this holder gives back, holding ``held`` leases (``idle`` of them on idle
    connections) with ``waiting`` check-outs of its own queued.

    Nothing while nobody else waits. Otherwise: idle connections above ``min_size`` that the
    others need (their demand beyond the free leases) are closed now; and what this holder
    holds above its fair share, busy or not, is closed at give-back (its own waiters then
    wait their turn like everyone else's)."""
    others = others_wanting(snap)
    if others <= 0 or snap.cap <= 0:
        return Plan()
    others_demand = max(others, snap.demand - waiting)
    free = max(0, snap.cap - snap.total)
    need = max(0, others_demand - free)
    sheddable = max(0, min(idle, held - min_size))
    shed = min(sheddable, need)
    share = limit(snap)
    surplus = max(0, held - shed - max(share, min_size))
    return Plan(shed_idle=shed, surplus=surplus)


def offline_limit(last: Snapshot | None, held: int) -> int:
    """How many leases a holder may hold while the store cannot be reached: what it holds,
    plus its part of the leases that were free when it last heard from the store (split
    between all the holders it knew of, so the fleet together stays under the cap). Before
    the store ever answered: nothing beyond what it holds (the cap is unknown)."""
    if last is None or last.cap <= 0:
        return held
    free = max(0, last.cap - last.total)
    return max(held, last.mine + free // max(1, last.holders))
