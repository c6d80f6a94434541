"""A budget in each threaded flavour and driver, against a real server: a check-out beyond the
budget waits and times out naming it (errno 1226, as for the server's own cap), a give-back
lets the next one in, closing the pool frees every lease."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import tether
from tether.budget import RedisStore, default_key
from tether.dsn import parse_dsn
from tether.testing import MariaDBServer, RedisServer


def test_a_checkout_beyond_the_budget_waits_and_names_it(
    db: MariaDBServer, redis_server: RedisServer, pools: Callable[..., tether.Pool]
) -> None:
    store = RedisStore(redis_server.url, default_key(parse_dsn(db.dsn())))
    pool = pools(db.dsn(), budget=redis_server.url, budget_cap=2, max_size=5, timeout=5)
    first, second = pool.connection(), pool.connection()
    assert store.status().total == 2
    with pytest.raises(tether.PoolTimeout) as info:
        pool.connection(timeout=0.5)
    assert info.value.args[0] == 1226 and "budget" in str(info.value)
    assert db.connections_of() == 2
    first.close()
    third = pool.connection(timeout=5)  # the given-back connection, no new lease
    cur = third.cursor()
    cur.execute("SELECT 1")
    assert cur.fetchall() == ((1,),)
    third.close()
    second.close()
    pool.close()
    assert store.status().total == 0
    store.close()
