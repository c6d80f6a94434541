"""The classic advice: a new connection for every request, closed at the end of it."""

import os

import pymysql
from flask import Flask, g, jsonify, request
from flask.typing import ResponseReturnValue

from tether import parse_dsn

app = Flask(__name__)
url = parse_dsn(os.environ["DATABASE_URL"])


def get_db() -> pymysql.Connection:
    if "db" not in g:
        g.db = pymysql.connect(
            host=url.host, port=url.port, user=url.user, password=url.password,
            database=url.database, autocommit=True,
        )  # fmt: skip
    conn: pymysql.Connection = g.db
    return conn


@app.teardown_appcontext
def close_db(exc: BaseException | None) -> None:
    db = g.pop("db", None)
    if db is not None:
        db.close()


@app.get("/")
def city() -> ResponseReturnValue:
    with get_db().cursor() as cur:
        cur.execute("SELECT id FROM city WHERE name = %s", (request.args.get("city", ""),))
        row = cur.fetchone()
    if row is None:
        return jsonify(error="unknown city"), 404
    return jsonify(id=row[0])
