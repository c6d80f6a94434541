"""A fleet-wide budget on Redis, with real processes against a private MariaDB whose account
is capped (MAX_USER_CONNECTIONS 10) and a private redis-server: the server never sees more
than the cap and never refuses a connect for it, whatever happens to a process or to Redis."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import tether
from tether.budget import RedisStore, default_key
from tether.dsn import parse_dsn
from tether.testing import MariaDBServer, RedisServer

from ..budget.fleet import Fleet, Sampler

CAP = 10

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def capped() -> Iterator[MariaDBServer]:
    """A private server whose application user may open 10 connections."""
    with MariaDBServer(name="tether-test-budget", max_user_connections=CAP) as server:
        yield server


def specs(
    server: MariaDBServer, redis: RedisServer, count: int, phases: Any, end: float, **extra: Any
) -> list[dict[str, Any]]:
    start = time.time() + 3.0  # the processes start and import meanwhile
    out = []
    for i in range(count):
        spec = {
            "dsn": server.dsn(),
            "budget": redis.url,
            "threads": 4,
            "phases": phases(i) if callable(phases) else phases,
            "start": start,
            "end": end,
            "name": f"worker-{i}",
        }
        spec.update(extra)
        out.append(spec)
    return out


def store_for(server: MariaDBServer, redis: RedisServer) -> RedisStore:
    return RedisStore(redis.url, default_key(parse_dsn(server.dsn())))


def run(
    server: MariaDBServer,
    redis: RedisServer,
    fleet_specs: list[dict[str, Any]],
    during: Callable[[Fleet, Sampler], None] | None = None,
) -> tuple[list[dict[str, Any] | None], Sampler]:
    fleet = Fleet(fleet_specs)
    try:
        with Sampler(server, server.user, store_for(server, redis)) as sampler:
            if during is not None:
                during(fleet, sampler)
            results = fleet.results(timeout=90)
    finally:
        fleet.stop()
    return results, sampler


def no_server_refusals(results: list[dict[str, Any] | None], note: str = "") -> None:
    for result in results:
        if result is None:
            continue
        log = result.pop("log", "")
        assert result["server_refusals"] == 0, f"{result}\n{log}{note}"
        assert not result["errors"], f"{result}\n{log}"


def test_eight_processes_share_a_cap_of_ten_without_a_1226(
    capped: MariaDBServer, redis_server: RedisServer
) -> None:
    fleet_specs = specs(capped, redis_server, 8, [[0, 6]], 6.5)
    for spec in fleet_specs[1::2]:
        spec["thread_local"] = True  # half of the fleet on the thread-mapped flavour
    results, sampler = run(capped, redis_server, fleet_specs)
    no_server_refusals(results)
    assert len(sampler.connections) > 30
    assert sampler.peak <= CAP, sampler.peak
    assert sampler.peak >= CAP - 2  # the budget is used, not left idle
    for result in results:
        assert result is not None and result["served"][0] > 20, result  # nobody starved
    assert max(status.total for _, status in sampler.statuses) <= CAP


@pytest.mark.faults
def test_the_leases_of_a_killed_process_are_freed_within_the_ttl(
    capped: MariaDBServer, redis_server: RedisServer
) -> None:
    ttl = 2.0
    killed: dict[str, float] = {}

    def kill_one(fleet: Fleet, sampler: Sampler) -> None:
        time.sleep(3.0 + 2.0)  # start, then two seconds of load
        # A process holding leases (each holds some: the cap is shared under load).
        latest = sampler.statuses[-1][1]
        pids = [fleet.procs[i].pid for i in range(4)]
        holding = [h for h in latest.holders if h.info.get("pid") in pids and h.held > 0]
        victim = pids.index(holding[0].info["pid"])
        killed["pid"] = fleet.kill9(victim)
        killed["at"] = time.time()
        killed["held"] = holding[0].held

    results, sampler = run(
        capped,
        redis_server,
        specs(capped, redis_server, 4, [[0, 3], [3, 9]], 9.5, ttl=ttl),
        kill_one,
    )
    assert killed["held"] > 0
    gone = [
        t
        for t, status in sampler.statuses
        if t > killed["at"] and not any(h.info.get("pid") == killed["pid"] for h in status.holders)
    ]
    assert gone, "the killed process's leases were never freed"
    freed_after = gone[0] - killed["at"]
    assert freed_after <= ttl + 1.5, freed_after
    no_server_refusals(results, f"killed at {killed['at']:.3f}, freed at {gone[0]:.3f}")
    assert sampler.peak <= CAP
    survivors = [r for r in results if r is not None]
    assert len(survivors) == 3
    for result in survivors:
        assert result["served"][1] > 20, result  # the others went on after the kill
    logging.getLogger(__name__).info("leases freed %.2fs after the kill", freed_after)


def test_connections_follow_the_load_from_one_group_to_the_other(
    capped: MariaDBServer, redis_server: RedisServer
) -> None:
    # Group A (4 processes) is busy for 5 s, then group B for 5 s.
    def phases(i: int) -> list[list[float]]:
        return [[0, 5]] if i < 4 else [[5, 10]]

    fleet_specs = specs(capped, redis_server, 8, phases, 10.5, hold=0.02)
    start = fleet_specs[0]["start"]
    fleet = Fleet(fleet_specs)
    try:
        with Sampler(capped, capped.user, store_for(capped, redis_server)) as sampler:
            results = fleet.results(timeout=90)
    finally:
        fleet.stop()
    pids = [proc.pid for proc in fleet.procs]
    group_a, group_b = set(pids[:4]), set(pids[4:])

    def held_by(group: set[int], since: float, until: float) -> list[int]:
        return [
            sum(h.held for h in status.holders if h.info.get("pid") in group)
            for t, status in sampler.statuses
            if start + since <= t < start + until
        ]

    # Late in A's phase, A holds most of the cap; late in B's phase, B does.
    assert max(held_by(group_a, 3, 5)) >= CAP - 2
    late_b = held_by(group_b, 7.5, 10)
    assert late_b and min(late_b) >= CAP - 3, late_b
    assert max(held_by(group_a, 7.5, 10)) <= 3
    no_server_refusals(results)
    assert sampler.peak <= CAP
    for result in results:
        assert result is not None and sum(result["served"]) > 20, result


@pytest.mark.faults
def test_redis_stopped_and_restarted_mid_run(
    capped: MariaDBServer, redis_server: RedisServer
) -> None:
    seen: dict[str, Any] = {}

    def outage(fleet: Fleet, sampler: Sampler) -> None:
        time.sleep(3.0 + 2.0)
        seen["before"] = sampler.statuses[-1][1].total
        redis_server.restart(down=3.0)  # every key is lost
        seen["back"] = time.time()

    fleet_specs = specs(capped, redis_server, 4, [[0, 10]], 10.5, ttl=3.0)
    end = fleet_specs[0]["start"] + 9.5
    results, sampler = run(capped, redis_server, fleet_specs, outage)
    assert seen["before"] > 0
    # The pools re-registered what they hold within a few rounds of Redis coming back.
    after = [s.total for t, s in sampler.statuses if seen["back"] + 1.5 < t < end]
    assert after and min(after) > 0 and max(after) <= CAP
    no_server_refusals(results)  # no error beyond the policy: check-outs only waited
    assert sampler.peak <= CAP
    for result in results:
        assert result is not None and result["served"][0] > 20, result


def test_a_bad_redis_url_fails_at_construction_without_its_password() -> None:
    for url in ("http://u:hunter2@127.0.0.1:6379/0", "redis://u:hunter2@127.0.0.1:notaport/0"):
        with pytest.raises(ValueError, match="budget") as info:
            tether.Pool("mysql://app@127.0.0.1:1/app", driver="pymysql", budget=url)
        assert "hunter2" not in str(info.value)


def test_the_password_never_shows(
    redis_factory: Callable[..., RedisServer], caplog: pytest.LogCaptureFixture
) -> None:
    redis = redis_factory(password="hunter2-redis")
    caplog.set_level(logging.INFO, logger="tether")
    pool = tether.Pool(
        "mysql://root@127.0.0.1:3306/test", driver="pymysql", budget=redis.url, timeout=5
    )
    try:
        with pool.connection() as conn:
            conn.cursor().execute("SELECT 1")
        gate = pool._connector.gate
        assert gate is not None
        redis.stop()
        pool._housekeeper.maintain()  # finds the store gone: logs it
        texts = [repr(pool), repr(gate), repr(gate.store), gate.describe(), caplog.text]
    finally:
        pool.close()
    assert "unreachable" in caplog.text
    for text in texts:
        assert "hunter2" not in text
