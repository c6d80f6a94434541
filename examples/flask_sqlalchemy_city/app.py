"""The city lookup as a Flask-SQLAlchemy app on tether: the ORM, sessions and models as usual,
the engine's connections from a bounded :class:`tether.Pool`.

``DATABASE_URL`` is a SQLAlchemy URL (``mysql+pymysql://...`` or ``mysql+mysqldb://...``).
``CITY_ENGINE`` (or ``create_app(engine=...)``) picks the engine: ``tether`` (the default), or
SQLAlchemy's own ``QueuePool`` as ``queuepool`` or ``queuepool_pre_ping`` (for comparison);
``CITY_POOL_OPTIONS`` (JSON) adds tether pool options.

    gunicorn -k gthread --threads 16 -w 1 'examples.flask_sqlalchemy_city.app:create_app()'
"""

from __future__ import annotations

import json
import os
from typing import Any

from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import tether.contrib.sqlalchemy  # noqa: F401  (the "tether" engine plugin)


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)


class City(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "city"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)


def engine_options(kind: str, pool_options: dict[str, Any]) -> dict[str, Any]:
    """``SQLALCHEMY_ENGINE_OPTIONS`` for each engine this app can run on."""
    if kind == "tether":
        # No pool_pre_ping, no pool_recycle: tether checks each connection it hands out
        # without a round trip and retires them under the server's wait_timeout.
        return {"plugins": ["tether"], "tether_options": {"max_size": 16, **pool_options}}
    if kind == "queuepool":
        return {"pool_size": 16, "max_overflow": 0}
    if kind == "queuepool_pre_ping":
        return {"pool_size": 16, "max_overflow": 0, "pool_pre_ping": True}
    raise ValueError(f"CITY_ENGINE={kind!r}: tether, queuepool or queuepool_pre_ping")


def create_app(config: dict[str, Any] | None = None, engine: str | None = None) -> Flask:
    app = Flask(__name__)
    kind = engine or os.environ.get("CITY_ENGINE", "tether")
    pool_options = json.loads(os.environ.get("CITY_POOL_OPTIONS", "{}"))
    app.config["SQLALCHEMY_DATABASE_URI"] = os.environ.get("DATABASE_URL")
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = engine_options(kind, pool_options)
    app.config.update(config or {})
    db.init_app(app)

    @app.get("/")
    def city() -> ResponseReturnValue:
        name = request.args.get("city", "")
        found = db.session.execute(select(City.id).where(City.name == name)).scalar()
        if found is None:
            return jsonify(error="unknown city"), 404
        return jsonify(id=found)

    @app.get("/health")
    def health() -> ResponseReturnValue:
        return jsonify(pid=os.getpid())

    @app.get("/stats")
    def stats() -> ResponseReturnValue:
        pool = db.engine.pool
        tether_pool = getattr(pool, "tether_pool", None)
        if tether_pool is None:
            return jsonify(status=pool.status())
        return jsonify(tether_pool.stats().as_dict())

    return app
