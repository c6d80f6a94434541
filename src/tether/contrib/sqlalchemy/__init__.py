"""SQLAlchemy on tether (extra: ``tether[sqlalchemy]``): the engine's connections are tether's,
with no second pool on top.

::

    from tether.contrib.sqlalchemy import create_engine

    engine = create_engine("mysql+pymysql://app:secret@db/app", pool_options={"max_size": 16})

    # or with a tether pool the application owns (never closed by the engine):
    pool = tether.Pool("mysql+pymysql://app:secret@db/app", max_size=16)
    engine = sqlalchemy.create_engine(
        "mysql+pymysql://app:secret@db/app", plugins=["tether"], tether_pool=pool
    )

Core, the ORM and Flask-SQLAlchemy (``SQLALCHEMY_ENGINE_OPTIONS = {"plugins": ["tether"],
"tether_options": {...}}``) work unchanged. tether's :class:`tether.TransactionLost` and
:class:`tether.OutcomeUnknown` reach the application as ``sqlalchemy.exc.OperationalError``
(``orig`` is tether's error) with ``connection_invalidated`` set. See the README.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy
from sqlalchemy.dialects import plugins
from sqlalchemy.engine import Engine

from .dbapi import SessionConnection
from .pool import TetherPlugin, TetherPool, install_error_mapping, tether_dsn

__all__ = [
    "SessionConnection",
    "TetherPlugin",
    "TetherPool",
    "create_async_engine",
    "create_engine",
    "install_error_mapping",
    "tether_dsn",
]

# Also declared as an entry point (sqlalchemy.plugins); registered here for a source checkout.
plugins.register("tether", "tether.contrib.sqlalchemy.pool", "TetherPlugin")


def create_engine(
    url: str | sqlalchemy.URL,
    *,
    pool_options: Mapping[str, Any] | None = None,
    lazy_begin: bool = True,
    **engine_kwargs: Any,
) -> Engine:
    """A SQLAlchemy engine whose connections come from a :class:`tether.Pool` it makes from
    ``url`` (``mysql+pymysql://`` or ``mysql+mysqldb://``) and ``pool_options`` (tether's
    keyword options, ``pool_class`` to pick :class:`tether.ThreadLocalPool`).
    ``engine.dispose()`` closes that pool; the engine makes a new one if used again.
    ``engine_kwargs`` go to :func:`sqlalchemy.create_engine`."""
    options = dict(pool_options or {})
    pool_class = options.pop("pool_class", None)
    plugins_given = list(engine_kwargs.pop("plugins", ()))
    return sqlalchemy.create_engine(
        url,
        plugins=[*plugins_given, "tether"],
        tether_options=options,
        tether_pool_class=pool_class,
        tether_lazy_begin=lazy_begin,
        **engine_kwargs,
    )


def create_async_engine(url: str | sqlalchemy.URL, **kwargs: Any) -> Any:
    """An asyncio engine on :class:`tether.AsyncPool` (see :mod:`.aio`)."""
    from .aio import create_async_engine as create

    return create(url, **kwargs)
