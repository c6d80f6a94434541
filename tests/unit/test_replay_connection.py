"""The connection a replay runs on, in both pool flavours (fake drivers): whatever lost the
first one (a KILL of every session, one after another; a restart; every connection cut) may
be taking the idle ones too, and their sockets may not say so yet. The one replay a read gets
runs on a connection opened after the loss where the bound allows, else on an idle one that
has just answered a ping."""

from __future__ import annotations

import tether

from .fakedriver import FakeDriver

DSN = "mysql://app:pw@127.0.0.1:3306/app"


def test_a_replay_runs_on_a_new_connection_not_on_an_idle_one() -> None:
    fake = FakeDriver()
    pool = tether.Pool(DSN, driver=fake, watchdog=None, keepalive=None)
    first, second = pool.connection(), pool.connection()
    first.close()
    second.close()
    fake.lose_at.append("SELECT 7")
    with pool.connection() as conn:
        cur = conn.cursor()
        cur.execute("SELECT 7")
        assert cur.fetchone() == (1,)
    assert pool.stats().counters.replays == 1
    third = fake.connections[2]
    assert third.statements[-1] == "SELECT 7"  # replayed on a connection opened after the loss
    idle = [c for c in fake.connections[:2] if c.server_end.fileno() != -1]
    assert len(idle) == 1 and idle[0].pings == 0  # the idle one was left alone
    pool.close()
