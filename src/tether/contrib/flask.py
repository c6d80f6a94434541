"""Flask integration (extra: ``tether[flask]``): one pool per process, one connection per
application context.

::

    app = Flask(__name__)
    app.config["TETHER_DSN"] = "mysql://app:secret@db:3306/app"  # or DATABASE_URL
    db = Tether(app, max_size=16)

    @app.get("/")
    def index():
        cur = db.connection().cursor()  # checked out on first use, returned at teardown
        ...

Configuration, read by :meth:`Tether.init_app`:

- ``TETHER_DSN``: the server; falls back to ``DATABASE_URL`` in the config, then to the
  ``DATABASE_URL`` environment variable.
- ``TETHER_POOL``: ``"pool"`` (:class:`tether.Pool`, the default) or ``"threadlocal"``
  (:class:`tether.ThreadLocalPool`).
- ``TETHER_OPTIONS``: a dict of the pools' keyword-only options (``max_size``, ``timeout``, ...);
  they override the options given to :class:`Tether`.
- ``TETHER_DRIVER``: ``"pymysql"`` or ``"mysqlclient"``.

The pool is created on first use in each process. A pool created in a server's master before
it forks its workers (gunicorn ``--preload``, uWSGI without ``lazy-apps``) is safe too: a forked
child forgets the inherited connections without a byte on their sockets and opens its own.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Mapping
from typing import Any

from flask import Flask, current_app, g, has_app_context

from ..config import OPTION_NAMES, PoolConfig
from ..connection import PooledConnection
from ..drivers import resolve_driver
from ..dsn import parse_dsn
from ..pool import Pool
from ..stats import PoolStats
from ..threadlocal import ThreadLocalPool

__all__ = ["POOL_KINDS", "Tether", "get_db"]

logger = logging.getLogger("tether.flask")

EXTENSION_KEY = "tether"
POOL_KINDS: dict[str, type[Pool]] = {"pool": Pool, "threadlocal": ThreadLocalPool}
# Where an application context keeps its connection.
_G_KEY = "_tether_connection"


# The keyword options a pool takes (its config's, and the driver).
POOL_OPTIONS = OPTION_NAMES | {"driver"}


class _AppState:
    """One app's settings and, once used in this process, its pool."""

    def __init__(self, pool_class: type[Pool], dsn: str | None, options: dict[str, Any]) -> None:
        self.pool_class = pool_class
        self.dsn = dsn
        self.options = options
        self.pool: Pool | None = None
        self.pid = 0  # the process the pool was last checked for
        self.lock = threading.Lock()

    def get_pool(self) -> Pool:
        pool = self.pool
        if pool is not None and self.pid == os.getpid():
            return pool
        with self.lock:
            pool = self.pool
            if pool is None:
                pool = self.pool = self.pool_class(self.dsn, **self.options)
            # A pool used in a parent that forked (gunicorn --preload; uWSGI forks from C,
            # without Python's fork hooks) drops the parent's sockets itself, without a
            # byte, on its first check-out here.
            self.pid = os.getpid()
            return pool


