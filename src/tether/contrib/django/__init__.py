"""Django integration (extra: ``tether[django]``): Django's MySQL backend on a tether pool.

::

    DATABASES = {
        "default": {
            "ENGINE": "tether.contrib.django",
            "NAME": "app", "USER": "app", "PASSWORD": "...", "HOST": "db", "PORT": 3306,
            "CONN_MAX_AGE": 0,  # each request checks a connection out and gives it back
            "OPTIONS": {"POOL": {"max_size": 16, "timeout": 10}},
        }
    }

The backend is Django's own MySQL backend (mysqlclient, or PyMySQL after
``pymysql.install_as_MySQLdb()``) whose connections come from one :class:`tether.Pool` per
database alias per process: the connection Django closes at the end of a request goes back
to the pool. See :mod:`tether.contrib.django.base` and :mod:`tether.contrib.django.pools`.
"""

from __future__ import annotations

from .pools import close_pools, pool_for

__all__ = ["close_pools", "pool_for"]
