"""One tether pool per Django database alias per process, made on first use.

Django's MySQL backend builds the driver's ``connect()`` arguments from the alias's settings
(``get_connection_params``). They are split here into what a tether pool takes: the server and
the account go into a :class:`tether.DSN` (never into a URL, so a password needs no escaping
and is never shown), the rest (``conv``, ``charset``, ``client_flag``, ``init_command``,
``sql_mode``, ``ssl``, ...) into ``connect_args``, and the transaction isolation level into the
pool's ``init_commands``, so every session, new or reset, starts in it without a statement per
check-out. ``OPTIONS["POOL"]`` adds tether's own options.

A pool whose settings change (Django's test runner points the alias at the test database,
then back) is closed and replaced. A forked child (gunicorn ``--preload``) keeps the pools'
objects: each pool forgets the parent's connections by itself and opens its own.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from ...config import OPTION_NAMES
from ...drivers import get_driver
from ...dsn import DSN
from ...errors import DSNError
from ...pool import Pool

__all__ = ["close_pools", "pool_for", "pool_settings"]

logger = logging.getLogger("tether.django")

# Connect arguments that say where the server is and who connects: the DSN's.
_DSN_KEYS = {
    "host": "host",
    "port": "port",
    "user": "user",
    "password": "password",
    "passwd": "password",
    "database": "database",
    "db": "database",
}
# Pool options Django's own settings decide (they would contradict them).
_FROM_DJANGO = {
    "driver": "the driver is the module Django's MySQL backend imports as MySQLdb",
    "connect_args": "the driver's connect arguments are the alias's OPTIONS",
    "autocommit": "autocommit is the alias's AUTOCOMMIT setting",
}


class _Slot:
    __slots__ = ("pool", "settings")

    def __init__(self, settings: tuple[Any, ...], pool: Pool) -> None:
        self.settings = settings
        self.pool = pool


_slots: dict[str, _Slot] = {}
_lock = threading.Lock()


def _after_fork_in_child() -> None:
    # A parent's thread may have held the lock at the moment of the fork.
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def pool_settings(
    alias: str,
    conn_params: Mapping[str, Any],
    *,
    driver: str,
    isolation_level: str | None,
    autocommit: bool,
    pool_options: Any,
) -> tuple[DSN, dict[str, Any]]:
    """The DSN and the keyword options of the pool for ``alias``; raises
    ``ImproperlyConfigured`` naming the setting at fault (never showing a password)."""
    where = f"DATABASES[{alias!r}]['OPTIONS']['POOL']"
    if pool_options is None:
        pool_options = {}
    if not isinstance(pool_options, Mapping):
        raise ImproperlyConfigured(
            f"{where} must be a dict of tether pool options, not {type(pool_options).__name__}"
        )
    for name in pool_options:
        if name in _FROM_DJANGO:
            raise ImproperlyConfigured(f"{where}: {name!r} is not set here: {_FROM_DJANGO[name]}")
        if name not in OPTION_NAMES:
            raise ImproperlyConfigured(
                f"{where}: unknown pool option {name!r}; known:"
                f" {', '.join(sorted(OPTION_NAMES - _FROM_DJANGO.keys()))}"
            )
    server: dict[str, Any] = {}
    connect_args: dict[str, Any] = {}
    options: dict[str, Any] = {}
    for key, value in conn_params.items():
        if key in _DSN_KEYS:
            server[_DSN_KEYS[key]] = value
        elif key == "unix_socket":
            options["unix_socket"] = value
        else:
            connect_args[key] = value
    try:
        dsn = DSN(
            host=str(server.get("host") or "localhost"),
            port=int(server.get("port") or 3306),
            user=str(server.get("user") or ""),
            password=str(server.get("password") or ""),
            database=server.get("database") or None,
            driver=driver,
            options=options,
        )
    except (TypeError, ValueError) as exc:
        raise ImproperlyConfigured(
            f"DATABASES[{alias!r}]: PORT must be a number ({type(exc).__name__})"
        ) from None
    # Django sets these per connection, a statement each; as the pool's init commands they
    # are part of every session's baseline (re-applied after a reset).
    init = ["SET SESSION sql_auto_is_null = 0"]
    if isolation_level:
        init.append(f"SET SESSION TRANSACTION ISOLATION LEVEL {isolation_level.upper()}")
    settings: dict[str, Any] = {"name": f"django:{alias}", **pool_options}
    settings["init_commands"] = [*init, *pool_options.get("init_commands", ())]
    settings["connect_args"] = connect_args
    settings["autocommit"] = bool(autocommit)
    settings["driver"] = driver
    return dsn, settings


def pool_for(alias: str, dsn: DSN, settings: Mapping[str, Any]) -> Pool:
    """The pool of ``alias`` in this process: made on first use, replaced (the old one closed)
    when the alias's settings changed since."""
    key = (dsn, sorted(settings.items(), key=lambda item: item[0]))
    slot = _slots.get(alias)
    if slot is not None and slot.settings == key and not slot.pool.closed:
        return slot.pool
    with _lock:
        slot = _slots.get(alias)
        if slot is not None and slot.settings == key and not slot.pool.closed:
            return slot.pool
        try:
            pool = Pool(dsn, **settings)
        except (ValueError, TypeError, DSNError) as exc:
            raise ImproperlyConfigured(
                f"DATABASES[{alias!r}]['OPTIONS']['POOL'] (or the alias's connection"
                f" settings): {exc}"
            ) from None
        old, _slots[alias] = slot, _Slot(key, pool)
    if old is not None:
        logger.info("%s: settings changed: replacing the pool", old.pool.name)
        old.pool.close()
    return pool


def close_pools() -> None:
    """Close every alias's pool in this process (for a server's worker-exit hook, or a test's
    teardown); the next use makes new ones."""
    with _lock:
        slots = list(_slots.values())
        _slots.clear()
    for slot in slots:
        slot.pool.close()


def driver_of(module: Any) -> str:
    """tether's name for the DB-API module Django's MySQL backend imported as ``MySQLdb``
    (PyMySQL after ``pymysql.install_as_MySQLdb()``)."""
    name = getattr(module, "__name__", "").split(".")[0].lower()
    return get_driver("pymysql" if name == "pymysql" else "mysqlclient").name
