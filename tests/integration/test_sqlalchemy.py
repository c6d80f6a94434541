"""SQLAlchemy on tether against a private MariaDB with both drivers: Core, the ORM, Flask-SQLAlchemy
in process, the error mapping, dispose, the bound, and what a clean give-back costs."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy import select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import tether
from tether.contrib.sqlalchemy import TetherPool, create_engine
from tether.testing import FaultProxy, MariaDBServer

SCHEMES = {"pymysql": "mysql+pymysql", "mysqlclient": "mysql+mysqldb"}


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "note"
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str] = mapped_column(sa.String(32))


def url_of(dsn: str, driver: str) -> str:
    return dsn.replace("mysql://", SCHEMES[driver] + "://", 1)


@pytest.fixture
def engines(driver: str) -> Iterator[Callable[..., sa.Engine]]:
    made: list[sa.Engine] = []

    def make(dsn: str, **kwargs: Any) -> sa.Engine:
        engine = create_engine(url_of(dsn, driver), **kwargs)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.dispose()


def global_status(db: MariaDBServer, *names: str) -> dict[str, int]:
    wanted = ",".join(f"'{n}'" for n in names)
    rows = db.execute_admin(f"SHOW GLOBAL STATUS WHERE Variable_name IN ({wanted})")
    return {name: int(value) for name, value in rows}


def notes(db: MariaDBServer) -> int:
    return int(db.execute_admin(f"SELECT COUNT(*) FROM {db.database}.note")[0][0])


def make_table(engine: sa.Engine) -> None:
    Base.metadata.create_all(engine)


def test_core_and_orm_work_on_tether(db: MariaDBServer, engines: Any, driver: str) -> None:
    engine = engines(db.dsn(), pool_options={"max_size": 4})
    assert isinstance(engine.pool, TetherPool)
    assert engine.pool.owns_tether_pool
    assert engine.pool.tether_pool.driver.name == driver
    make_table(engine)
    with engine.begin() as conn:
        conn.execute(sa.insert(Note), [{"id": 1, "body": "one"}, {"id": 2, "body": "two"}])
    with engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM note")).scalar() == 2
    with Session(engine) as session:
        session.add(Note(id=3, body="three"))
        session.commit()
        assert session.get(Note, 3) is not None
        assert session.scalars(select(Note.body).order_by(Note.id)).all() == ["one", "two", "three"]
    # A transaction that raises is rolled back, on the server too.
    with pytest.raises(RuntimeError), Session(engine) as session, session.begin():
        session.add(Note(id=4, body="four"))
        session.flush()
        raise RuntimeError("abandon")
    with Session(engine) as session:  # a savepoint inside a transaction
        session.begin()
        session.add(Note(id=5, body="five"))
        with session.begin_nested():
            session.add(Note(id=6, body="six"))
            session.flush()
        session.commit()
    assert notes(db) == 5
    stats = engine.pool.tether_pool.stats()
    assert stats.in_use == 0 and stats["checkouts"] >= 6


def test_reads_cost_one_round_trip_and_a_clean_give_back_none(
    db: MariaDBServer, engines: Any
) -> None:
    engine = engines(db.dsn(), pool_options={"max_size": 2})
    make_table(engine)
    with engine.begin() as conn:
        conn.execute(sa.insert(Note), [{"id": 1, "body": "one"}])
    before = global_status(db, "Com_rollback", "Com_begin", "Com_commit", "Questions")
    reads = 40
    for i in range(reads // 2):
        with engine.connect() as conn:
            assert conn.execute(select(Note.body).where(Note.id == 1)).scalar() == "one"
        with Session(engine) as session:
            assert session.get(Note, 1 + 0 * i) is not None
            session.expunge_all()
    after = global_status(db, "Com_rollback", "Com_begin", "Com_commit", "Questions")
    assert after["Com_rollback"] == before["Com_rollback"]  # no reset-on-return round trip
    assert after["Com_begin"] == before["Com_begin"]
    # One statement per read (plus the admin connection's own few): SQLAlchemy's QueuePool
    # would add a ROLLBACK per read, and pool_pre_ping a ping.
    assert after["Questions"] - before["Questions"] <= reads + 4
    # A write transaction: BEGIN, INSERT, COMMIT and no ROLLBACK at the give-back.
    with Session(engine) as session:
        session.add(Note(id=2, body="two"))
        session.commit()
    final = global_status(db, "Com_rollback", "Com_begin", "Com_commit")
    assert final["Com_begin"] == after["Com_begin"] + 1
    assert final["Com_commit"] == after["Com_commit"] + 1
    assert final["Com_rollback"] == after["Com_rollback"]


def test_a_locking_read_runs_inside_the_transaction(db: MariaDBServer, engines: Any) -> None:
    engine = engines(db.dsn(), pool_options={"max_size": 2})
    make_table(engine)
    with engine.begin() as conn:
        conn.execute(sa.insert(Note), [{"id": 1, "body": "one"}])
    query = "SELECT COUNT(*) FROM information_schema.innodb_trx WHERE trx_mysql_thread_id = %s"
    with engine.connect() as conn:
        sid = session_id(conn)
        conn.execute(select(Note).where(Note.id == 1).with_for_update()).all()
        time.sleep(0.25)  # InnoDB refreshes what innodb_trx shows at most every 0.1 s
        assert db.execute_admin(query, (sid,))[0][0] == 1  # locked until the transaction ends
        conn.rollback()
        time.sleep(0.25)
        assert db.execute_admin(query, (sid,))[0][0] == 0


def test_lazy_begin_off_gives_one_snapshot(db: MariaDBServer, engines: Any) -> None:
    engine = engines(db.dsn(), pool_options={"max_size": 2}, lazy_begin=False)
    make_table(engine)
    with engine.begin() as conn:
        conn.execute(sa.insert(Note), [{"id": 1, "body": "one"}])
    with engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM note")).scalar() == 1
        db.execute_admin(f"INSERT INTO {db.database}.note VALUES (2, 'two')")
        assert conn.execute(text("SELECT COUNT(*) FROM note")).scalar() == 1  # same snapshot
        conn.rollback()
        assert conn.execute(text("SELECT COUNT(*) FROM note")).scalar() == 2


def test_no_second_pool_server_connections_stay_under_max_size(
    db: MariaDBServer, engines: Any
) -> None:
    engine = engines(db.dsn(), pool_options={"max_size": 3})
    make_table(engine)
    failures: list[BaseException] = []
    done = threading.Event()

    def work() -> None:
        try:
            for _ in range(15):
                with Session(engine) as session:
                    session.execute(text("SELECT SLEEP(0.01)"))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work) for _ in range(10)]
    for t in threads:
        t.start()
    samples: list[int] = []
    while any(t.is_alive() for t in threads):
        samples.append(db.connections_of())
        time.sleep(0.02)
    done.set()
    for t in threads:
        t.join(30)
    assert failures == []
    assert samples and max(samples) <= 3
    assert max(samples) >= 2
    stats = engine.pool.tether_pool.stats()
    assert stats.size <= 3 and stats.in_use == 0 and stats["checkouts"] >= 150


def test_a_pool_handed_in_is_used_and_not_closed(db: MariaDBServer, driver: str) -> None:
    pool = tether.Pool(db.dsn(), driver=driver, max_size=2)
    try:
        engine = sa.create_engine(
            url_of(db.dsn(), driver), plugins=["tether"], tether_pool=pool, pool_pre_ping=True
        )
        assert isinstance(engine.pool, TetherPool) and engine.pool.tether_pool is pool
        assert not engine.pool.owns_tether_pool
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
        assert pool.stats()["checkouts"] == 1
        engine.dispose()
        assert not pool.closed
        with engine.connect() as conn:  # the engine goes on, on the same tether pool
            assert conn.execute(text("SELECT 2")).scalar() == 2
        assert engine.pool.tether_pool is pool and pool.stats()["checkouts"] == 2
        # The same through poolclass=, without the plugin.
        other = sa.create_engine(url_of(db.dsn(), driver), poolclass=TetherPool, tether_pool=pool)
        with other.connect() as conn:
            assert conn.execute(text("SELECT 3")).scalar() == 3
        other.dispose()
        assert not pool.closed
    finally:
        pool.close()


def test_dispose_closes_the_pool_the_engine_made(db: MariaDBServer, engines: Any) -> None:
    engine = engines(db.dsn(), pool_options={"max_size": 2})
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    first = engine.pool.tether_pool
    assert db.connections_of() == 1
    engine.dispose()
    assert first.closed
    assert db.connections_of() == 0
    with engine.connect() as conn:  # a new tether pool
        assert conn.execute(text("SELECT 1")).scalar() == 1
    assert engine.pool.tether_pool is not first and not engine.pool.tether_pool.closed


def test_a_driver_mismatch_is_refused(db: MariaDBServer) -> None:
    pool = tether.Pool(db.dsn(), driver="pymysql")
    try:
        with pytest.raises(sa_exc.ArgumentError, match="must agree"):
            sa.create_engine(url_of(db.dsn(), "mysqlclient"), plugins=["tether"], tether_pool=pool)
    finally:
        pool.close()


def session_id(conn: Any) -> int:
    return int(conn.execute(text("SELECT CONNECTION_ID()")).scalar())


def test_a_read_that_loses_its_connection_is_replayed(db: MariaDBServer, engines: Any) -> None:
    engine = engines(db.dsn())
    with engine.connect() as conn:
        first = session_id(conn)
        db.kill_sessions(ids=[first])
        time.sleep(0.1)
        assert session_id(conn) != first  # no error: tether replayed the read
    assert engine.pool.tether_pool.stats()["replays"] == 1


def test_transaction_lost_is_an_invalidating_operational_error(
    db: MariaDBServer, engines: Any
) -> None:
    engine = engines(db.dsn())
    make_table(engine)
    with Session(engine) as session:
        session.add(Note(id=1, body="one"))
        session.flush()  # BEGIN, INSERT
        sid = session.execute(text("SELECT CONNECTION_ID()")).scalar()
        db.kill_sessions(ids=[int(sid)])
        time.sleep(0.1)
        session.add(Note(id=2, body="two"))
        with pytest.raises(sa_exc.OperationalError) as caught:
            session.flush()
        err = caught.value
        assert isinstance(err, sa_exc.DBAPIError)
        assert isinstance(err.orig, tether.TransactionLost)
        assert err.connection_invalidated
        session.rollback()
    assert notes(db) == 0  # nothing of the lost transaction was committed
    with Session(engine) as session:  # the engine goes on
        session.add(Note(id=3, body="three"))
        session.commit()
    assert notes(db) == 1
    assert engine.pool.tether_pool.stats().in_use == 0


def test_a_lost_commit_reply_is_outcome_unknown(
    mariadb_factory: Callable[..., MariaDBServer],
    fault_proxy: Callable[..., FaultProxy],
    driver: str,
) -> None:
    server = mariadb_factory()
    proxy = fault_proxy(server)
    engine = create_engine(url_of(proxy.dsn_for(), driver))
    try:
        make_table(engine)
        with pytest.raises(sa_exc.OperationalError) as caught, engine.begin() as conn:
            conn.execute(sa.insert(Note), [{"id": 1, "body": "one"}])
            proxy.lose_next_reply(b"COMMIT")
        assert isinstance(caught.value.orig, tether.OutcomeUnknown)
        assert caught.value.connection_invalidated
        assert notes(server) == 1  # it did commit: the caller was told it may have
        with engine.connect() as conn:
            assert conn.execute(text("SELECT COUNT(*) FROM note")).scalar() == 1
    finally:
        engine.dispose()


def test_autocommit_isolation_level(db: MariaDBServer, engines: Any) -> None:
    engine = engines(db.dsn())
    make_table(engine)
    before = global_status(db, "Com_begin")
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.insert(Note), [{"id": 1, "body": "one"}])
        assert notes(db) == 1  # committed at once
    assert global_status(db, "Com_begin") == before
    with engine.connect() as conn:  # the next user is back in transactions
        conn.execute(sa.insert(Note), [{"id": 2, "body": "two"}])
        conn.rollback()
    assert notes(db) == 1


def test_flask_sqlalchemy_in_process(db: MariaDBServer, driver: str) -> None:
    pytest.importorskip("flask_sqlalchemy")
    from examples.flask_city.schema import seed
    from examples.flask_sqlalchemy_city.app import create_app
    from examples.flask_sqlalchemy_city.app import db as fsa

    seed(db.dsn())
    app = create_app(
        {
            "SQLALCHEMY_DATABASE_URI": url_of(db.dsn(), driver),
            "SQLALCHEMY_ENGINE_OPTIONS": {"plugins": ["tether"], "tether_options": {"max_size": 3}},
        }
    )
    client = app.test_client()
    try:
        assert client.get("/?city=london").get_json() == {"id": 1}
        assert client.get("/?city=atlantis").status_code == 404
        stats = client.get("/stats").get_json()
        assert stats["counters"]["checkouts"] == 2 and stats["in_use"] == 0
        with app.app_context():
            assert isinstance(fsa.engine.pool, TetherPool)
            assert fsa.engine.pool.tether_pool.config.max_size == 3
    finally:
        with app.app_context():
            fsa.engine.dispose()


def test_isolation_levels(db: MariaDBServer, engines: Any, driver: str) -> None:
    query = text("SELECT @@session.tx_isolation")
    engine = engines(
        db.dsn(),
        pool_options={
            "max_size": 1,
            "init_commands": ["SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED"],
        },
    )
    with engine.connect() as conn:
        assert conn.execute(query).scalar() == "READ-COMMITTED"  # every session, from tether
    with engine.connect().execution_options(isolation_level="SERIALIZABLE") as conn:
        assert conn.execute(query).scalar() == "SERIALIZABLE"  # this connection only
    with engine.connect() as conn:
        assert conn.execute(query).scalar() == "READ-COMMITTED"
    # For the whole engine, SQLAlchemy's way would be lost at the first give-back: refused,
    # naming the way that works; so are the driver's options given to SQLAlchemy.
    with pytest.raises(sa_exc.ArgumentError, match="init_commands"):
        create_engine(url_of(db.dsn(), driver), isolation_level="SERIALIZABLE")
    with pytest.raises(sa_exc.ArgumentError, match="tether_options"):
        create_engine(url_of(db.dsn(), driver), connect_args={"read_timeout": 5})


def test_stream_results(db: MariaDBServer, engines: Any) -> None:
    engine = engines(db.dsn(), pool_options={"max_size": 1})
    query = text("SELECT seq FROM seq_1_to_500")
    with engine.connect() as conn:  # the driver's streaming cursor, through tether's
        result = conn.execution_options(stream_results=True, max_row_buffer=50).execute(query)
        assert sum(1 for _ in result) == 500
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar() == 1
    stats = engine.pool.tether_pool.stats()
    assert stats.in_use == 0 and stats["opened"] == 1  # read to the end: kept