# States whose creation lock a forked child must not inherit in the locked state (a parent's
# thread may have been creating the pool at the moment of the fork).
_states: weakref.WeakSet[_AppState] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for state in list(_states):
        state.lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class Tether:
    """The Flask extension. ``Tether(app)``, or ``Tether()`` then ``init_app(app)`` in an app
    factory; ``pool_options`` are defaults for the pool's keyword-only options, overridden by
    the app's ``TETHER_OPTIONS``.

    :meth:`connection` checks out a connection on first use in an application context and
    returns the same one until the context ends, when it goes back to the pool, also when the
    view raised. A view that never calls it costs no checkout.
    """

    def __init__(self, app: Flask | None = None, **pool_options: Any) -> None:
        _check_options(pool_options, "Tether(...)")
        self._defaults = dict(pool_options)
        # Apps given to init_app() are held weakly (an app factory's test apps come and go);
        # the one given here is the extension's own, held for as long as the extension.
        self._states: weakref.WeakKeyDictionary[Flask, _AppState] = weakref.WeakKeyDictionary()
        self._app = app
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Read the app's ``TETHER_*`` configuration and register the teardown that returns
        the connection. The pool itself is created on first use. Raises ``ValueError`` for an
        unknown pool kind or option and :class:`tether.DSNError` for a malformed DSN."""
        registered = app.extensions.get(EXTENSION_KEY)
        if registered is not None and registered is not self:
            raise RuntimeError(f"app {app.name!r} already has a tether extension registered")
        config = app.config
        kind = config.get("TETHER_POOL") or "pool"
        if not isinstance(kind, str) or kind.lower() not in POOL_KINDS:
            raise ValueError(
                f"TETHER_POOL must be one of {', '.join(sorted(POOL_KINDS))}, not {kind!r}"
            )
        extra = config.get("TETHER_OPTIONS") or {}
        if not isinstance(extra, Mapping):
            raise ValueError(f"TETHER_OPTIONS must be a dict of pool options, not {extra!r}")
        _check_options(extra, "TETHER_OPTIONS")
        options: dict[str, Any] = {**self._defaults, **extra}
        driver = config.get("TETHER_DRIVER")
        if driver:
            options["driver"] = driver
        options.setdefault("name", f"flask:{app.name}")
        dsn = config.get("TETHER_DSN") or config.get("DATABASE_URL") or None
        # A malformed (or missing) DSN, an impossible option or an argument the driver does
        # not take fails here, at start-up, rather than on the first request.
        pool_class = POOL_KINDS[kind.lower()]
        _validate(dsn, pool_class, options)
        state = _AppState(pool_class, dsn, options)
        _states.add(state)
        old = self._states.get(app)
        if old is not None and old.pool is not None:
            old.pool.close()
        self._states[app] = state
        if registered is None:
            app.teardown_appcontext(self._teardown)
        app.extensions[EXTENSION_KEY] = self

    # ------------------------------------------------------------------ use

    @property
    def pool(self) -> Pool:
        """The pool of the current app (or of the only app this extension was given),
        created on first use in this process."""
        return self._state().get_pool()

    def connection(self) -> PooledConnection:
        """The application context's connection, checked out on the first call. Do not close
        it: it goes back to the pool when the context ends (if you do give it back, the next
        call checks out another one)."""
        if not has_app_context():
            raise RuntimeError(
                "tether: connection() needs an application context (a request, or"
                " `with app.app_context():`); outside one, use `ext.pool.connection()`"
            )
        conn: PooledConnection | None = g.get(_G_KEY)
        if conn is None or conn.closed:
            conn = self.pool.connection()
            setattr(g, _G_KEY, conn)
        return conn

    def stats(self) -> PoolStats:
        """The pool's :meth:`tether.Pool.stats` (``.as_dict()`` for JSON)."""
        return self.pool.stats()

    def close(self) -> None:
        """Close the pools of every app in this process (for example in a server's worker
        exit hook); the next use creates new ones."""
        for state in list(self._states.values()):
            with state.lock:
                pool, state.pool = state.pool, None
            if pool is not None:
                pool.close()

    def __repr__(self) -> str:
        pools = [repr(s.pool) for s in list(self._states.values()) if s.pool is not None]
        return f"<Tether {', '.join(pools) or 'no pool yet'}>"

    # ------------------------------------------------------------------ internals

    def _state(self) -> _AppState:
        if has_app_context():
            app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
            state = self._states.get(app)
            if state is None:
                raise RuntimeError(f"tether: init_app() was not called for app {app.name!r}")
            return state
        states = list(self._states.values())
        if len(states) == 1:
            return states[0]
        if not states:
            raise RuntimeError("tether: no app yet; call init_app(app) first")
        raise RuntimeError(
            "tether: this extension serves several apps; use it inside an application context"
        )

    def _teardown(self, exc: BaseException | None) -> None:
        conn: PooledConnection | None = g.pop(_G_KEY, None)
        if conn is None or conn.closed:
            return
        try:
            # The pool rolls back a transaction the view left open (say, because it raised).
            conn.close()
        except Exception:
            # A teardown that raises would skip the app's other teardowns.
            logger.exception("returning the request's connection failed")


def get_db() -> PooledConnection:
    """The current app's connection (the app's :class:`Tether` extension's
    :meth:`Tether.connection`)."""
    if not has_app_context():
        raise RuntimeError("tether: get_db() needs an application context")
    ext = current_app.extensions.get(EXTENSION_KEY)
    if not isinstance(ext, Tether):
        raise RuntimeError(f"tether: no Tether extension on app {current_app.name!r}")
    return ext.connection()


def _validate(dsn: str | None, pool_class: type[Pool], options: Mapping[str, Any]) -> None:
    """Check everything a pool would check at construction, without making one."""
    parsed = parse_dsn(dsn)
    settings = {**pool_class.defaults}
    settings.update((name, value) for name, value in options.items() if name != "driver")
    config = PoolConfig.from_options(settings)
    resolve_driver(options.get("driver"), parsed).check_connect_args(config.connect_args)


def _check_options(options: Mapping[str, Any], where: str) -> None:
    for name in options:
        if name == "dsn":
            raise ValueError(f"{where}: set the server with TETHER_DSN, not a 'dsn' option")
        if name not in POOL_OPTIONS:
            raise ValueError(
                f"{where}: unknown pool option {name!r}; known: {', '.join(sorted(POOL_OPTIONS))}"
            )
