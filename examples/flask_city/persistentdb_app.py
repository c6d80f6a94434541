"""The classic DBUtils recipe: ``PersistentDB`` keeps one connection per thread."""

import os

import pymysql
from dbutils.persistent_db import PersistentDB
from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue

from tether import parse_dsn

app = Flask(__name__)
url = parse_dsn(os.environ["DATABASE_URL"])
# autocommit: a persistent connection must not keep one REPEATABLE READ snapshot forever.
persist = PersistentDB(
    pymysql, host=url.host, port=url.port, user=url.user, password=url.password,
    database=url.database, autocommit=True,
)  # fmt: skip


@app.get("/")
def city() -> ResponseReturnValue:
    conn = persist.connection()  # this thread's connection; close() keeps it open
    with conn.cursor() as cur:
        cur.execute("SELECT id FROM city WHERE name = %s", (request.args.get("city", ""),))
        row = cur.fetchone()
    if row is None:
        return jsonify(error="unknown city"), 404
    return jsonify(id=row[0])
