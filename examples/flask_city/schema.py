"""Creates the ``city`` table the apps read and puts a few cities in it:
``DATABASE_URL=mysql://app:secret@127.0.0.1:3306/app python examples/flask_city/schema.py``.
"""

from __future__ import annotations

import os

import pymysql

from tether import parse_dsn

CITIES = ("london", "paris", "berlin", "madrid", "rome", "vienna", "lisbon", "dublin")


def seed(dsn: str | None = None) -> None:
    """Create ``city(id, name)`` if missing and insert the cities (again: no harm)."""
    url = parse_dsn(dsn or os.environ["DATABASE_URL"])
    conn = pymysql.connect(
        host=url.host,
        port=url.port,
        user=url.user,
        password=url.password,
        database=url.database,
        autocommit=True,
    )
    try:
        with conn.cursor() as cur:
            cur.execute(
                "CREATE TABLE IF NOT EXISTS city (id INT PRIMARY KEY, name VARCHAR(64) UNIQUE)"
            )
            cur.executemany(
                "INSERT IGNORE INTO city (id, name) VALUES (%s, %s)",
                list(enumerate(CITIES, start=1)),
            )
    finally:
        conn.close()


if __name__ == "__main__":
    seed()
    print(f"city table ready: {', '.join(CITIES)}")
