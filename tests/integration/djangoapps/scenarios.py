"""Django's ORM on tether's backend in a process of its own (Django's settings are configured
once per process, and PyMySQL's ``install_as_MySQLdb`` is process-wide too):

    python -m tests.integration.djangoapps.scenarios SCENARIO DRIVER DSN [ROOT_SOCKET]

prints one JSON line with what the scenario saw; the tests assert on it.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit


def configure(driver: str, dsn: str, **extra: Any) -> None:
    if driver == "pymysql":
        import pymysql

        pymysql.install_as_MySQLdb()
    import django
    from django.conf import settings

    url = urlsplit(dsn)
    options = extra.pop("OPTIONS", {"POOL": {"max_size": 4, "timeout": 10}})
    settings.configure(
        DATABASES={
            "default": {
                "ENGINE": "tether.contrib.django",
                "NAME": url.path.lstrip("/"),
                "USER": unquote(url.username or ""),
                "PASSWORD": unquote(url.password or ""),
                "HOST": url.hostname,
                "PORT": url.port,
                "OPTIONS": options,
                **extra,
            }
        },
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "cities"],
        USE_TZ=True,
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
    )
    sys.path.insert(0, "examples/django_city")
    django.setup()


def admin(socket: str) -> Any:
    import pymysql

    return pymysql.connect(unix_socket=socket, user="root", autocommit=True)


def kill_app_sessions(socket: str) -> int:
    conn = admin(socket)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT ID FROM information_schema.PROCESSLIST WHERE USER = 'app'")
            ids = [row[0] for row in cur.fetchall()]
            for session in ids:
                cur.execute(f"KILL {int(session)}")
        return len(ids)
    finally:
        conn.close()


def app_sessions(socket: str) -> int:
    conn = admin(socket)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = 'app'")
            return int(cur.fetchone()[0])
    finally:
        conn.close()


def migrate() -> None:
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


# ----------------------------------------------------------------------------- scenarios


def orm(driver: str, dsn: str, socket: str) -> dict[str, Any]:
    """Reads, writes, introspection, features and options through the ORM; the connection
    Django closes goes back to the pool."""
    configure(
        driver,
        dsn,
        OPTIONS={
            "POOL": {"max_size": 3},
            "init_command": "SET SESSION lock_wait_timeout = 123",
            "sql_mode": "STRICT_ALL_TABLES",
            "isolation_level": "repeatable read",
        },
    )
    migrate()
    from cities.models import City, Visit
    from django.db import connection, transaction

    import tether

    out: dict[str, Any] = {}
    out["london"] = City.objects.get(name="london").id
    out["drop_in"] = isinstance(connection.connection, tether.PooledConnection)
    with connection.cursor() as cur:
        cur.execute(
            "SELECT @@session.lock_wait_timeout, @@session.sql_mode, @@session.tx_isolation"
        )
        out["session"] = list(cur.fetchone())
        out["tables"] = sorted(connection.introspection.table_names(cur))
    out["vendor"] = [connection.vendor, connection.display_name, connection.mysql_is_mariadb]
    out["features"] = connection.features.supports_transactions
    with transaction.atomic():
        Visit.objects.create(city_id=1, n=1)
        with transaction.atomic():  # a savepoint
            Visit.objects.filter(city_id=1).update(n=2)
    try:
        with transaction.atomic():
            Visit.objects.filter(city_id=1).update(n=99)
            raise KeyError("rolled back")
    except KeyError:
        pass
    out["visit"] = Visit.objects.get(city_id=1).n
    pool = connection.pool
    out["in_use_before_close"] = pool.stats().in_use
    connection.close()
    stats = pool.stats()
    out["after_close"] = {"in_use": stats.in_use, "idle": stats.idle, "size": stats.size}
    City.objects.count()  # checks one out again: the same session, no new connect
    out["opened"] = pool.stats()["opened"]
    out["resets"] = pool.stats()["resets"]
    connection.close()
    return out


def atomic_lost(driver: str, dsn: str, socket: str) -> dict[str, Any]:
    """A connection lost inside atomic(): Django's OperationalError whose cause is tether's
    TransactionLost; nothing of the transaction committed; the next query works."""
    configure(driver, dsn)
    migrate()
    from cities.models import Visit
    from django.db import OperationalError, connection, transaction

    import tether

    out: dict[str, Any] = {}
    try:
        with transaction.atomic():
            Visit.objects.create(city_id=2, n=1)
            kill_app_sessions(socket)
            time.sleep(0.2)
            Visit.objects.filter(city_id=2).update(n=5)
        out["raised"] = None
    except OperationalError as exc:
        out["raised"] = type(exc).__module__ + "." + type(exc).__name__
        out["cause_is_transaction_lost"] = isinstance(exc.__cause__, tether.TransactionLost)
        out["cause_is_driver_error"] = isinstance(exc.__cause__, connection.Database.Error)
        out["errno"] = exc.args[0]
    out["in_atomic_after"] = connection.in_atomic_block
    out["committed"] = Visit.objects.filter(city_id=2).exists()
    # Outside a transaction a lost connection under a read is replaced silently.
    kill_app_sessions(socket)
    time.sleep(0.2)
    out["read_after_kill"] = Visit.objects.count()
    out["transactions_lost"] = connection.pool.stats()["transactions_lost"]
    connection.close()
    return out


def shell_idle(driver: str, dsn: str, socket: str) -> dict[str, Any]:
    """A shell (a connection Django never closes) that sleeps past wait_timeout, before a
    read, before a write, and after a transaction: each works, on a fresh session."""
    configure(driver, dsn, CONN_MAX_AGE=None)
    migrate()
    from cities.models import City, Visit
    from django.db import connection, transaction

    out: dict[str, Any] = {"sessions": []}

    def session() -> int:
        with connection.cursor() as cur:
            cur.execute("SELECT CONNECTION_ID()")
            return int(cur.fetchone()[0])

    out["sessions"].append(session())
    time.sleep(3.5)  # wait_timeout is 2
    out["read"] = City.objects.get(name="rome").id
    out["sessions"].append(session())
    time.sleep(3.5)
    Visit.objects.create(city_id=3, n=7)
    out["write"] = Visit.objects.get(city_id=3).n
    with transaction.atomic():
        Visit.objects.filter(city_id=3).update(n=8)
    time.sleep(3.5)
    with transaction.atomic():
        Visit.objects.filter(city_id=3).update(n=9)
    out["after_atomic"] = Visit.objects.get(city_id=3).n
    out["sessions"].append(session())
    stats = connection.pool.stats()
    out["closed"] = stats["closed"]
    out["app_sessions"] = app_sessions(socket)
    return out


def threads(driver: str, dsn: str, socket: str) -> dict[str, Any]:
    """16 threads, each with its own Django connection, looping request-like (query, then
    close_old_connections): never more server sessions than the pool's bound of 4."""
    configure(driver, dsn)
    migrate()
    from cities.models import City
    from django.db import close_old_connections, connection

    stop = threading.Event()
    peak = [0]
    errors: list[str] = []
    done = [0]
    lock = threading.Lock()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], app_sessions(socket))
            time.sleep(0.05)

    def worker() -> None:
        try:
            for _ in range(40):
                City.objects.filter(name="paris").exists()
                close_old_connections()  # what Django runs when a request ends
                with lock:
                    done[0] += 1
        except Exception as exc:
            errors.append(repr(exc))
        finally:
            connection.close()

    sampler = threading.Thread(target=sample)
    sampler.start()
    workers = [threading.Thread(target=worker) for _ in range(16)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(120)
    stop.set()
    sampler.join(10)
    connection.close()  # the main thread's, from migrate
    stats = connection.pool.stats()
    return {
        "done": done[0],
        "errors": errors[:3],
        "peak": peak[0],
        "size": stats.size,
        "in_use": stats.in_use,
    }


def pool_timeout(driver: str, dsn: str, socket: str) -> dict[str, Any]:
    """A thread that finds the pool's bound taken by others waits up to the pool's timeout,
    then gets Django's OperationalError caused by tether's PoolTimeout."""
    configure(driver, dsn, OPTIONS={"POOL": {"max_size": 1, "timeout": 0.5}})
    from django.db import OperationalError, connection

    import tether

    out: dict[str, Any] = {}
    connection.ensure_connection()  # the only connection, held by this thread

    def other() -> None:
        started = time.monotonic()
        try:
            connection.ensure_connection()  # this thread's own Django connection
            out["raised"] = None
        except OperationalError as exc:
            out["raised"] = type(exc).__module__ + "." + type(exc).__name__
            out["cause_is_pool_timeout"] = isinstance(exc.__cause__, tether.PoolTimeout)
            out["waited"] = time.monotonic() - started
        finally:
            connection.close()

    t = threading.Thread(target=other)
    t.start()
    t.join(30)
    connection.close()
    out["after"] = pool_checkouts_work(connection)
    return out


def pool_checkouts_work(connection: Any) -> bool:
    with connection.cursor() as cur:
        cur.execute("SELECT 1")
        ok = cur.fetchone() == (1,)
    connection.close()
    return ok


def bad_options(driver: str, dsn: str, socket: str) -> dict[str, Any]:
    """OPTIONS["POOL"] is checked at first use; the error names the option, never the
    password."""
    configure(driver, dsn, OPTIONS={"POOL": {"max_size": 0}})
    from django.core.exceptions import ImproperlyConfigured
    from django.db import connection
    from django.db.utils import ConnectionHandler

    out: dict[str, Any] = {}

    def error_of(call: Callable[[], Any]) -> str:
        try:
            call()
        except ImproperlyConfigured as exc:
            return str(exc)
        return "no error"

    out["max_size"] = error_of(connection.ensure_connection)
    settings = dict(connection.settings_dict)
    handler = ConnectionHandler(
        {
            "default": settings,
            "unknown": {**settings, "OPTIONS": {"POOL": {"max_sise": 3}}},
            "driver": {**settings, "OPTIONS": {"POOL": {"driver": "pymysql"}}},
            "not_a_dict": {**settings, "OPTIONS": {"POOL": 16}},
        }
    )
    for alias in ("unknown", "driver", "not_a_dict"):
        out[alias] = error_of(handler[alias].ensure_connection)
    out["password"] = settings["PASSWORD"]
    return out


SCENARIOS: dict[str, Callable[[str, str, str], dict[str, Any]]] = {
    f.__name__: f for f in (orm, atomic_lost, shell_idle, threads, pool_timeout, bad_options)
}

if __name__ == "__main__":
    name, driver_name, url, root_socket = sys.argv[1:5]
    print(json.dumps(SCENARIOS[name](driver_name, url, root_socket)))
