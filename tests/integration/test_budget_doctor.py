"""``tether doctor --budget``: the budget's cap, its leases by host and by process, the idle
ones; never the Redis password."""

from __future__ import annotations

import json

from click.testing import CliRunner

import tether
from tether.cli import main
from tether.testing import MariaDBServer, RedisServer


def doctor(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["doctor", *args], env={"DATABASE_URL": ""})
    return result.exit_code, result.output


def test_doctor_shows_the_budget(db: MariaDBServer, redis_factory) -> None:
    redis: RedisServer = redis_factory(password="hunter2-redis")
    pool = tether.Pool(db.dsn(), driver="pymysql", budget=redis.url, budget_cap=7, name="web")
    try:
        held = [pool.connection() for _ in range(3)]
        held[0].close()  # one idle, two in use
        pool._housekeeper.maintain()  # a renewal: the idle count reaches the store
        code, out = doctor(db.dsn(), "--budget", redis.url, "--json")
        assert code == 0, out
        budget = json.loads(out)["budget"]
        assert budget["cap"] == 7 and budget["leases"] == 3 and budget["idle"] == 1
        (holder,) = budget["holders"]
        assert holder["pool"] == "web" and holder["held"] == 3 and holder["idle"] == 1
        assert budget["by_host"][0]["leases"] == 3

        code, out = doctor(db.dsn(), "--budget", redis.url)
        assert code == 0, out
        assert "Fleet budget" in out and "cap 7; 3 leases held, 1 of them on idle" in out
        assert "Leases by process" in out and "web" in out
        assert "hunter2" not in out
        for conn in held[1:]:
            conn.close()
    finally:
        pool.close()


def test_doctor_with_an_unreachable_budget_store(db: MariaDBServer, redis_factory) -> None:
    redis: RedisServer = redis_factory(password="hunter2-redis")
    url = redis.url
    redis.stop()
    code, out = doctor(db.dsn(), "--budget", url)
    assert code == 2
    assert "cannot read the budget" in out and "hunter2" not in out
