"""The app tether's Flask tests serve under gunicorn. Configured from ``APP_*`` environment
variables (``APP_TETHER_DSN``, ``APP_TETHER_POOL``, ``APP_TETHER_OPTIONS`` as JSON), so one
module serves every variant:

    gunicorn -k gthread --threads 16 'tests.integration.flaskapps.app:create_app()'

``APP_USE_AT_IMPORT=<path>``: use the pool while the app is created (in gunicorn's master
with ``--preload``) and write that session's id and the pid to ``<path>`` as JSON.
"""

from __future__ import annotations

import json
import os
from typing import Any

from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue

from tether.contrib.flask import Tether


class Boom(RuntimeError):
    """What /boom raises, after using the connection."""


def create_app(config: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config.from_prefixed_env("APP")
    app.config.update(config or {})
    ext = Tether(app)

    def one(sql: str, args: Any = None) -> Any:
        cur = ext.connection().cursor()
        cur.execute(sql, args)
        row = cur.fetchone()
        cur.close()
        return row[0] if row else None

    @app.get("/")
    def city() -> ResponseReturnValue:
        found = one("SELECT id FROM city WHERE name = %s", (request.args.get("city", ""),))
        if found is None:
            return jsonify(error="unknown city"), 404
        return jsonify(id=found)

    @app.get("/health")
    def health() -> ResponseReturnValue:
        return jsonify(pid=os.getpid())

    @app.get("/session")
    def session() -> ResponseReturnValue:
        first = one("SELECT CONNECTION_ID()")
        again = one("SELECT CONNECTION_ID()")
        return jsonify(pid=os.getpid(), session=first, same=first == again)

    @app.get("/slow")
    def slow() -> ResponseReturnValue:
        # Holds the connection a while, so concurrent requests need several at once.
        one("SELECT SLEEP(%s)", (float(request.args.get("s", "0.05")),))
        return jsonify(ok=True)

    @app.get("/boom")
    def boom() -> ResponseReturnValue:
        ext.connection().begin()
        one("SELECT 1")
        raise Boom("raised after using the connection, inside a transaction")

    @app.get("/stats")
    def stats() -> ResponseReturnValue:
        return jsonify(pid=os.getpid(), **ext.stats().as_dict())

    report = os.environ.get("APP_USE_AT_IMPORT")
    if report:
        with app.app_context():
            session_id = one("SELECT CONNECTION_ID()")
        with open(report, "w") as f:
            json.dump({"pid": os.getpid(), "session": session_id}, f)
    return app
