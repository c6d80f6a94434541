"""Integrations with other libraries, each behind its own extra.

- ``tether[flask]``: :mod:`tether.contrib.flask`
- ``tether[prometheus]``: :mod:`tether.contrib.prometheus`
- ``tether[sqlalchemy]``: :mod:`tether.contrib.sqlalchemy` (SQLAlchemy and Flask-SQLAlchemy)
"""
