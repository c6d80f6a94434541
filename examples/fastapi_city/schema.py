"""Creates the tables the FastAPI app uses: ``city`` (as ``examples/flask_city/schema.py``)
and ``visit``: ``DATABASE_URL=mysql://... python examples/fastapi_city/schema.py``."""

from __future__ import annotations

import os

import pymysql
from examples.flask_city.schema import CITIES, seed

from tether import parse_dsn


def seed_all(dsn: str | None = None) -> None:
    seed(dsn)
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
                "CREATE TABLE IF NOT EXISTS visit (id CHAR(32) PRIMARY KEY, city VARCHAR(64))"
            )
    finally:
        conn.close()


if __name__ == "__main__":
    seed_all()
    print(f"city and visit tables ready: {', '.join(CITIES)}")
